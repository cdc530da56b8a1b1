"""Workflow releases (issue 13, item 1): a saga is decided by the release it started on, several
releases load side by side, new sagas start on the current one, a process without a saga's
release leaves its messages, and ``run``'s gate refuses a changed or a needed-but-dropped release."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from orchestrator import DefinitionError
from orchestrator.adapters.memory import MemoryStore
from orchestrator.core.checks import check_all
from orchestrator.core.engine import saga_id_for
from orchestrator.core.messages import Message, dump
from orchestrator.core.routing import Registry
from orchestrator.examples import OrderSaga, escrow
from orchestrator.examples.contracts import Line, OrderPlaced, PaymentCharged, StockReserved
from orchestrator.service.batch import Envelope, Verdict, fire_due_deadlines, process_batch
from orchestrator.service.releases import ReleaseRefused, admit_releases
from tests.releases.order_v2 import OrderConfirmed, OrderSagaV2
from tests.replies import reply_envelope

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
V1 = OrderSaga.workflow
V2 = OrderSagaV2.workflow


def envelope(message: Message, message_id: str, correlation_id: str | None = None) -> Envelope:
    return Envelope(orjson.dumps(dump(message)), message.TYPE, message_id, correlation_id)


def placed(key: str) -> Envelope:
    return envelope(OrderPlaced(key, "c-1", [Line("sku-1", 1)], 1000), f"placed-{key}")


def test_several_releases_of_a_workflow_need_exactly_one_marked_current() -> None:
    unmarked = replace(V2, current=False)
    with pytest.raises(DefinitionError, match="releases 1, 2 are loaded and 0 of them marked current"):
        Registry([V1, unmarked])
    with pytest.raises(DefinitionError, match="called 'order' with release '1'"):
        Registry([V1, V1])
    assert Registry([V2]).workflows["order"].workflow.release == "2"  # alone, it is current
    assert Registry([V1, V2]).workflows["order"].workflow is V2
    lines = [f.line() for f in check_all([V1, unmarked])]
    assert any("releases 1, 2 are loaded: mark exactly one current=True" in line for line in lines)


def test_a_release_must_be_a_short_plain_name() -> None:
    with pytest.raises(DefinitionError, match="release 'a b' must be"):
        replace(V1, release="a b")


def test_the_fingerprint_follows_the_structure_and_is_the_same_in_every_process() -> None:
    assert V1.fingerprint() == OrderSaga.workflow.fingerprint()
    assert V1.fingerprint() != replace(V2, release="1", current=False).fingerprint()
    longer = V1.with_deadlines("order", timedelta(hours=1))
    assert longer.fingerprint() != V1.fingerprint()
    script = "from orchestrator.examples import OrderSaga; print(OrderSaga.workflow.fingerprint())"
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == V1.fingerprint()


async def test_sagas_finish_on_the_release_they_started_on_and_new_ones_start_on_the_current() -> None:
    store = MemoryStore()
    old = Registry([V1, escrow])
    await process_batch(old, store, [placed("o-old")], NOW)
    old_id = saga_id_for("order", "o-old")

    both = Registry([V1, V2, escrow])
    await process_batch(both, store, [placed("o-new")], NOW)
    new_id = saga_id_for("order", "o-new")
    assert (await store.get_saga(old_id)).release == "1"  # type: ignore[union-attr]
    assert (await store.get_saga(new_id)).release == "2"  # type: ignore[union-attr]

    result = await process_batch(
        both,
        store,
        [
            reply_envelope(store, StockReserved("o-old", "res-1"), old_id),
            reply_envelope(store, StockReserved("o-new", "res-2"), new_id),
        ],
        NOW,
    )
    assert result.verdicts == [Verdict.ACCEPTED, Verdict.ACCEPTED]
    assert (await store.get_saga(old_id)).state == "charge"  # type: ignore[union-attr]
    assert (await store.get_saga(new_id)).state == "payment"  # type: ignore[union-attr]
    started = (await store.journal(new_id))[0]
    assert started.decision["release"] == "2"


async def test_a_process_without_a_sagas_release_leaves_its_messages_and_its_timers() -> None:
    store = MemoryStore()
    both = Registry([V1, V2, escrow])
    await process_batch(both, store, [placed("o-2")], NOW)
    saga_id = saga_id_for("order", "o-2")
    before = await store.records(saga_id)

    old = Registry([V1, escrow])  # an old process during a rolling deploy
    reply = reply_envelope(store, StockReserved("o-2", "res-3"), saga_id)
    by_key = reply_envelope(store, StockReserved("o-2", "res-3"), saga_id, correlated=False)
    again = replace(placed("o-2"), message_id="placed-o-2-again")  # the same start, sent again
    # a type only release 2 takes, which this process cannot tell from junk: left too
    only_new = envelope(OrderConfirmed("o-2"), "c-2", saga_id)
    result = await process_batch(old, store, [reply, by_key, again, only_new], NOW)

    assert result.verdicts == [Verdict.LEFT] * 4
    assert result.refusals == [None] * 4 and not result.journal
    assert await store.records(saga_id) == before  # not decided, not in the inbox, not failed
    swept = await fire_due_deadlines(old, store, NOW + timedelta(days=1))
    assert not swept.decisions and await store.records(saga_id) == before
    assert await store.next_deadline(old.loaded()) is None

    taken = await process_batch(both, store, [reply], NOW)  # a process that loads release 2
    assert taken.verdicts == [Verdict.ACCEPTED]
    assert (await store.get_saga(saga_id)).state == "payment"  # type: ignore[union-attr]


async def test_a_reply_for_a_workflow_not_loaded_at_all_is_still_refused() -> None:
    store = MemoryStore()
    await process_batch(Registry([V1, escrow]), store, [placed("o-3")], NOW)
    saga_id = saga_id_for("order", "o-3")
    result = await process_batch(
        Registry([escrow]), store, [envelope(PaymentCharged("o-3", "ch-1"), "p-3", saga_id)], NOW
    )
    assert result.verdicts == [Verdict.DEAD]


class FakeBook:
    """The release book as the gate sees it, in memory."""

    def __init__(
        self, kept: Mapping[tuple[str, str], tuple[str, datetime]], in_flight: dict[tuple[str, str], int]
    ):
        self.kept = dict(kept)
        self.counts = in_flight
        self.failed: list[tuple[str, str, str]] = []

    async def fingerprints(self) -> dict[tuple[str, str], tuple[str, datetime]]:
        return dict(self.kept)

    async def record(self, fingerprints: Mapping[tuple[str, str], str], now: datetime) -> None:
        for pair, print_ in fingerprints.items():
            self.kept[pair] = (print_, self.kept.get(pair, (print_, now))[1])

    async def in_flight(self, workflows: list[str]) -> dict[tuple[str, str], int]:
        return {pair: n for pair, n in self.counts.items() if pair[0] in workflows}

    async def fail_in_flight(self, workflow: str, release: str, reason: str, now: datetime) -> int:
        self.failed.append((workflow, release, reason))
        return self.counts.pop((workflow, release), 0)


EARLIER = NOW - timedelta(days=7)


async def test_the_gate_records_new_releases_and_refuses_a_changed_one_unless_accepted() -> None:
    book = FakeBook({}, {})
    admitted = await admit_releases(book, Registry([V1, escrow]), NOW)
    assert admitted.new == [("escrow", "1"), ("order", "1")]
    assert book.kept[("order", "1")][0] == V1.fingerprint()

    changed = replace(V2, release="1", current=False)
    with pytest.raises(ReleaseRefused, match="release 1 of workflow order has changed since it first ran"):
        await admit_releases(book, Registry([changed, escrow]), NOW)
    assert book.kept[("order", "1")][0] == V1.fingerprint()
    accepted = await admit_releases(book, Registry([changed, escrow]), NOW, accept_changed=True)
    assert accepted.accepted == [("order", "1")] and book.kept[("order", "1")][0] == changed.fingerprint()


async def test_the_gate_refuses_to_drop_a_release_sagas_need_unless_told_to_fail_them() -> None:
    kept: dict[tuple[str, str], tuple[str, Any]] = {
        ("order", "1"): (V1.fingerprint(), EARLIER),
        ("order", "2"): (V2.fingerprint(), NOW),
    }
    book = FakeBook(kept, {("order", "1"): 3, ("order", "2"): 5})
    v2_only = Registry([V2, escrow])
    with pytest.raises(ReleaseRefused, match=r"sagas in flight need release 1 of order \(3 sagas\)"):
        await admit_releases(book, v2_only, NOW)
    assert not book.failed
    admitted = await admit_releases(book, v2_only, NOW, fail_dropped=True)
    assert admitted.failed == {("order", "1"): 3}
    assert "release 1 of order was dropped" in book.failed[0][2]


async def test_an_old_process_restarted_mid_deploy_starts_and_leaves_the_newer_release() -> None:
    kept: dict[tuple[str, str], tuple[str, Any]] = {
        ("order", "1"): (V1.fingerprint(), EARLIER),
        ("order", "2"): (V2.fingerprint(), NOW),
        ("escrow", "1"): (escrow.fingerprint(), EARLIER),
    }
    book = FakeBook(kept, {("order", "1"): 3, ("order", "2"): 5})
    admitted = await admit_releases(book, Registry([V1, escrow]), NOW)
    assert admitted.ahead == {("order", "2"): 5} and not admitted.failed


def test_check_names_the_release_of_a_finding_where_several_are_loaded() -> None:
    lines = [f.line() for f in check_all([V1, V2])]
    assert any(line.startswith("warning: order release 2: state ship") for line in lines), lines
    assert not any("order release 1" in line for line in lines)  # release 1 has nothing to say
