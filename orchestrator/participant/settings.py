"""A participant's settings, from the environment by default, with the orchestrator's names where
both read the same thing (the broker, the namespace, the queue type): one value configures both.
Their defaults and the reading of each variable are :mod:`orchestrator.settings`'s, which the
orchestrator uses too, so the two cannot come to disagree."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from orchestrator.settings import (
    DEFAULT_AMQP_URL,
    DEFAULT_NAMESPACE,
    DEFAULT_QUEUE_TYPE,
    QUEUE_TYPES,
    SettingsError,
    broker_nodes,
    database_url,
    integer,
    mask_url,
    number,
    value,
)

__all__ = ["DEFAULT_AMQP_URL", "Settings", "SettingsError"]


@dataclass(frozen=True)
class Settings:
    #: the participant's own PostgreSQL (``postgresql://`` or ``postgresql+asyncpg://``)
    database_url: str
    amqp_url: str = DEFAULT_AMQP_URL
    namespace: str = DEFAULT_NAMESPACE
    #: ORCHESTRATOR_QUEUE_TYPE, which the orchestrator reads too: both must declare alike
    queue_type: str = DEFAULT_QUEUE_TYPE
    #: commands handled at once, each holding one database connection while it runs
    concurrency: int = 10
    #: failed tries of one message id before it is dead-lettered with its last error
    max_attempts: int = 5
    #: seconds before a failed try goes back to the queue, doubled per try, at most 30
    retry_backoff: float = 0.5
    #: after SIGTERM/SIGINT, the one bound on finishing the commands in flight and closing
    shutdown_grace: float = 10.0
    #: days the inbox keeps a command's record (None: for ever); pruned hourly. A command seen
    #: again after its record went is carried out again, so keep it beyond any saga's life: 90
    #: days is beyond the life of a saga whose deadlines are days, and bounds the table
    inbox_retention_days: float | None = 90.0
    #: fault injection for testing a workflow's deadlines: wait this long before each reply
    reply_delay: float = 0.0
    #: fault injection: commit and ack every command, never reply
    never_answer: bool = False

    def __post_init__(self) -> None:
        if self.queue_type not in QUEUE_TYPES:
            raise SettingsError(
                f"the queue type must be one of {', '.join(QUEUE_TYPES)}, not {self.queue_type!r}"
            )
        if not 1 <= self.concurrency <= 1000:
            raise SettingsError(f"the concurrency must be between 1 and 1000, not {self.concurrency}")
        if not 1 <= self.max_attempts <= 1000:
            raise SettingsError(f"the attempts must be between 1 and 1000, not {self.max_attempts}")
        if self.inbox_retention_days is not None and not (
            math.isfinite(self.inbox_retention_days) and self.inbox_retention_days > 0
        ):
            raise SettingsError(
                f"the inbox retention must be a number of days above 0, not {self.inbox_retention_days!r}"
            )
        for name in ("retry_backoff", "shutdown_grace", "reply_delay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise SettingsError(f"{name} must be a number of seconds from 0, not {value!r}")
        if not _looks_like_amqp(self.amqp_url):
            # aio-pika would retry such a URL forever instead of failing at start.
            raise SettingsError(
                "the AMQP URL must look like amqp://user:password@host:5672/vhost,"
                f" got {mask_url(self.amqp_url)}"
            )
        if not self.database_url.startswith(("postgresql://", "postgresql+asyncpg://", "postgres://")):
            raise SettingsError(
                "the database URL must be a PostgreSQL one (postgresql://user@host:5432/db),"
                f" got {mask_url(self.database_url)}"
            )

    @property
    def engine_url(self) -> str:
        """The URL for SQLAlchemy's asyncpg dialect, whichever way the user spelled it."""
        url = database_url(self.database_url, "PARTICIPANT_DATABASE_URL")
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+asyncpg://" + url.removeprefix(prefix)
        return url

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from the environment; SettingsError names the variable that is wrong."""
        env = os.environ if environ is None else environ
        url = value(env, "PARTICIPANT_DATABASE_URL")
        if url is None:
            raise SettingsError("PARTICIPANT_DATABASE_URL is not set: the participant's own PostgreSQL")
        return cls(
            database_url=url,
            amqp_url=value(env, "ORCHESTRATOR_AMQP_URL") or cls.amqp_url,
            namespace=value(env, "ORCHESTRATOR_NAMESPACE") or cls.namespace,
            # checked by __post_init__, for settings built by hand too
            queue_type=(value(env, "ORCHESTRATOR_QUEUE_TYPE") or cls.queue_type).strip().lower(),
            concurrency=integer(env, "PARTICIPANT_CONCURRENCY", cls.concurrency),
            max_attempts=integer(env, "PARTICIPANT_MAX_ATTEMPTS", cls.max_attempts),
            retry_backoff=number(env, "PARTICIPANT_RETRY_BACKOFF", cls.retry_backoff),
            shutdown_grace=number(env, "PARTICIPANT_SHUTDOWN_GRACE", cls.shutdown_grace),
            inbox_retention_days=_retention(env),
        )


def _looks_like_amqp(url: str) -> bool:
    try:
        return all(
            parts.scheme in ("amqp", "amqps") and bool(parts.hostname) and parts.port != 0
            for parts in map(urlsplit, broker_nodes(url))
        )
    except ValueError:
        return False


def _retention(env: Mapping[str, str]) -> float | None:
    """``PARTICIPANT_INBOX_RETENTION_DAYS``: days, or ``never`` (kept for ever); 90 when unset."""
    raw = value(env, "PARTICIPANT_INBOX_RETENTION_DAYS")
    if raw is None:
        return Settings.inbox_retention_days
    if raw.strip().lower() == "never":
        return None
    return number(env, "PARTICIPANT_INBOX_RETENTION_DAYS", 0.0)  # checked by __post_init__
