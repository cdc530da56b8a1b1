"""Settings, from the environment: one object, read once at start.

A value that cannot be used raises :class:`SettingsError`, whose message names the variable and
says what it must be: the command line prints it as its one line (``orchestrator.entrypoints.cli``),
and anything else that builds settings (a test, the benchmark) can catch it. How a variable is read,
and the defaults the participants share, are :mod:`orchestrator.settings`'s, so that every party
reads them alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from orchestrator.entrypoints.tokens import ApiToken, TokenError, combined, parse_env, read_file
from orchestrator.settings import (
    DEFAULT_AMQP_URL,
    DEFAULT_DATABASE_URL,
    DEFAULT_NAMESPACE,
    DEFAULT_QUEUE_TYPE,
    QUEUE_TYPES,
    SSL_MODES,
    ConfigurationError,
    SettingsError,
    database_url,
    days,
    flag,
    integer,
    mask_url,
    one_of,
    seconds,
    senders_of,
    value,
    words,
)

# the shared names are said again here, where the service's code has always found them
__all__ = [
    "QUEUE_TYPES",
    "SSL_MODES",
    "ConfigurationError",
    "Settings",
    "SettingsError",
    "database_url",
    "mask_url",
]


def _api_tokens() -> tuple[ApiToken, ...]:
    env = os.environ
    entries: list[ApiToken] = []
    try:
        if raw := value(env, "ORCHESTRATOR_API_TOKENS"):
            entries += parse_env(raw)
        if path := value(env, "ORCHESTRATOR_API_TOKENS_FILE"):
            entries += read_file(path)
        return combined(entries, value(env, "ORCHESTRATOR_API_TOKEN"))
    except TokenError as error:
        raise SettingsError(str(error)) from None


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    amqp_url: str = DEFAULT_AMQP_URL
    namespace: str = DEFAULT_NAMESPACE
    #: of the participant queues and {ns}.dead-letter (docs/protocol.md, section 2): every party
    #: must agree, so the participants read the same variable
    queue_type: str = DEFAULT_QUEUE_TYPE
    workflows: str = "orchestrator.examples"
    prefetch: int = 1024
    batch_size: int = 256
    relay_in_flight: int = 4096
    outbox_sweep_seconds: float = 5.0
    #: SIGTERM, or a part of the service failing for good, to exit: the whole stop gets this
    #: long for the work in hand, plus at most 5 s to close connections; a watchdog ends the
    #: process 10 s past it whatever the event loop is doing
    shutdown_seconds: float = 10.0
    log_level: str = "INFO"
    log_json: bool = False
    #: the REST API: where it listens (port 0: any free port, logged at start)
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    #: the bearer token mutating endpoints need; never logged, never in repr
    api_token: str | None = field(default=None, repr=False)
    #: named tokens with roles (orchestrator.entrypoints.tokens), from ORCHESTRATOR_API_TOKENS and
    #: ORCHESTRATOR_API_TOKENS_FILE; only their hashes, never in repr
    api_tokens: tuple[ApiToken, ...] = field(default=(), repr=False)
    #: reads need no token even where one is set (they need one by default)
    api_open_reads: bool = False
    #: serve /docs (Swagger UI, whose scripts come from a CDN) and /openapi.json to anyone
    api_docs: bool = False
    #: serve without a token: anyone who reaches the port may act on sagas (``run --insecure``)
    api_insecure: bool = False
    #: the largest request body the API reads; a larger one is a 413
    api_max_body_bytes: int = 1024 * 1024
    #: a running saga with no pending timer and no progress for this long is stuck
    stuck_after_seconds: float = 300.0
    #: how many events one saga may keep parked; one more that would park is dead-lettered
    max_parked: int = 100
    #: the largest message body taken over AMQP; a larger one is dead-lettered unparsed
    max_message_bytes: int = 1024 * 1024
    #: the body bytes the process may hold unsettled: the prefetch is capped at this divided by
    #: max_message_bytes (RabbitMQ ignores a prefetch size in bytes)
    max_bytes_in_hand: int = 64 * 1024 * 1024
    #: messages in hand and no batch committed for this long: /readyz answers 503
    stall_seconds: float = 30.0
    #: a test hook (``ORCHESTRATOR_TEST_FAIL_TASK=<task>[:<seconds>]``): that task raises after
    #: that long, every time it starts (orchestrator.supervision)
    test_fail_task: str | None = None
    #: retention (docs/retention.md): the inbox rows of a saga finished (completed or
    #: compensated) this many days ago are pruned; a redelivery after that is not known as one
    inbox_retention_days: float = 7.0
    #: dead letters this old are pruned, replayed or not
    dead_letter_retention_days: float = 30.0
    #: tombstones of sagas archived this long ago are pruned; a start for such a key starts anew
    tombstone_retention_days: float = 400.0
    #: how often the running service prunes; 0: never (``orchestrator prune`` by hand or cron)
    prune_interval_seconds: float = 3600.0
    #: how many partition queues correlated messages are spread over by saga (docs/scaling.md);
    #: 1: one queue, every replica takes from it. A change goes through ``orchestrator migrate``
    partitions: int = 1
    #: services whose replies are taken without a section 6 reply id while they move to one
    #: (docs/protocol.md, section 8): logged and counted, each
    unchecked_replies: frozenset[str] = frozenset()
    #: service -> the broker user its events must come from (user_id), as (service, user) pairs;
    #: None: not checked (ORCHESTRATOR_SENDERS, docs/security.md)
    senders: tuple[tuple[str, str], ...] | None = None
    #: how long a statement, a wait for a row lock, and a wait for a pooled connection may take
    #: (README, "Crashes and outages"): a row locked elsewhere holds up its own saga only
    database_statement_timeout_seconds: float = 30.0
    database_lock_timeout_seconds: float = 5.0
    database_acquire_timeout_seconds: float = 10.0
    #: how often each replica looks at who owns which partition, and takes or gives some up: a
    #: dead replica's partitions are taken within about this long
    rebalance_seconds: float = 1.0

    @property
    def api_protected(self) -> bool:
        """Whether any token is configured, so that the API's actions need one."""
        return bool(self.api_token or self.api_tokens)

    @property
    def effective_prefetch(self) -> int:
        """The prefetch count, capped so that a full prefetch of the largest messages fits the
        budget of bytes in hand."""
        return max(1, min(self.prefetch, self.max_bytes_in_hand // self.max_message_bytes))

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        env = os.environ
        values: dict[str, object] = {
            "database_url": database_url(env.get("ORCHESTRATOR_DATABASE_URL") or cls.database_url),
            "amqp_url": env.get("ORCHESTRATOR_AMQP_URL", cls.amqp_url),
            "namespace": env.get("ORCHESTRATOR_NAMESPACE", cls.namespace),
            "queue_type": one_of(env, "ORCHESTRATOR_QUEUE_TYPE", QUEUE_TYPES, cls.queue_type),
            "workflows": env.get("ORCHESTRATOR_WORKFLOWS", cls.workflows),
            "prefetch": integer(env, "ORCHESTRATOR_PREFETCH", cls.prefetch),
            "batch_size": integer(env, "ORCHESTRATOR_BATCH_SIZE", cls.batch_size),
            "log_level": env.get("ORCHESTRATOR_LOG_LEVEL", cls.log_level).upper(),
            "log_json": flag(env, "ORCHESTRATOR_LOG_JSON"),
            "api_host": env.get("ORCHESTRATOR_API_HOST", cls.api_host),
            "api_port": integer(env, "ORCHESTRATOR_API_PORT", cls.api_port),
            "api_token": value(env, "ORCHESTRATOR_API_TOKEN"),
            "api_tokens": _api_tokens(),
            "api_open_reads": flag(env, "ORCHESTRATOR_API_OPEN_READS"),
            "api_docs": flag(env, "ORCHESTRATOR_API_DOCS"),
            "api_max_body_bytes": integer(
                env, "ORCHESTRATOR_API_MAX_BODY_BYTES", cls.api_max_body_bytes, minimum=1
            ),
            "stuck_after_seconds": seconds(env, "ORCHESTRATOR_STUCK_AFTER_SECONDS", cls.stuck_after_seconds),
            "max_message_bytes": integer(
                env, "ORCHESTRATOR_MAX_MESSAGE_BYTES", cls.max_message_bytes, minimum=1024
            ),
            "max_bytes_in_hand": integer(
                env, "ORCHESTRATOR_MAX_BYTES_IN_HAND", cls.max_bytes_in_hand, minimum=1024
            ),
            "stall_seconds": seconds(env, "ORCHESTRATOR_STALL_SECONDS", cls.stall_seconds),
            "max_parked": integer(env, "ORCHESTRATOR_MAX_PARKED", cls.max_parked, minimum=1),
            "shutdown_seconds": seconds(env, "ORCHESTRATOR_SHUTDOWN_SECONDS", cls.shutdown_seconds),
            "test_fail_task": value(env, "ORCHESTRATOR_TEST_FAIL_TASK"),
            "inbox_retention_days": days(env, "ORCHESTRATOR_INBOX_RETENTION_DAYS", cls.inbox_retention_days),
            "dead_letter_retention_days": days(
                env, "ORCHESTRATOR_DEAD_LETTER_RETENTION_DAYS", cls.dead_letter_retention_days
            ),
            "tombstone_retention_days": days(
                env, "ORCHESTRATOR_TOMBSTONE_RETENTION_DAYS", cls.tombstone_retention_days
            ),
            "partitions": integer(env, "ORCHESTRATOR_PARTITIONS", cls.partitions, minimum=1, maximum=256),
            "rebalance_seconds": seconds(env, "ORCHESTRATOR_REBALANCE_SECONDS", cls.rebalance_seconds),
            "unchecked_replies": frozenset(words(env, "ORCHESTRATOR_UNCHECKED_REPLIES")),
            "senders": senders_of(env, "ORCHESTRATOR_SENDERS"),
            "database_statement_timeout_seconds": seconds(
                env, "ORCHESTRATOR_DATABASE_STATEMENT_TIMEOUT_SECONDS", cls.database_statement_timeout_seconds
            ),
            "database_lock_timeout_seconds": seconds(
                env, "ORCHESTRATOR_DATABASE_LOCK_TIMEOUT_SECONDS", cls.database_lock_timeout_seconds
            ),
            "database_acquire_timeout_seconds": seconds(
                env, "ORCHESTRATOR_DATABASE_ACQUIRE_TIMEOUT_SECONDS", cls.database_acquire_timeout_seconds
            ),
            "prune_interval_seconds": (
                0.0
                if value(env, "ORCHESTRATOR_PRUNE_INTERVAL_SECONDS") == "0"
                else seconds(env, "ORCHESTRATOR_PRUNE_INTERVAL_SECONDS", cls.prune_interval_seconds)
            ),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
