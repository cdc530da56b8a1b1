"""A refused message's batch is freed as soon as nothing uses it (issue 27, case 5): the refusal
kept in the result holds no frames. Kept with its traceback, it held process_batch's frame, whose
locals held the result and every message of the batch: a reference cycle only a full collection
frees, so 1,000 dead letters of 1 MiB kept 800 MiB."""

from __future__ import annotations

import asyncio
import gc
import weakref
from datetime import UTC, datetime

from orchestrator.adapters.memory import MemoryStore
from orchestrator.core.ingress import Envelope
from orchestrator.core.routing import Registry
from orchestrator.examples import WORKFLOWS
from orchestrator.service.batch import Verdict, process_batch


def test_a_batch_of_refused_messages_is_freed_without_a_collection() -> None:
    registry, store = Registry(WORKFLOWS), MemoryStore()
    envelopes = [
        Envelope(b"\xff not json" + bytes(1000), "orders.OrderPlaced", "m-1"),  # its error has a context
        Envelope(b'{"pad": "x"}', "x.Junk", "m-2"),  # refused by a raise inside the routing
    ]
    watched = [weakref.ref(e) for e in envelopes]
    gc.disable()
    try:
        result = asyncio.run(process_batch(registry, store, envelopes, datetime.now(UTC)))
        del envelopes
        alive = [w() is not None for w in watched]
    finally:
        gc.enable()

    assert result.verdicts == [Verdict.DEAD, Verdict.DEAD]
    assert all(r is not None and r.__traceback__ is None and r.__context__ is None for r in result.refusals)
    assert alive == [False, False]
