"""The tables, as SQLAlchemy Core metadata. Alembic's migrations create them; the hot path
writes them with Core statements in batches, never through an ORM session."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

sagas = Table(
    "sagas",
    metadata,
    Column("id", Text, primary_key=True),
    Column("workflow", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("data", JSONB, nullable=False),
    Column("parked", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("awaiting", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("attempt", Integer, nullable=False, server_default=text("0")),
    Column("timed_out", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("release", Text, nullable=False, server_default=text("'1'")),
    #: what it waits on besides its state's commands (migration 0011, orchestrator/core/branches.py)
    Column("branches", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    UniqueConstraint("workflow", "key", name="sagas_workflow_key"),
    Index("sagas_status_updated", "status", "updated_at"),
    Index("sagas_workflow_state", "workflow", "state"),
    Index("sagas_created", text("created_at DESC"), text("id DESC")),
    Index(
        "sagas_in_flight",
        "workflow",
        "release",
        "state",
        postgresql_where=text("status IN ('running', 'compensating')"),
    ),
)

workflow_releases = Table(
    "workflow_releases",
    metadata,
    Column("workflow", Text, nullable=False),
    Column("release", Text, nullable=False),
    Column("fingerprint", Text, nullable=False),
    Column("first_run_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("workflow", "release", name="workflow_releases_pk"),
)

journal = Table(
    "journal",
    metadata,
    Column("saga_id", Text, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("kind", Text, nullable=False),  # event | deadline | operator
    Column("message_type", Text, nullable=False),
    Column("message_id", Text, nullable=False),
    Column("message", JSONB, nullable=False),
    Column("decision", JSONB, nullable=False),
    Column("actor", Text),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("saga_id", "seq", name="journal_pk"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("message_id", Text, primary_key=True),
    Column("saga_id", Text, nullable=False),
    Column("workflow", Text, nullable=False),
    Column("message_type", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    #: the advisory lock key of the replica that committed it (migration 0007): its own to send
    Column("holder", Integer),
    #: the trace context of the message that caused it (migration 0008): its publish continues it
    Column("trace", Text),
    #: None: a participant's command; else a message to the orchestrator itself (migration 0012,
    #: orchestrator/core/children.py)
    Column("route", Text),
)

inbox = Table(
    "inbox",
    metadata,
    Column("message_id", Text, primary_key=True),
    Column("saga_id", Text),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("duplicates", Integer, nullable=False, server_default=text("0")),
)

deadlines = Table(
    "deadlines",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("saga_id", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("kind", Text, nullable=False, server_default="deadline"),  # deadline | retry
    #: the trace context of the message that set it (migration 0008): it fires in that trace
    Column("trace", Text),
    UniqueConstraint("saga_id", "kind", name="deadlines_one_per_kind"),
    Index("deadlines_due", "due_at"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("dead_at", DateTime(timezone=True), nullable=False),
    Column("source", Text, nullable=False),  # orchestrator | broker
    Column("reason", Text, nullable=False),  # an orchestrator.core.ingress.Reason
    Column("detail", Text, nullable=False),
    Column("message_id", Text),
    Column("message_type", Text),
    Column("correlation_id", Text),
    Column("exchange", Text, nullable=False),
    Column("routing_key", Text, nullable=False),
    Column("properties", JSONB, nullable=False),  # headers included, under "headers"
    Column("body", LargeBinary, nullable=False),  # up to ORCHESTRATOR_MAX_MESSAGE_BYTES
    Column("body_size", Integer, nullable=False),  # as received
    Column("replayed_at", DateTime(timezone=True)),
    Column("replayed_by", Text),
    Index("dead_letters_dead_at", text("dead_at DESC"), text("id DESC")),
    Index("dead_letters_reason", "reason"),
)

#: the inbox rows of a saga, for the archive and the inbox pruning (migration 0006)
Index("inbox_saga", inbox.c.saga_id)

#: One row per archived saga (``orchestrator archive``): enough to recognise its start again and
#: answer for it, not its data or journal, which are in the archive file.
tombstones = Table(
    "tombstones",
    metadata,
    Column("saga_id", Text, primary_key=True),
    Column("workflow", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("release", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=False),
    Column("archived_at", DateTime(timezone=True), nullable=False),
    Index("tombstones_archived_at", "archived_at"),
)

#: The service's id key (migration 0009, ``orchestrator/core/ids.py``): one row, ``name = 'ids'``.
id_keys = Table(
    "id_keys",
    metadata,
    Column("name", Text, primary_key=True),
    Column("secret", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
)

#: A partition's epoch, raised by each replica that takes it: the fence a batch checks before it
#: commits, so that a batch taken before a hand-over never commits after it (migration 0010).
partition_epochs = Table(
    "partition_epochs",
    metadata,
    Column("namespace", Text, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("epoch", BigInteger, nullable=False),
    PrimaryKeyConstraint("namespace", "partition", name="partition_epochs_pk"),
)
