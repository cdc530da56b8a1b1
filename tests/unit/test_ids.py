"""Command and timer ids keyed with the service's id key (``orchestrator/core/ids.py``).

Nobody without the key computes a command's id, or its reply's, in advance; the same message
decided again gives the same ids; a saga set back to an earlier version (a restore) names the
commands a new message causes anew; and the journal says per entry which scheme it was decided
with, so entries written before keyed ids replay as they were written.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from orchestrator.core.definitions import DEADLINE
from orchestrator.core.engine import (
    Decision,
    IdKeyMissing,
    Incoming,
    SagaSnapshot,
    command_message_id,
    decide,
    reply_id_for,
)
from orchestrator.core.ids import KEYED, keyed_command_id, timer_message_id, versioned_command_id
from orchestrator.core.journal import JournalEntry, Records
from orchestrator.core.machine import CompiledWorkflow
from orchestrator.core.replay import rebuild, verify
from orchestrator.core.routing import Registry
from orchestrator.examples import OrderSaga
from orchestrator.examples.contracts import PaymentCharged, StockReserved

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
KEY = bytes(range(32))
PLACED = {
    "order_id": "o-1",
    "customer_id": "c-1",
    "lines": [{"sku": "s", "quantity": 1}],
    "amount_cents": 900,
}
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def keyed(key: bytes = KEY) -> CompiledWorkflow:
    compiled = CompiledWorkflow(OrderSaga.workflow)
    compiled.use_id_key(key)
    return compiled


def run(compiled: CompiledWorkflow, messages: Sequence[Incoming]) -> list[tuple[Incoming, Decision]]:
    saga: SagaSnapshot | None = None
    steps = []
    for message in messages:
        decision = decide(compiled, saga, message, NOW)
        steps.append((message, decision))
        saga = decision.saga
    return steps


def journal(steps: Sequence[tuple[Incoming, Decision]]) -> list[JournalEntry]:
    return [JournalEntry(d.saga.id, d.saga.version, m, d.summary(), NOW) for m, d in steps]


def checked(compiled: CompiledWorkflow, records: Records) -> list[str]:
    """What verify finds, less the timers (these records hold none)."""
    return [line for line in verify(compiled, records) if not line.startswith("timer ")]


def reply(decision: Decision, event: type[StockReserved] | type[PaymentCharged], **payload: str) -> Incoming:
    command = decision.commands[0]
    return Incoming(event.TYPE, reply_id_for(command.message_id, event.TYPE), {"order_id": "o-1", **payload})


def order_steps(compiled: CompiledWorkflow) -> list[tuple[Incoming, Decision]]:
    started = decide(compiled, None, Incoming("orders.OrderPlaced", "m-start", PLACED), NOW)
    reserved = reply(started, StockReserved, reservation_id="r-1")
    moved = decide(compiled, started.saga, reserved, NOW)
    return [(Incoming("orders.OrderPlaced", "m-start", PLACED), started), (reserved, moved)]


def test_a_keyed_command_id_is_an_hmac_of_the_saga_the_cause_and_the_place():
    one = keyed_command_id(KEY, "saga-1", "m-1", 0)

    assert UUID.match(one)
    assert one == keyed_command_id(KEY, "saga-1", "m-1", 0)  # the same message decided again
    others = {
        keyed_command_id(KEY, "saga-2", "m-1", 0),
        keyed_command_id(KEY, "saga-1", "m-2", 0),
        keyed_command_id(KEY, "saga-1", "m-1", 1),
        keyed_command_id(secrets.token_bytes(32), "saga-1", "m-1", 0),
    }
    assert one not in others and len(others) == 4


def test_the_service_s_commands_cannot_be_computed_from_the_saga_id_and_its_version():
    steps = order_steps(keyed())
    started = steps[0][1]
    command = started.commands[0]

    assert command.message_id == keyed_command_id(KEY, started.saga.id, "m-start", 0)
    assert command.message_id != versioned_command_id(started.saga.id, 1, 0)
    assert started.summary()["ids"] == KEYED
    # its reply's id follows from it, as participants derive it (docs/protocol.md, section 6)
    assert steps[1][0].message_id == reply_id_for(command.message_id, StockReserved.TYPE)
    # the same start decided again (a batch retried, a replay) names its command the same
    assert decide(keyed(), None, steps[0][0], NOW).commands[0].message_id == command.message_id


def test_a_saga_set_back_to_an_earlier_version_names_the_commands_of_a_new_message_anew():
    """After a restore from backup the saga is back at a version it had: the commands a new
    message causes there must not reuse the ids of commands sent from that version before."""
    compiled = keyed()
    steps = order_steps(compiled)
    started, moved = steps[0][1], steps[1][1]
    other = Incoming(StockReserved.TYPE, "another-reply", {"order_id": "o-1", "reservation_id": "r-2"})
    again = decide(compiled, started.saga, other, NOW)

    assert again.saga.version == moved.saga.version
    assert {c.message_id for c in again.commands}.isdisjoint(c.message_id for c in moved.commands)

    versioned = CompiledWorkflow(OrderSaga.workflow)
    before = decide(versioned, started.saga, steps[1][0], NOW)
    after = decide(versioned, started.saga, other, NOW)
    assert [c.message_id for c in before.commands] == [c.message_id for c in after.commands]  # the flaw


def test_a_fired_timer_is_named_by_the_key_too():
    named = timer_message_id(KEY, "saga-1", "deadline", 3)

    assert UUID.match(named)
    assert named != timer_message_id(KEY, "saga-1", "deadline", 4)
    assert named != timer_message_id(KEY, "saga-1", "retry", 3)
    assert timer_message_id(None, "saga-1", "deadline", 3) == "deadline:saga-1:3"  # the test kit's


def test_a_keyed_journal_replays_with_the_key_and_says_so_without_it():
    steps = order_steps(keyed())
    entries = journal(steps)
    row = steps[-1][1].saga
    records = Records(row, entries, [], [])

    assert rebuild(keyed(), entries).saga == row
    assert checked(keyed(), records) == []
    unkeyed = checked(CompiledWorkflow(OrderSaga.workflow), records)
    assert len(unkeyed) == 1 and unkeyed[0].startswith("journal not replayed:")
    assert "id key" in unkeyed[0]
    with pytest.raises(IdKeyMissing):
        rebuild(CompiledWorkflow(OrderSaga.workflow), entries)
    other = checked(keyed(secrets.token_bytes(32)), records)  # another service's key
    assert any("command" in line for line in other)


def test_entries_written_before_keyed_ids_replay_as_they_were_written():
    """A saga that started before the key: its first entries are versioned, its later ones keyed,
    and the whole journal replays with the key loaded."""
    old = order_steps(CompiledWorkflow(OrderSaga.workflow))
    assert "ids" not in old[0][1].summary()
    assert old[0][1].commands[0].message_id == command_message_id(old[0][1].saga.id, 1, 0)
    charged = reply(old[1][1], PaymentCharged, charge_id="ch-1")
    later = decide(keyed(), old[1][1].saga, charged, NOW)
    entries = journal([*old, (charged, later)])

    assert later.summary()["ids"] == KEYED
    assert checked(keyed(), Records(later.saga, entries, [], [])) == []


def test_an_operator_s_new_attempt_and_a_deadline_s_commands_are_keyed():
    compiled = keyed()
    steps = order_steps(compiled)
    saga = steps[-1][1].saga
    new = Incoming("operator.retry", "op-1", {"new_attempt": True}, kind="operator", actor="ops")
    retried = decide(compiled, saga, new, NOW)
    assert retried.commands
    assert retried.commands[0].message_id == keyed_command_id(KEY, saga.id, "op-1", 0)

    timer_id = timer_message_id(KEY, saga.id, "deadline", saga.version)
    fired = Incoming(DEADLINE, timer_id, {"state": saga.state, "due_at": NOW.isoformat()}, kind="deadline")
    expired = decide(compiled, saga, fired, NOW)
    assert expired.commands
    assert [c.message_id for c in expired.commands] == [
        keyed_command_id(KEY, saga.id, timer_id, i) for i in range(len(expired.commands))
    ]


def test_the_registry_keys_every_release_it_loads_and_refuses_a_short_key():
    registry = Registry([OrderSaga.workflow])
    registry.use_id_key(KEY)

    assert all(c.id_key == KEY for c in registry.releases.values())
    with pytest.raises(ValueError, match="16 bytes"):
        registry.use_id_key(b"short")


def test_keyed_ids_look_like_random_uuids():
    ids = [keyed_command_id(KEY, "s", f"m-{i}", 0) for i in range(200)]

    assert all(uuid.UUID(i).version == 4 for i in ids)
    assert len(set(ids)) == 200
    saga = replace(order_steps(keyed())[0][1].saga)
    assert saga.awaiting[0]["message_id"] == order_steps(keyed())[0][1].commands[0].message_id
