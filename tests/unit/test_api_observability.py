"""Metrics, log lines and the settings and command line around the REST API."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.adapters.metrics import Histogram, Metrics, count_finished
from orchestrator.adapters.scheduler import SchedulerAlarm
from orchestrator.core.definitions import Status
from orchestrator.core.engine import Decision, Incoming, Outcome, OutgoingCommand, SagaSnapshot
from orchestrator.core.routing import Registry
from orchestrator.entrypoints import cli
from orchestrator.entrypoints.bootstrap import configure_logging
from orchestrator.entrypoints.settings import Settings, SettingsError
from orchestrator.examples import WORKFLOWS
from orchestrator.service.deadlines import DeadlineAlarm
from orchestrator.service.faults import Fault
from orchestrator.service.relay import Relay
from orchestrator.service.store import JournalEntry


def test_a_histogram_counts_into_cumulative_buckets() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 7.0):
        histogram.observe(value)

    assert histogram.buckets() == [("0.1", 2.0), ("1.0", 3.0), ("+Inf", 4.0)]
    assert (histogram.count, histogram.sum) == (4, pytest.approx(7.65))


def test_metrics_render_in_prometheus_text() -> None:
    metrics = Metrics(process=False)
    metrics.messages_in["accepted"] += 3
    metrics.messages_in["duplicate"] += 2
    metrics.step_latency.observe(("order", "payments.Charge"), 0.004)

    text = metrics.render().decode()

    assert 'orchestrator_messages_in_total{verdict="accepted"} 3.0' in text
    assert "orchestrator_duplicates_total 2.0" in text
    assert (
        'orchestrator_step_latency_seconds_bucket{command="payments.Charge",le="0.005",workflow="order"} 1.0'
        in text
    )
    assert "orchestrator_database_up 0.0" in text  # no scrape has read the database yet
    assert "# TYPE orchestrator_sagas gauge" not in text  # the database gauges: not read yet


class _Store:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def mark_sent(self, message_ids: list[str]) -> None:
        self.sent += message_ids

    def classify(self, error: BaseException) -> Fault:
        return Fault.OTHER


async def test_the_relay_counts_confirmed_commands_and_their_step_latency() -> None:
    async def publish(command: OutgoingCommand) -> None:
        if command.type == "fails":
            raise RuntimeError("nope")

    store = _Store()
    relay = Relay(store, publish)  # type: ignore[arg-type]
    sent, failed, swept = (OutgoingCommand(f"m-{t}", t, {}, "s-1", "order") for t in ("ok", "fails", "swept"))
    relay.submit([sent, failed], received_at=0.0)
    relay.submit([swept])

    await relay._send([sent, failed, swept])

    assert relay.metrics.commands_out == 2 and store.sent == ["m-ok", "m-swept"]
    assert relay.metrics.step_latency.count == 1  # a command found by the sweep has no arrival time
    assert list(relay.metrics.step_latency.by) == [("order", "ok")]  # by workflow and command type
    assert relay.received == {}


def test_a_fired_deadline_counts_its_lateness_and_logs_its_saga_and_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    alarm = DeadlineAlarm(Registry(WORKFLOWS), None, SchedulerAlarm())  # type: ignore[arg-type]
    due = datetime(2030, 1, 1, tzinfo=UTC)
    message = Incoming(
        "saga.DeadlineExpired", "deadline:s-1:3", {"state": "charge", "due_at": due.isoformat()}, "deadline"
    )
    entry = JournalEntry(
        "s-1", 4, message, {"from": "charge", "to": "compensating_reserve"}, due + timedelta(seconds=2)
    )

    with caplog.at_level(logging.INFO, "orchestrator.service.deadlines"):
        alarm._observe(
            [entry],
            [
                Decision(
                    SagaSnapshot("s-1", "order", "k", "compensating_reserve", Status.COMPENSATING, 4, {}),
                    Outcome.MOVED,
                    "charge",
                )
            ],
        )

    assert alarm.counts.deadlines_fired["deadline"] == 1
    assert (alarm.counts.deadline_lateness.count, alarm.counts.deadline_lateness.sum) == (1, 2.0)
    assert list(alarm.counts.deadline_lateness.by) == [("order", "deadline")]  # its saga's workflow
    [record] = caplog.records
    assert (record.saga_id, record.message_id) == ("s-1", "deadline:s-1:3")  # type: ignore[attr-defined]


@pytest.mark.parametrize("as_json", [True, False])
def test_a_log_line_about_a_message_carries_its_saga_and_message_ids(as_json: bool) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging(Settings(log_json=as_json))
    stream = io.StringIO()
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    try:
        logging.getLogger("orchestrator").warning(
            "dead-lettered %s", "m-1", extra={"saga_id": "s-1", "message_id": "m-1"}
        )
        logging.getLogger("orchestrator").info("no message here")
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
    first, second = stream.getvalue().splitlines()
    if as_json:
        line = json.loads(first)
        assert (line["message"], line["saga_id"], line["message_id"]) == ("dead-lettered m-1", "s-1", "m-1")
        assert "saga_id" not in json.loads(second)
    else:
        assert first.endswith("orchestrator: dead-lettered m-1 saga_id=s-1 message_id=m-1")
        assert second.endswith("orchestrator: no message here")


def test_the_token_is_read_from_the_environment_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_API_TOKEN", "hunter2-hunter2-hunter2")
    monkeypatch.setenv("ORCHESTRATOR_API_OPEN_READS", "true")
    monkeypatch.setenv("ORCHESTRATOR_STUCK_AFTER_SECONDS", "60")

    settings = Settings.from_env(api_port=0)

    assert (settings.api_token, settings.api_open_reads, settings.stuck_after_seconds) == (
        "hunter2-hunter2-hunter2",
        True,
        60.0,
    )
    assert settings.api_port == 0 and "hunter2" not in repr(settings)


def test_a_short_unnamed_token_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_API_TOKEN", "hunter2")
    with pytest.raises(SettingsError, match="ORCHESTRATOR_API_TOKEN: the token must be at least") as refused:
        Settings.from_env()
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize("raw", ["-5", "0", "soon", "nan", "inf", "1e13"])
def test_a_bad_stuck_threshold_is_refused(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("ORCHESTRATOR_STUCK_AFTER_SECONDS", raw)

    with pytest.raises(SettingsError, match="ORCHESTRATOR_STUCK_AFTER_SECONDS must be a positive number"):
        Settings.from_env()


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["run"], "no API token is set (ORCHESTRATOR_API_TOKEN"),
        (["run", "--insecure", "--port", "70000"], "--port must be between 0 and 65535"),
    ],
)
def test_run_refuses_to_serve_actions_without_a_token_unless_told(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    monkeypatch.delenv("ORCHESTRATOR_API_TOKEN", raising=False)

    with pytest.raises(SystemExit) as exited:
        cli.main(argv)

    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("orchestrator: ") and says in err and err.count("\n") == 1


def test_the_turns_of_a_saga_s_course_are_counted_once_each() -> None:
    """Started (no state before), compensation started (running to compensating, or straight to
    compensated), finished (closed from a status not closed), whatever path the decision took."""
    workflows = Registry(WORKFLOWS).workflows
    metrics = Metrics(process=False)

    def turn(before: str | None, state: str, status: Status) -> Decision:
        saga = SagaSnapshot("s-1", "order", "k-1", state, status, 1, {})
        return Decision(saga, Outcome.MOVED, before)

    count_finished(
        metrics,
        [
            turn(None, "reserve", Status.RUNNING),  # started
            turn(None, "reserve", Status.FAILED),  # started, and failed at once
            turn("reserve", "charge", Status.RUNNING),
            turn("charge", "compensating_reserve", Status.COMPENSATING),  # declined: undoing starts
            turn("compensating_reserve", "compensated", Status.COMPENSATED),  # undone: finished
            turn("reserve", "compensated", Status.COMPENSATED),  # out of stock: nothing to undo
            turn("ship", "completed", Status.COMPLETED),
            turn("completed", "completed", Status.COMPLETED),  # a late reply on a closed saga
            turn("charge", "charge", Status.FAILED),  # failed: an operator's, not a compensation
        ],
        workflows,
    )

    assert metrics.sagas_started == {"order": 2}
    assert metrics.compensations_started == {"order": 2}
    assert metrics.sagas_finished == {("order", "compensated"): 2, ("order", "completed"): 1}
