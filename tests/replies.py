"""Replies as a participant sends them (docs/protocol.md, section 6), for tests that build
envelopes by hand: the saga takes a reply only when its message id is the reply id of a command
the saga sent."""

from __future__ import annotations

import orjson

from orchestrator.adapters.memory import MemoryStore
from orchestrator.core.engine import reply_id_for
from orchestrator.core.messages import Message, dump
from orchestrator.service.batch import Envelope
from orchestrator.service.store import Store

__all__ = ["answer", "answered_command", "reply_envelope", "reply_id"]


def reply_id(store: MemoryStore, saga_id: str, type_: str, index: int = 0) -> str:
    """The reply id of a ``type_`` answer to the ``index``-th command the saga waits on."""
    return reply_id_for(store.sagas[saga_id].awaiting[index]["message_id"], type_)


def reply_envelope(
    store: MemoryStore, message: Message, saga_id: str, *, correlated: bool = True, index: int = 0
) -> Envelope:
    """``message`` as the reply to the ``index``-th command saga ``saga_id`` waits on: correlated
    by id, or (``correlated=False``) found by its key."""
    return Envelope(
        orjson.dumps(dump(message)),
        message.TYPE,
        reply_id(store, saga_id, message.TYPE, index),
        saga_id if correlated else None,
    )


async def answered_command(store: Store, saga_id: str, index: int = 0) -> str:
    """The id of the command a reply answers: the ``index``-th the saga waits on, or, waiting on
    none, the last it sent."""
    saga = await store.get_saga(saga_id)
    assert saga is not None, f"no saga {saga_id}"
    commands = [c["message_id"] for c in saga.awaiting]
    if not commands:
        journal = await store.journal(saga_id)
        commands = [c["message_id"] for e in journal for c in e.decision["commands"]][-1:]
    assert commands, f"saga {saga_id} sent no command: nothing can answer it"
    return str(commands[min(index, len(commands) - 1)])


async def answer(
    store: Store, message: Message, saga_id: str, *, correlated: bool = True, index: int = 0
) -> Envelope:
    """``message`` as the reply to the ``index``-th command saga ``saga_id`` waits on (waiting on
    none: the last it sent), on any store: correlated by id, or (``correlated=False``) by key."""
    command = await answered_command(store, saga_id, index)
    return Envelope(
        orjson.dumps(dump(message)),
        message.TYPE,
        reply_id_for(command, message.TYPE),
        saga_id if correlated else None,
    )
