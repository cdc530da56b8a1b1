"""``orchestrator reconcile``'s three cases (orchestrator/service/reconcile.py): a command the
restored journal knows, one its saga will decide again under the same id, and one for a saga the
database does not know at all, which is the only kind listed as lost."""

from __future__ import annotations

from datetime import UTC, datetime

from orchestrator.service.reconcile import reconcile
from orchestrator.service.store import HandledCommand

WHEN = datetime(2026, 12, 7, tzinfo=UTC)


def handled(message_id: str, saga_id: str) -> HandledCommand:
    return HandledCommand("payment", message_id, "payment.ChargePayment", saga_id, WHEN)


def test_each_handled_command_is_known_decided_again_or_lost() -> None:
    commands = [handled("c1", "s1"), handled("c2", "s1"), handled("c3", "s2"), handled("c4", "s2")]
    found = reconcile(commands, known_sagas={"s1"}, known_commands={"c1"})
    assert [c.message_id for c in found.known] == ["c1"]
    assert [c.message_id for c in found.decided_again] == ["c2"]
    assert [c.message_id for c in found.lost] == ["c3", "c4"]
    assert found.lost_sagas == ["s2"]


def test_a_tombstoned_saga_counts_as_known() -> None:
    """The adapter answers "known" for a saga archived with a tombstone: the caller passes it in
    ``known_sagas``, and nothing of it is lost."""
    found = reconcile([handled("c1", "archived")], known_sagas={"archived"}, known_commands={"c1"})
    assert found.lost == [] and len(found.known) == 1
