"""What every service module shares: business options, body validation and deterministic ids.

The service modules stay pure functions of (command type, body, options) so they can be tested
without a broker; everything here is pure too.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "Body",
    "InvalidCommand",
    "Line",
    "Options",
    "Reply",
    "derived_id",
    "injected_failure",
    "reply_message_id",
    "require_int",
    "require_lines",
    "require_str",
]

Body = Mapping[str, object]
"""A decoded command payload: always a JSON object, never trusted until validated."""

Reply = tuple[str, dict[str, object]]
"""(reply type, reply body) as returned by every ``handle`` function."""


class InvalidCommand(ValueError):
    """A command no retry can make valid: the runner dead-letters it rather than requeue it forever."""


@dataclass(frozen=True)
class Options:
    """The failure-injection knobs a ``handle`` function may consult; each service reads its own."""

    fail_rate: float = 0.0
    out_of_stock: frozenset[str] = frozenset()
    decline_over: int | None = None
    refuse_over: int | None = None


@dataclass(frozen=True)
class Line:
    sku: str
    quantity: int


def require_str(body: Body, field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str):
        raise InvalidCommand(f"field {field!r} must be a string, got {_kind(value)}")
    return value


def require_int(body: Body, field: str) -> int:
    value = body.get(field)
    # bool is an int to Python but not to JSON Schema, and True cents is surely a bug upstream.
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidCommand(f"field {field!r} must be an integer, got {_kind(value)}")
    return value


def require_lines(body: Body) -> list[Line]:
    raw = body.get("lines")
    if not isinstance(raw, list):
        raise InvalidCommand(f"field 'lines' must be a list, got {_kind(raw)}")
    lines = []
    for index, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise InvalidCommand(f"lines[{index}] must be an object, got {_kind(item)}")
        try:
            lines.append(Line(sku=require_str(item, "sku"), quantity=require_int(item, "quantity")))
        except InvalidCommand as error:
            raise InvalidCommand(f"lines[{index}]: {error}") from None
    return lines


def injected_failure(service: str, key: str, rate: float) -> bool:
    """Whether ``--fail-rate`` makes this saga key fail at this service.

    Hashing (rather than random draws) makes reruns and re-sent commands agree, and salting with
    the service name keeps the failing keys of two services independent of each other.
    """
    if rate <= 0.0:
        return False
    digest = hashlib.sha256(f"{service}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def derived_id(kind: str, key: str) -> str:
    """An id derived from the saga key, so a participant restarted without memory answers alike."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"{kind}:{key}"))


def reply_message_id(command_message_id: str, reply_type: str) -> str:
    """The contract's reply id: a re-sent command yields a reply the orchestrator sees as a duplicate."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"{command_message_id}:{reply_type}"))


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    return type(value).__name__
