"""Event schema versions: old payloads brought to the shape their class reads now.

An event's shape may change while sagas are in flight and participants still send the old one.
Its class says which schema it reads (``SCHEMA``, 1 by default); a payload says which one it was
written in (the ``x-schema-version`` header, absent = 1); an *upcaster*, registered for a class
and the schema it reads *from*, turns a payload of schema ``n`` into one of ``n + 1``. They chain:
a payload of schema 1 for a class at ``SCHEMA = 3`` goes through 1 -> 2, then 2 -> 3.

The journal keeps each message as it came, with its schema version; the engine upcasts it to the
schema of the class it is decided by, every time it is decided (taken, applied from parking, or
replayed by ``orchestrator verify``). So upcasters must be pure functions of the payload (no
clock, no I/O, no randomness): a replay must read an old entry exactly as it was read when taken.
For the same reason an upcaster is kept as long as some journal holds payloads of its schema.

Pure: no I/O. What cannot be upcast raises :class:`~orchestrator.core.ingress.Refused`, with
reason ``schema_version`` (a version this process does not know how to read) or ``upcast_failed``
(an upcaster raised, or returned what is not a storable JSON object): about that one message.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from orchestrator.core.definitions import DefinitionError
from orchestrator.core.ingress import Reason, Refused, check_json
from orchestrator.core.messages import Message, schema_of

__all__ = ["Upcaster", "registered", "schema_of", "upcast", "upcaster"]

#: turns a payload (a JSON object) of one schema version into one of the next
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
U = TypeVar("U", bound=Upcaster)

#: class -> the schema it reads from -> its upcaster. Keyed by class, not by type name: two
#: workflows may read one wire type with classes of their own, each at its own schema.
_UPCASTERS: dict[type[Message], dict[int, Upcaster]] = {}


def upcaster(cls: type[Message], *, from_schema: int) -> Callable[[U], U]:
    """Register the decorated function as the upcaster of ``cls`` payloads from ``from_schema``
    to ``from_schema + 1``; the function is returned unchanged (tests call it directly).

    Refused when it is defined (a :class:`DefinitionError`): ``from_schema`` not in
    ``1 .. cls.SCHEMA - 1`` (an upcaster past the class's schema could never run), or a second
    upcaster for the same class and schema (which one would a replay use?)."""
    if not (isinstance(cls, type) and issubclass(cls, Message)):
        raise DefinitionError(f"upcaster: {cls!r} is not a message class")
    current = schema_of(cls)
    if isinstance(from_schema, bool) or not isinstance(from_schema, int) or not 1 <= from_schema < current:
        raise DefinitionError(
            f"upcaster of {cls.TYPE}: from_schema must be an integer from 1 to {current - 1}"
            f" (its SCHEMA is {current}), not {from_schema!r}"
        )

    def register(function: U) -> U:
        chain = _UPCASTERS.setdefault(cls, {})
        if from_schema in chain:
            raise DefinitionError(f"{cls.TYPE}: two upcasters from schema {from_schema}")
        chain[from_schema] = function
        return function

    return register


def registered(cls: type[Message]) -> dict[int, Upcaster]:
    """The upcasters of ``cls`` by the schema they read from (a copy)."""
    return dict(_UPCASTERS.get(cls, {}))


def upcast(cls: type[Message], payload: Mapping[str, Any], schema: int) -> dict[str, Any]:
    """``payload``, written in schema ``schema``, as schema ``cls.SCHEMA`` reads it.

    At its class's schema already, the payload is returned as it is (no copy: the usual case
    costs nothing). Otherwise each upcaster gets a copy of its own to change, so that the
    payload as it came (journaled, parked) is never altered. Raises ``Refused``:
    ``schema_version`` for a version newer than the class's, below 1, or with an upcaster
    missing on the way; ``upcast_failed`` when an upcaster raises or returns what is not a
    storable JSON object."""
    target = schema_of(cls)
    if schema == target:
        return payload if isinstance(payload, dict) else dict(payload)
    if isinstance(schema, bool) or not isinstance(schema, int) or schema < 1:
        raise Refused(Reason.SCHEMA_VERSION, f"{cls.TYPE}: schema version {schema!r} is not an integer >= 1")
    if schema > target:
        raise Refused(
            Reason.SCHEMA_VERSION,
            f"{cls.TYPE} of schema {schema} is newer than this orchestrator reads (schema {target})",
        )
    chain = _UPCASTERS.get(cls, {})
    data: dict[str, Any] = copy.deepcopy(dict(payload))
    for version in range(schema, target):
        step = chain.get(version)
        if step is None:
            raise Refused(
                Reason.SCHEMA_VERSION,
                f"{cls.TYPE} of schema {schema}: no upcaster from schema {version} to {version + 1}",
            )
        try:
            result: object = step(data)
        except Exception as error:
            raise Refused(
                Reason.UPCAST_FAILED,
                f"{cls.TYPE}: the upcaster from schema {version} raised {type(error).__name__}: {error}",
            ) from None
        if not isinstance(result, dict):  # typed, but user code: a list, None by mistake
            raise Refused(
                Reason.UPCAST_FAILED,
                f"{cls.TYPE}: the upcaster from schema {version} returned"
                f" {type(result).__name__}, not a JSON object",
            )
        data = result
    try:
        check_json(data, "body")
    except ValueError as error:
        why = f"{cls.TYPE}: the upcast payload cannot be stored: {error}"
        raise Refused(Reason.UPCAST_FAILED, why) from None
    return data
