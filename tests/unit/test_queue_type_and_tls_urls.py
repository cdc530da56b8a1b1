"""ORCHESTRATOR_QUEUE_TYPE and the TLS spellings of the two URLs (docs/protocol.md, section 2;
docs/architecture.md, "TLS").

Every party declares the participant queues and ``{ns}.dead-letter`` itself, and RabbitMQ refuses
the second of two declarations that differ: the orchestrator's arguments and the example
participants' (written out separately, as a participant in another language would) must be
equal, in each mode. The URLs go to three readers (SQLAlchemy's asyncpg dialect, asyncpg's DSN
parser, aiormq), which spell TLS differently."""

from __future__ import annotations

from typing import Any

import pytest
from yarl import URL

from orchestrator.adapters.amqp.topology import QUEUE_TYPES as TOPOLOGY_QUEUE_TYPES
from orchestrator.adapters.amqp.topology import Topology
from orchestrator.adapters.postgres.store import driver_dsn
from orchestrator.entrypoints.settings import QUEUE_TYPES, Settings, SettingsError, database_url
from participants.cli import parse_args


def test_the_lists_of_queue_types_agree() -> None:
    assert QUEUE_TYPES == TOPOLOGY_QUEUE_TYPES


def test_quorum_participant_queues_dead_letter_at_least_once() -> None:
    """RabbitMQ 3.10 falls back to at-most-once silently without reject-publish."""
    arguments: dict[str, Any] = Topology("ns", queue_type="quorum").queue_arguments
    assert arguments["x-queue-type"] == "quorum"
    assert arguments["x-dead-letter-strategy"] == "at-least-once"
    assert arguments["x-overflow"] == "reject-publish"
    assert isinstance(arguments["x-delivery-limit"], int)
    assert "x-delivery-limit" not in Topology("ns", queue_type="quorum").dead_letter_queue_arguments


def test_classic_is_what_earlier_versions_declared() -> None:
    topology = Topology("ns")
    assert topology.queue_arguments == {"x-dead-letter-exchange": "ns.dead"}
    assert topology.dead_letter_queue_arguments == {}


def test_the_queue_type_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORCHESTRATOR_QUEUE_TYPE", raising=False)
    assert Settings.from_env().queue_type == "classic"
    monkeypatch.setenv("ORCHESTRATOR_QUEUE_TYPE", "Quorum")
    assert Settings.from_env().queue_type == "quorum"
    monkeypatch.setenv("ORCHESTRATOR_QUEUE_TYPE", "stream")
    with pytest.raises(SettingsError, match="ORCHESTRATOR_QUEUE_TYPE must be one of classic, quorum"):
        Settings.from_env()


def test_the_participants_read_the_same_variable_and_an_option_wins() -> None:
    _, settings, _ = parse_args(["inventory"], {"ORCHESTRATOR_QUEUE_TYPE": "quorum"})
    assert settings.queue_type == "quorum"
    _, settings, _ = parse_args(
        ["inventory", "--queue-type", "classic"], {"ORCHESTRATOR_QUEUE_TYPE": "quorum"}
    )
    assert settings.queue_type == "classic"
    _, settings, _ = parse_args(["inventory"], {})
    assert settings.queue_type == "classic"
    with pytest.raises(SystemExit):
        parse_args(["inventory"], {"ORCHESTRATOR_QUEUE_TYPE": "lazy"})


# -- PostgreSQL: sslmode ------------------------------------------------------------------------

BASE = "postgresql+asyncpg://app:secret@db.example:5432/orchestrator"


def test_sslmode_becomes_the_dialects_ssl() -> None:
    """SQLAlchemy's asyncpg dialect passes the query to asyncpg.connect as keywords: sslmode
    would be an unexpected keyword there, ssl takes the same values."""
    assert database_url(f"{BASE}?sslmode=verify-full") == f"{BASE}?ssl=verify-full"
    assert database_url(f"{BASE}?ssl=require") == f"{BASE}?ssl=require"
    assert database_url(BASE) == BASE
    assert (
        database_url(f"{BASE}?sslmode=require&application_name=x") == f"{BASE}?ssl=require&application_name=x"
    )


