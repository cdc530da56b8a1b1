"""Log lines stay one line and bounded, whatever a REST key or an AMQP property carried."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from orchestrator.entrypoints.bootstrap import MAX_FIELD, MAX_MESSAGE, configure_logging
from orchestrator.entrypoints.settings import Settings

FORGED = "\n2026-01-01 INFO orchestrator: forged"


@pytest.fixture
def logged(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    """What the root handler ``configure_logging`` sets up writes, text or JSON (the param)."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging(Settings(log_json=request.param))
    stream = io.StringIO()
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    try:
        yield stream
    finally:
        root.handlers[:], root.level = saved[0], saved[1]


log = logging.getLogger("orchestrator")


@pytest.mark.parametrize("logged", [False], indirect=True)
def test_a_newline_in_an_argument_does_not_forge_a_text_line(logged: io.StringIO) -> None:
    log.warning("dead-lettered message %s (type %s): %s", "m-1", "orders.X" + FORGED, "no workflow")

    lines = logged.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(
        "orchestrator: dead-lettered message m-1 (type orders.X\\n2026-01-01 INFO orchestrator: forged)"
        ": no workflow"
    )


@pytest.mark.parametrize("logged", [False], indirect=True)
@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("a\r\nb", "a\\r\\nb"),
        ("a\tb", "a\\tb"),
        ("a\x00b\x1b[31mc\x7f", "a\\x00b\\x1b[31mc\\x7f"),
        ("a\u2028b\u2029c\x85d", "a\\u2028b\\u2029c\\x85d"),
        ("plain ünïcode €", "plain ünïcode €"),
    ],
)
def test_control_characters_print_as_escapes(logged: io.StringIO, raw: str, shown: str) -> None:
    log.info("key %s", raw)

    text = logged.getvalue()
    assert text.count("\n") == 1 and text.endswith(f"orchestrator: key {shown}\n")


@pytest.mark.parametrize("logged", [False], indirect=True)
def test_context_fields_are_escaped_too(logged: io.StringIO) -> None:
    extra = {"saga_id": "s-1" + FORGED, "message_id": "m\r1", "actor": "eve\u2028admin"}
    log.info("operator action", extra=extra)

    [line] = logged.getvalue().splitlines()
    assert line.endswith(
        "orchestrator: operator action saga_id=s-1\\n2026-01-01 INFO orchestrator: forged"
        " message_id=m\\r1 actor=eve\\u2028admin"
    )


@pytest.mark.parametrize("logged", [False], indirect=True)
def test_a_long_text_message_is_cut_and_says_how_much(logged: io.StringIO) -> None:
    log.info("payload %s", "x" * 10_000)

    [line] = logged.getvalue().splitlines()
    message = line.split("orchestrator: ", 1)[1]
    assert message == "payload " + "x" * (MAX_MESSAGE - len("payload ")) + "…(8008 more)"


@pytest.mark.parametrize("logged", [False], indirect=True)
def test_a_long_message_full_of_escapes_stays_bounded(logged: io.StringIO) -> None:
    log.info("%s", "\x1b" * 10_000)

    [line] = logged.getvalue().splitlines()
    message = line.split("orchestrator: ", 1)[1]
    assert message == "\\x1b" * (MAX_MESSAGE // 4) + f"…({10_000 - MAX_MESSAGE // 4} more)"


@pytest.mark.parametrize("logged", [False], indirect=True)
def test_a_long_context_field_is_cut(logged: io.StringIO) -> None:
    log.info("m", extra={"message_id": "i" * 1000})

    [line] = logged.getvalue().splitlines()
    assert line.endswith(f"message_id={'i' * MAX_FIELD}…({1000 - MAX_FIELD} more)")


@pytest.mark.parametrize("logged", [False], indirect=True)
def test_a_traceback_still_follows_its_line(logged: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("batch failed: %s", "a\nb")

    first, *rest = logged.getvalue().splitlines()
    assert first.endswith("orchestrator: batch failed: a\\nb")
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "ValueError: boom"


@pytest.mark.parametrize("logged", [True], indirect=True)
def test_json_lines_stay_one_valid_line_and_are_cut(logged: io.StringIO) -> None:
    kind = "orders.X" + FORGED + "\u2028"
    log.warning("type %s %s", kind, "y" * 10_000, extra={"saga_id": "s" + FORGED, "message_id": "m" * 1000})

    [line] = logged.getvalue().splitlines()
    entry = json.loads(line)
    full = f"type {kind} " + "y" * 10_000
    assert entry["message"] == full[:MAX_MESSAGE] + f"…({len(full) - MAX_MESSAGE} more)"
    assert entry["saga_id"] == "s" + FORGED
    assert entry["message_id"] == "m" * MAX_FIELD + f"…({1000 - MAX_FIELD} more)"
