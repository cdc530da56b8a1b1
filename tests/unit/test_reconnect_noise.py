"""A broker restart the service rides out logs no ERROR and no traceback (issue 29): the AMQP
libraries' lines about it become DEBUG records, dropped at the service's levels; the rest of
what those loggers say is left alone."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

import pytest

from orchestrator.adapters.amqp.reconnect_noise import quiet_reconnects
from orchestrator.entrypoints.bootstrap import quiet_libraries


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kept() -> Iterator[Kept]:
    handler = Kept()
    root = logging.getLogger()
    root.addHandler(handler)
    quiet_libraries()
    yield handler
    root.removeHandler(handler)


def broken() -> tuple[type[BaseException], BaseException, object]:
    try:
        raise ConnectionError("CONNECTION_FORCED - broker forced connection closure")
    except ConnectionError:
        info = sys.exc_info()
    assert info[0] is not None and info[1] is not None
    return info[0], info[1], info[2]


def test_the_libraries_lines_about_a_broker_restart_are_not_errors(kept: Kept) -> None:
    aiormq = logging.getLogger("aiormq.connection")
    aiormq.error('Unexpected connection close from remote "%s", %r', "amqp://guest:******@host/", "Close")
    aiormq.error("error when creating transport: %r", ConnectionRefusedError(111, "Connection refused"))
    aiormq.warning("Cancelling cause reader exited abnormally", exc_info=broken())
    logging.getLogger("aio_pika.tools").error(
        "Callback %r error: %s: %s",
        "<OneShotCallback: cb=<bound method RobustChannel._on_close of <RobustChannel>>>",
        "ChannelInvalidStateError",
        "No active transport in channel",
    )
    assert kept.records == []


def test_the_pools_line_about_a_database_between_primaries_is_not_a_warning_with_a_traceback(
    kept: Kept,
) -> None:
    logging.getLogger("asyncpg.pool").warning(
        "Failed to restore the pool connection floor; retrying", exc_info=broken()
    )
    assert kept.records == []


def test_anything_else_they_say_is_kept(kept: Kept) -> None:
    logging.getLogger("aiormq.connection").error("Connection closed while handshaking: %r", "x")
    logging.getLogger("aio_pika.tools").error("Callback %r error: %s: %s", "<cb=handler>", "KeyError", "k")
    assert [r.levelname for r in kept.records] == ["ERROR", "ERROR"]


def test_the_filter_is_attached_once() -> None:
    quiet_reconnects()
    quiet_reconnects()
    assert len(logging.getLogger("aiormq.connection").filters) == 1
