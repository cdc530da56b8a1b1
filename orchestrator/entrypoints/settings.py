"""Settings, from the environment: one object, read once at start.

A value that cannot be used raises :class:`SettingsError`, whose message names the variable and
says what it must be: the command line prints it as its one line (``orchestrator.entrypoints.cli``),
and anything else that builds settings (a test, the benchmark) can catch it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from orchestrator.entrypoints.tokens import ApiToken, TokenError, combined, parse_env, read_file

__all__ = [
    "QUEUE_TYPES",
    "SSL_MODES",
    "ConfigurationError",
    "Settings",
    "SettingsError",
    "database_url",
    "mask_url",
]

#: the values of ORCHESTRATOR_QUEUE_TYPE (as orchestrator.adapters.amqp.topology.QUEUE_TYPES,
#: which the settings do not import: the command line reads them before loading any adapter)
QUEUE_TYPES = ("classic", "quorum")
#: libpq's sslmode values, which asyncpg takes as its ``ssl`` argument
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


class ConfigurationError(Exception):
    """What the service was given to run with cannot be used; the message says what and why, in
    one line. Defined here, beside the settings, so that the command line can catch it without
    importing what the service is built of."""


class SettingsError(ConfigurationError, ValueError):
    """A setting's value cannot be used; the message names the variable and what it must be."""


def mask_url(url: str) -> str:
    """A URL fit for a log line: the password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    # the host part as written: .port would raise on a port out of range, and the URL being
    # masked is often a bad one on its way into an error message
    hostinfo = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{hostinfo}"))


def database_url(url: str, name: str = "ORCHESTRATOR_DATABASE_URL") -> str:
    """The URL with libpq's ``sslmode=`` spelled ``ssl=``, as SQLAlchemy's asyncpg dialect passes
    its query to ``asyncpg.connect`` as keywords: ``sslmode`` would be an unexpected one there,
    while ``ssl`` takes the same values. (Where the service hands a URL to asyncpg as a DSN,
    ``driver_dsn`` turns it back: a DSN reads ``sslmode``, and would send ``ssl`` to the server
    as a setting.) A PostgreSQL URL as any libpq tool takes it thus works unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url  # the engine says what is wrong with it, with the URL masked
    query = parse_qsl(parts.query, keep_blank_values=True)
    keys = [key for key, _ in query]
    if "sslmode" not in keys and "ssl" not in keys:
        return url
    if "sslmode" in keys and "ssl" in keys:
        raise SettingsError(f"{name} may give sslmode or ssl, not both")
    renamed = [("ssl" if key == "sslmode" else key, value) for key, value in query]
    for key, value in renamed:
        if key == "ssl" and value not in SSL_MODES:
            raise SettingsError(f"{name}'s sslmode must be one of {', '.join(SSL_MODES)}, not {value!r}")
    return urlunsplit(parts._replace(query=urlencode(renamed, safe="/:")))


def _queue_type(name: str) -> str:
    raw = (_set(name) or "classic").strip().lower()
    if raw not in QUEUE_TYPES:
        raise SettingsError(f"{name} must be one of {', '.join(QUEUE_TYPES)}, not {raw!r}")
    return raw


def _set(name: str) -> str | None:
    """The variable's value; None when unset or empty, which both mean the default."""
    return os.environ.get(name) or None


