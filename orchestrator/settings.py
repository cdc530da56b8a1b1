"""The one settings reader: every default the orchestrator and its participants share, and the
rules for reading a variable, written once.

The orchestrator's ``Settings`` (``orchestrator.entrypoints.settings``), the participant kit's
(``orchestrator.participant.settings``), the example participants' command line and the tracing
adapter all read the environment through these helpers. One place means one broker URL, one
namespace and one list of queue types for every party (they must agree on the wire), and one
wording for a bad value: the message names the variable and says what it must be, and never
holds a password (:func:`mask_url`).

Internal (see :mod:`orchestrator`): it sits at the package's top so that the participant kit
may import it without the orchestrator's entry points; a participant's code takes what it needs
from ``orchestrator.participant``. It imports nothing of the package, so that any layer may use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = [
    "A_CENTURY",
    "DEFAULT_AMQP_URL",
    "DEFAULT_DATABASE_URL",
    "DEFAULT_NAMESPACE",
    "DEFAULT_QUEUE_TYPE",
    "FALSE_WORDS",
    "QUEUE_TYPES",
    "SSL_MODES",
    "TRUE_WORDS",
    "ConfigurationError",
    "SettingsError",
    "broker_nodes",
    "database_url",
    "days",
    "flag",
    "integer",
    "mask_url",
    "number",
    "one_of",
    "seconds",
    "stripped",
    "value",
    "words",
]

#: the broker of a local install (RabbitMQ's own default account), for the service and participants
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
#: the prefix of every exchange and queue (ORCHESTRATOR_NAMESPACE), the same for every party
DEFAULT_NAMESPACE = "saga"
#: the orchestrator's own database (ORCHESTRATOR_DATABASE_URL); a participant has its own, and
#: the kit has no default for it: a participant sharing the orchestrator's would be a mistake
DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/orchestrator"
#: the values of ORCHESTRATOR_QUEUE_TYPE: the type of the participant queues and of
#: ``{ns}.dead-letter``. ``classic`` is the default because a queue cannot change its type in
#: place: an existing install keeps its queues until its operator migrates them
QUEUE_TYPES = ("classic", "quorum")
DEFAULT_QUEUE_TYPE = "classic"
#: libpq's sslmode values, which asyncpg takes as its ``ssl`` argument
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
#: a switch's words; anything else is off where a typo may pass (:func:`flag`), and refused
#: where a caller checks against both
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})
#: the longest duration a setting may give, in seconds: inf or 1e13 seconds would overflow
#: every timedelta made of it
A_CENTURY = 100 * 365.25 * 86400


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


def broker_nodes(url: str) -> list[str]:
    """One URL per node of a broker URL that may name several (``amqp://u:p@n1:5672,n2:5672/``,
    as libpq writes several database hosts); a URL with one host is its own list, unchanged."""
    parts = urlsplit(url)
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    hosts = [host for host in hostinfo.split(",") if host]
    if len(hosts) <= 1:
        return [url]
    return [urlunsplit(parts._replace(netloc=f"{userinfo}{at}{host}")) for host in hosts]


def database_url(url: str, name: str = "ORCHESTRATOR_DATABASE_URL") -> str:
    """The URL with libpq's ``sslmode=`` spelled ``ssl=``, as SQLAlchemy's asyncpg dialect passes
    its query to ``asyncpg.connect`` as keywords: ``sslmode`` would be an unexpected one there,
    while ``ssl`` takes the same values. (Where the service hands a URL to asyncpg as a DSN,
    ``driver_dsn`` turns it back: a DSN reads ``sslmode``, and would send ``ssl`` to the server
    as a setting.) A host list as libpq writes it (``user@db-1:5432,db-2:5432/name``) becomes
    SQLAlchemy's repeated ``host=`` parameters. A PostgreSQL URL as any libpq tool takes it thus
    works unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url  # the engine says what is wrong with it, with the URL masked
    query = parse_qsl(parts.query, keep_blank_values=True)
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    if "," in hostinfo:  # libpq's host list, which SQLAlchemy reads as repeated ``host=``
        query = [("host", host) for host in hostinfo.split(",") if host] + query
        parts = parts._replace(netloc=f"{userinfo}{at}", query=urlencode(query, safe="/:"))
        # built by hand: urlunsplit drops the "//" of an empty netloc (no user: "scheme:/db")
        url = f"{parts.scheme}://{parts.netloc}{parts.path}?{parts.query}"
    keys = [key for key, _ in query]
    if "sslmode" not in keys and "ssl" not in keys:
        return url
    if "sslmode" in keys and "ssl" in keys:
        raise SettingsError(f"{name} may give sslmode or ssl, not both")
    renamed = [("ssl" if key == "sslmode" else key, v) for key, v in query]
    for key, v in renamed:
        if key == "ssl" and v not in SSL_MODES:
            raise SettingsError(f"{name}'s sslmode must be one of {', '.join(SSL_MODES)}, not {v!r}")
    return urlunsplit(parts._replace(query=urlencode(renamed, safe="/:")))


