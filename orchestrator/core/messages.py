"""Message contracts: the events and commands a workflow speaks, as small frozen dataclasses.

A message class names its wire type in ``TYPE`` (``"inventory.ReserveStock"``); the part before
the dot is the participant service whose queue receives it. Payloads are validated by pydantic
against the dataclass fields, so a workflow's schema is simply its message classes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, TypeVar

from pydantic import TypeAdapter, ValidationError

__all__ = [
    "Command",
    "Event",
    "InvalidPayload",
    "Message",
    "body_schema",
    "dump",
    "load",
    "schema_of",
    "service_of",
]


class Message:
    """Base of every message class; subclasses are ``@dataclass(frozen=True)`` and set ``TYPE``.

    ``SCHEMA`` is the version of the payload's shape the class reads (1 unless it says more): an
    event whose shape changed says ``SCHEMA = 2`` and registers an upcaster from 1
    (:mod:`orchestrator.core.upcasting`), so that senders still on 1 keep being understood."""

    TYPE: ClassVar[str]
    SCHEMA: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "SCHEMA" in cls.__dict__:
            schema_of(cls)  # refused where it is written, not at the first message


class Event(Message):
    """Something that happened, published by a participant (or the start of a saga)."""


class Command(Message):
    """Something the orchestrator asks one participant to do."""


M = TypeVar("M", bound=Message)


class InvalidPayload(ValueError):
    """A payload does not fit its message class: the message is dead-lettered with this reason."""


_adapters: dict[type[Message], TypeAdapter[Any]] = {}


def _adapter(cls: type[Message]) -> TypeAdapter[Any]:
    adapter = _adapters.get(cls)
    if adapter is None:
        adapter = _adapters[cls] = TypeAdapter(cls)
    return adapter


def load(cls: type[M], payload: Any) -> M:
    """Build a message from a decoded JSON payload, or raise InvalidPayload saying why."""
    try:
        return _adapter(cls).validate_python(payload)  # type: ignore[no-any-return]
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<body>'}: {e['msg']}" for e in error.errors()
        )
        raise InvalidPayload(f"{cls.TYPE} does not fit its schema: {problems}") from None


def dump(message: Message) -> dict[str, Any]:
    """The JSON-ready payload of a message (pydantic's serializer: ten times ``asdict``'s speed)."""
    if not dataclasses.is_dataclass(message):
        raise TypeError(f"{type(message).__name__} must be a dataclass to be sent")
    return _adapter(type(message)).dump_python(message, mode="json")


def body_schema(
    cls: type[Message], *, ref_template: str = "#/$defs/{model}", sends: bool = False
) -> dict[str, Any]:
    """The JSON Schema of a message's body, from the same pydantic adapter :func:`load` validates
    with and :func:`dump` writes with, so that what the REST API's OpenAPI and the AsyncAPI
    contract publish is what the orchestrator really accepts (``sends=False``) or writes
    (``sends=True``, for the commands it sends). Nested types go to ``$defs``, referenced by
    ``ref_template``: the caller puts them where its document keeps schemas."""
    return _adapter(cls).json_schema(
        ref_template=ref_template, mode="serialization" if sends else "validation"
    )


def schema_of(cls: type[Message]) -> int:
    """The schema version ``cls`` reads; a TypeError names a ``SCHEMA`` that is no integer >= 1."""
    schema = cls.SCHEMA
    if isinstance(schema, bool) or not isinstance(schema, int) or schema < 1:
        raise TypeError(f"{cls.__name__}.SCHEMA must be an integer >= 1, not {schema!r}")
    return schema


def service_of(type_name: str) -> str:
    """The participant service a type belongs to: ``inventory`` for ``inventory.ReserveStock``."""
    return type_name.split(".", 1)[0]
