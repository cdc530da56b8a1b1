"""Several database hosts and several broker nodes in one URL each, as libpq writes several hosts
(issue 29): every way in takes the same spelling, and every connection gets every host."""

from __future__ import annotations

import asyncpg

from orchestrator.adapters.amqp.nodes import NodeRing
from orchestrator.adapters.postgres.faults import classify
from orchestrator.adapters.postgres.store import driver_dsn
from orchestrator.adapters.read_only import read_only
from orchestrator.participant.settings import Settings as KitSettings
from orchestrator.service.faults import Fault
from orchestrator.settings import broker_nodes, database_url, mask_url

LIBPQ = "postgresql+asyncpg://app:p%40ss@db-1:5432,db-2:5433/orchestrator?target_session_attrs=read-write"


def test_libpqs_host_list_becomes_sqlalchemys_repeated_host_parameters() -> None:
    assert database_url(LIBPQ) == (
        "postgresql+asyncpg://app:p%40ss@/orchestrator?host=db-1:5432&host=db-2:5433"
        "&target_session_attrs=read-write"
    )
    assert database_url(f"{LIBPQ}&sslmode=require").endswith("&target_session_attrs=read-write&ssl=require")
    one = "postgresql+asyncpg://app@db-1:5432/orchestrator"
    assert database_url(one) == one


def test_both_spellings_give_asyncpg_every_host() -> None:
    expected = "postgresql://app:p%40ss@db-1:5432,db-2:5433/orchestrator?target_session_attrs=read-write"
    assert driver_dsn(LIBPQ) == expected
    assert driver_dsn(database_url(LIBPQ)) == expected


def test_the_participant_kit_takes_the_host_list_too() -> None:
    kit = KitSettings(
        database_url="postgresql://app@db-1:5432,db-2:5433/payments?target_session_attrs=read-write",
    )
    assert kit.engine_url == (
        "postgresql+asyncpg://app@/payments?host=db-1:5432&host=db-2:5433&target_session_attrs=read-write"
    )


def test_a_broker_url_names_one_url_per_node() -> None:
    url = "amqps://app:s3cret@rabbit-1:5671,rabbit-2:5671,rabbit-3:5672/prod?heartbeat=10"
    assert broker_nodes(url) == [
        "amqps://app:s3cret@rabbit-1:5671/prod?heartbeat=10",
        "amqps://app:s3cret@rabbit-2:5671/prod?heartbeat=10",
        "amqps://app:s3cret@rabbit-3:5672/prod?heartbeat=10",
    ]
    assert broker_nodes("amqp://guest:guest@127.0.0.1:5672/") == ["amqp://guest:guest@127.0.0.1:5672/"]
    assert "s3cret" not in mask_url(url)


def test_a_ring_starts_after_the_node_it_lost() -> None:
    ring = NodeRing("amqp://g:g@a:1,b:2,c:3/")
    assert [u.split("@")[1][0] for u in ring.order()] == ["a", "b", "c"]
    ring.lost()
    assert [u.split("@")[1][0] for u in ring.order()] == ["b", "c", "a"]
    ring.lost()
    ring.lost()
    assert [u.split("@")[1][0] for u in ring.order()] == ["a", "b", "c"]


def test_a_read_only_answer_is_told_apart() -> None:
    refused = asyncpg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction")
    assert read_only(refused)
    assert classify(refused) is Fault.UNAVAILABLE
    assert not read_only(asyncpg.UniqueViolationError("duplicate key"))


def test_a_rollback_that_fails_because_the_connection_died_is_the_databases_absence() -> None:
    """asyncpg's "cannot switch to state ...; another operation is in progress", raised by the
    transaction's rollback after the server went mid-statement, with the lost connection as its
    context: the batch is waited for like an outage, never split or dead-lettered."""
    try:
        try:
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        except asyncpg.ConnectionDoesNotExistError:
            raise asyncpg.InternalClientError(
                "cannot switch to state 15; another operation (2) is in progress"
            ) from None
    except asyncpg.InternalClientError as error:
        rollback_failed = error
    assert classify(rollback_failed) is Fault.UNAVAILABLE
    assert classify(asyncpg.InternalClientError("a bug of ours")) is Fault.OTHER


def test_a_host_list_without_a_user_keeps_its_slashes() -> None:
    from sqlalchemy.engine import make_url

    url = database_url("postgresql+asyncpg://db-1:5432,db-2:5432/orchestrator")
    assert make_url(url).query["host"] == ("db-1:5432", "db-2:5432")
    assert make_url(url).database == "orchestrator"


def test_no_host_that_takes_writes_is_the_databases_absence() -> None:
    """Every host answered and none takes writes (a switchover's moment, a primary made
    read-only beside its standby): the batch waits, it is never split or set aside."""
    from sqlalchemy.exc import InternalError

    none_writable = asyncpg.TargetServerAttributeNotMatched('None of the hosts match "read-write"')
    assert classify(none_writable) is Fault.UNAVAILABLE
    try:
        raise InternalError("connect", {}, none_writable) from none_writable
    except InternalError as wrapped:
        assert classify(wrapped) is Fault.UNAVAILABLE


def test_the_kit_waits_for_a_database_between_primaries_at_start() -> None:
    from sqlalchemy.exc import DBAPIError, InternalError

    from orchestrator.participant.worker import _unreachable

    none_writable = asyncpg.TargetServerAttributeNotMatched('None of the hosts match "read-write"')
    assert _unreachable(InternalError("connect", {}, none_writable))
    starting = asyncpg.CannotConnectNowError("the database system is starting up")
    assert _unreachable(DBAPIError("connect", {}, starting))
    assert _unreachable(ConnectionRefusedError(111, "refused"))
    assert not _unreachable(asyncpg.InvalidPasswordError("password authentication failed"))


def test_the_contract_names_a_clusters_first_node() -> None:
    from orchestrator.entrypoints.contract import _server

    server, vhost = _server("amqp://u:secret@rabbit-1:5672,rabbit-2:5672/prod")
    assert server["host"] == "rabbit-1:5672" and vhost == "prod"
    assert "secret" not in str(server)