def test_a_bad_sslmode_is_refused_with_the_variable_named() -> None:
    with pytest.raises(SettingsError, match="ORCHESTRATOR_DATABASE_URL's sslmode must be one of"):
        database_url(f"{BASE}?sslmode=required")
    with pytest.raises(SettingsError, match="sslmode or ssl, not both"):
        database_url(f"{BASE}?sslmode=require&ssl=require")


def test_the_setting_reads_the_url_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", f"{BASE}?sslmode=require")
    assert Settings.from_env().database_url == f"{BASE}?ssl=require"


def test_the_dsn_given_to_asyncpg_says_sslmode_again() -> None:
    """asyncpg's DSN parser reads sslmode, and sends any query key it does not know (ssl) to the
    server as a run-time setting, which PostgreSQL refuses."""
    assert (
        driver_dsn(f"{BASE}?ssl=require")
        == "postgresql://app:secret@db.example:5432/orchestrator?sslmode=require"
    )
    assert driver_dsn(BASE) == "postgresql://app:secret@db.example:5432/orchestrator"


def test_every_host_of_a_multi_host_url_survives_into_the_raw_connections_dsn() -> None:
    """Issue 29: SQLAlchemy writes a multi-host URL as repeated ``host`` parameters, and asyncpg's
    DSN parser keeps only the last one: the raw connections (the hot path's pool, the advisory
    locks, the CLI's) would lose every other host and never follow a failover to it."""
    from asyncpg.connect_utils import _parse_connect_dsn_and_args

    url = (
        "postgresql+asyncpg://app:p%40ss@/orchestrator?host=db-1:5432&host=db-2:5433"
        "&target_session_attrs=read-write&ssl=require"
    )
    dsn = driver_dsn(url)
    assert dsn == (
        "postgresql://app:p%40ss@db-1:5432,db-2:5433/orchestrator"
        "?target_session_attrs=read-write&sslmode=require"
    )
    none: dict[str, Any] = dict.fromkeys(
        ("host", "port", "user", "password", "passfile", "database", "ssl", "service", "servicefile"),
    ) | dict.fromkeys(("direct_tls", "server_settings", "target_session_attrs", "krbsrvname", "gsslib"))
    addresses, parameters = _parse_connect_dsn_and_args(dsn=dsn, **none)
    assert addresses == [("db-1", 5432), ("db-2", 5433)]
    assert (parameters.user, parameters.password, parameters.database) == ("app", "p@ss", "orchestrator")
    assert str(parameters.target_session_attrs) == "SessionAttribute.read_write"
    # and SQLAlchemy's own pool, from the same URL, asks asyncpg for both hosts too
    from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
    from sqlalchemy.engine import make_url

    _, keywords = PGDialect_asyncpg().create_connect_args(make_url(url))  # type: ignore[no-untyped-call]
    assert (keywords["host"], keywords["port"]) == (["db-1", "db-2"], [5432, 5433])


def test_the_dialect_hands_asyncpg_an_ssl_keyword() -> None:
    from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
    from sqlalchemy.engine import make_url

    dialect = PGDialect_asyncpg()  # type: ignore[no-untyped-call]
    _, keywords = dialect.create_connect_args(make_url(f"{BASE}?ssl=verify-full"))  # type: ignore[no-untyped-call]
    assert keywords["ssl"] == "verify-full"
    assert "sslmode" not in keywords


# -- RabbitMQ: amqps:// -------------------------------------------------------------------------


async def test_aiormq_takes_amqps_with_a_ca_file() -> None:
    """aiormq reads amqps:// as TLS on 5671 by default, and cafile, certfile, keyfile and
    no_verify_ssl from the query; the URL is passed through as it is, nothing to translate.
    (Async: aiormq's connection takes the running event loop, which a sync test may not have.)"""
    from aiormq.connection import Connection

    url = URL("amqps://app:secret@mq.example/vhost?cafile=/etc/ssl/ca.pem")
    connection = Connection(url)
    assert connection.url.scheme == "amqps"
    assert connection.url.port == 5671
    assert connection.ssl_certs.cafile == "/etc/ssl/ca.pem"


def test_a_topology_of_an_unknown_type_is_refused() -> None:
    """Anything else would declare classic queues where the caller asked for something else."""
    with pytest.raises(ValueError, match="queue type must be one of classic, quorum"):
        Topology("ns", queue_type="stream")