# -- reading one variable ------------------------------------------------------------------------
# Each takes the environment as a mapping, so that a caller may pass its own (the participant kit
# and its tests do) instead of os.environ. Unset and empty both mean the default: a compose file's
# ``FOO=`` should not be an error.


def value(env: Mapping[str, str], name: str) -> str | None:
    """The variable's value as written; None when unset or empty."""
    return env.get(name) or None


def stripped(env: Mapping[str, str], name: str) -> str | None:
    """The value without surrounding blanks; None when that leaves nothing."""
    return (env.get(name) or "").strip() or None


def words(env: Mapping[str, str], name: str) -> set[str]:
    """A comma-separated list, each word stripped and lower-cased (``OTEL_TRACES_EXPORTER``)."""
    return {word.strip().lower() for word in (env.get(name) or "").split(",") if word.strip()}


def senders_of(env: Mapping[str, str], name: str) -> tuple[tuple[str, str], ...] | None:
    """``service=user`` pairs, comma-separated; None when the variable is unset or empty."""
    text = (env.get(name) or "").strip()
    if not text:
        return None
    pairs = []
    for item in text.split(","):
        service, sep, user = (part.strip() for part in item.partition("="))
        if not sep or not service or not user or "." in service:
            raise SettingsError(
                f"{name} must be service=user pairs, comma-separated (orders=shop), not {item.strip()!r}"
            )
        pairs.append((service, user))
    services = [service for service, _ in pairs]
    if len(set(services)) != len(services):
        raise SettingsError(f"{name} names a service twice")
    return tuple(pairs)


def flag(env: Mapping[str, str], name: str) -> bool:
    """On for one of :data:`TRUE_WORDS`, in any case; off otherwise."""
    return (env.get(name) or "").lower() in TRUE_WORDS


def one_of(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    """One of ``choices``, in any case and with blanks around it."""
    raw = (value(env, name) or default).strip().lower()
    if raw not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, not {raw!r}")
    return raw


def integer(
    env: Mapping[str, str], name: str, default: int, minimum: int | None = None, maximum: int | None = None
) -> int:
    raw = value(env, name)
    if raw is None:
        return default
    try:
        parsed = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, not {raw!r}") from None
    if minimum is not None and parsed < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, not {raw!r}")
    if maximum is not None and parsed > maximum:
        raise SettingsError(f"{name} must be at most {maximum}, not {raw!r}")
    return parsed


def number(env: Mapping[str, str], name: str, default: float) -> float:
    """Any number; the caller checks its range, where the message can say what it is for."""
    raw = value(env, name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, not {raw!r}") from None


def seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """A duration in seconds: positive, at most :data:`A_CENTURY`."""
    raw = value(env, name)
    if raw is None:
        return default
    try:
        parsed = float(raw)
    except ValueError:
        parsed = -1.0
    if not 0 < parsed <= A_CENTURY:
        raise SettingsError(f"{name} must be a positive number of seconds up to {A_CENTURY:.0f}, not {raw!r}")
    return parsed


def days(env: Mapping[str, str], name: str, default: float) -> float:
    """A number of days: positive, at most a century, as :func:`seconds` reads seconds."""
    raw = value(env, name)
    if raw is None:
        return default
    try:
        parsed = float(raw)
    except ValueError:
        parsed = -1.0
    if not 0 < parsed <= A_CENTURY / 86400:
        raise SettingsError(
            f"{name} must be a positive number of days up to {A_CENTURY / 86400:.0f}, not {raw!r}"
        )
    return parsed