def _int(name: str, default: int, minimum: int | None = None, maximum: int | None = None) -> int:
    raw = _set(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, not {raw!r}") from None
    if minimum is not None and value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, not {raw!r}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{name} must be at most {maximum}, not {raw!r}")
    return value


_A_CENTURY = 100 * 365.25 * 86400


def _float(name: str, default: float) -> float:
    raw = _set(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= _A_CENTURY:  # inf or 1e13 seconds would overflow every timedelta made of it
        raise SettingsError(
            f"{name} must be a positive number of seconds up to {_A_CENTURY:.0f}, not {raw!r}"
        )
    return value


def _days(name: str, default: float) -> float:
    """A number of days: positive, at most a century, as ``_float`` reads seconds."""
    raw = _set(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= _A_CENTURY / 86400:
        raise SettingsError(f"{name} must be a positive number of days up to 36525, not {raw!r}")
    return value


def _api_tokens() -> tuple[ApiToken, ...]:
    entries: list[ApiToken] = []
    try:
        if raw := _set("ORCHESTRATOR_API_TOKENS"):
            entries += parse_env(raw)
        if path := _set("ORCHESTRATOR_API_TOKENS_FILE"):
            entries += read_file(path)
        return combined(entries, _set("ORCHESTRATOR_API_TOKEN"))
    except TokenError as error:
        raise SettingsError(str(error)) from None


def _bool(name: str) -> bool:
    return os.environ.get(name, "").lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/orchestrator"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    namespace: str = "saga"
    #: of the participant queues and {ns}.dead-letter (docs/protocol.md, section 2): every party
    #: must agree, so the participants read the same variable
    queue_type: str = "classic"
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
    #: reads need a token too
    api_protect_reads: bool = False
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
            "queue_type": _queue_type("ORCHESTRATOR_QUEUE_TYPE"),
            "workflows": env.get("ORCHESTRATOR_WORKFLOWS", cls.workflows),
            "prefetch": _int("ORCHESTRATOR_PREFETCH", cls.prefetch),
            "batch_size": _int("ORCHESTRATOR_BATCH_SIZE", cls.batch_size),
            "log_level": env.get("ORCHESTRATOR_LOG_LEVEL", cls.log_level).upper(),
            "log_json": _bool("ORCHESTRATOR_LOG_JSON"),
            "api_host": env.get("ORCHESTRATOR_API_HOST", cls.api_host),
            "api_port": _int("ORCHESTRATOR_API_PORT", cls.api_port),
            "api_token": env.get("ORCHESTRATOR_API_TOKEN") or None,
            "api_tokens": _api_tokens(),
            "api_protect_reads": _bool("ORCHESTRATOR_API_PROTECT_READS"),
            "api_max_body_bytes": _int("ORCHESTRATOR_API_MAX_BODY_BYTES", cls.api_max_body_bytes, minimum=1),
            "stuck_after_seconds": _float("ORCHESTRATOR_STUCK_AFTER_SECONDS", cls.stuck_after_seconds),
            "max_message_bytes": _int("ORCHESTRATOR_MAX_MESSAGE_BYTES", cls.max_message_bytes, minimum=1024),
            "max_bytes_in_hand": _int("ORCHESTRATOR_MAX_BYTES_IN_HAND", cls.max_bytes_in_hand, minimum=1024),
            "stall_seconds": _float("ORCHESTRATOR_STALL_SECONDS", cls.stall_seconds),
            "max_parked": _int("ORCHESTRATOR_MAX_PARKED", cls.max_parked, minimum=1),
            "shutdown_seconds": _float("ORCHESTRATOR_SHUTDOWN_SECONDS", cls.shutdown_seconds),
            "test_fail_task": env.get("ORCHESTRATOR_TEST_FAIL_TASK") or None,
            "inbox_retention_days": _days("ORCHESTRATOR_INBOX_RETENTION_DAYS", cls.inbox_retention_days),
            "dead_letter_retention_days": _days(
                "ORCHESTRATOR_DEAD_LETTER_RETENTION_DAYS", cls.dead_letter_retention_days
            ),
            "tombstone_retention_days": _days(
                "ORCHESTRATOR_TOMBSTONE_RETENTION_DAYS", cls.tombstone_retention_days
            ),
            "partitions": _int("ORCHESTRATOR_PARTITIONS", cls.partitions, minimum=1, maximum=256),
            "rebalance_seconds": _float("ORCHESTRATOR_REBALANCE_SECONDS", cls.rebalance_seconds),
            "prune_interval_seconds": (
                0.0
                if _set("ORCHESTRATOR_PRUNE_INTERVAL_SECONDS") == "0"
                else _float("ORCHESTRATOR_PRUNE_INTERVAL_SECONDS", cls.prune_interval_seconds)
            ),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
