"""What a participant is: its service name, one handler per command type, and its tables.

A handler is business code: it gets the command and a database session inside the transaction the
kit opened, does its writes, and returns the reply. The kit does everything around it (the inbox,
the outbox, the broker), so a handler is written as if every command arrived exactly once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, overload

from orchestrator.core.engine import reply_id_for
from orchestrator.core.messages import Command, InvalidPayload, Message, dump, load

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

__all__ = [
    "Context",
    "Defer",
    "Handler",
    "InvalidCommand",
    "Participant",
    "Reply",
    "reply_message_id",
]

C = TypeVar("C", bound=Command)
R = TypeVar("R", bound="Message | Reply")


class InvalidCommand(ValueError):
    """A command no retry can make valid: dead-lettered at once, with this as the reason."""


class Defer(Exception):
    """No reply yet: the transaction is rolled back, the command acked, and nothing is recorded.

    For a command the participant cannot carry out now but will later (a downstream system is
    away): the orchestrator's ``retry=`` on the step sends it again with the same id, and the
    handler runs afresh. Without a retry the step's deadline decides, as for a lost reply."""


@dataclass(frozen=True)
class Reply:
    """A reply by type and body, for handlers that do not use message classes."""

    type: str
    body: Mapping[str, Any]


@dataclass
class Context:
    """What a handler gets beside the command."""

    #: an ORM session joined to the kit's transaction: flushed by the kit, committed with the inbox
    session: AsyncSession
    #: the same transaction, for Core statements
    connection: AsyncConnection
    message_id: str
    saga_id: str
    #: the ``x-workflow`` header of the command, when it has one
    workflow: str | None
    #: 1 on the first try of this message id; more after failures the kit counted
    attempt: int
    headers: Mapping[str, Any] = field(default_factory=dict)


HandlerResult = Message | Reply
Handler = Callable[[Any, Context], Awaitable[HandlerResult]]
Setup = Callable[["AsyncConnection"], Awaitable[None]]


@dataclass(frozen=True)
class _Registered:
    handler: Handler
    #: the message class the body is loaded into, or None for a plain dict
    message: type[Command] | None


class Participant:
    """One participant service: ``Participant("payment")``, then ``@payment.handles(ChargePayment)``.

    ``schema`` is the PostgreSQL schema of the kit's tables (the inbox and the attempt counts),
    the service name unless given, so several services can share one database."""

    def __init__(self, service: str, *, schema: str | None = None) -> None:
        if not service or "." in service or "#" in service or "*" in service:
            raise ValueError(f"a service name is one routing-key word, got {service!r}")
        self.service = service
        self.schema = schema or service
        self._handlers: dict[str, _Registered] = {}
        self._setups: list[Setup] = []

    @property
    def commands(self) -> frozenset[str]:
        return frozenset(self._handlers)

    @overload
    def handles(
        self, command: type[C]
    ) -> Callable[[Callable[[C, Context], Awaitable[R]]], Callable[[C, Context], Awaitable[R]]]: ...

    @overload
    def handles(
        self, command: str
    ) -> Callable[
        [Callable[[dict[str, Any], Context], Awaitable[R]]], Callable[[dict[str, Any], Context], Awaitable[R]]
    ]: ...

    def handles(self, command: type[Command] | str) -> Callable[[Any], Any]:
        """Register the handler of one command type: a Command class (the body is loaded into it,
        and a body that does not fit is dead-lettered) or a type name (the body as a dict)."""
        if isinstance(command, str):
            type_name, message = command, None
        else:
            type_name, message = command.TYPE, command
        if not type_name.startswith(f"{self.service}."):
            # Commands are routed to {ns}.S by their type's first word (docs/protocol.md section 3):
            # a handler for another service's type would never be called.
            raise ValueError(f"{self.service} receives {self.service}.* commands only, not {type_name!r}")
        if type_name in self._handlers:
            raise ValueError(f"{type_name} has a handler already")

        def register(handler: Handler) -> Handler:
            self._handlers[type_name] = _Registered(handler, message)
            return handler

        return register

    def setup(self, function: Setup) -> Setup:
        """Register a function run once at start, in a transaction, before any command: where a
        participant creates its own business tables (``CREATE TABLE IF NOT EXISTS``)."""
        self._setups.append(function)
        return function

    @property
    def setups(self) -> tuple[Setup, ...]:
        return tuple(self._setups)

    def decode(self, command_type: str, body: Mapping[str, Any]) -> Any:
        """The command a handler gets; InvalidCommand if the type is not ours or the body does not fit."""
        registered = self._handlers.get(command_type)
        if registered is None:
            raise InvalidCommand(f"{self.service} does not handle {command_type!r}")
        if registered.message is None:
            return dict(body)
        try:
            return load(registered.message, body)
        except InvalidPayload as error:
            raise InvalidCommand(str(error)) from None

    async def handle(self, command_type: str, command: Any, context: Context) -> Reply:
        """Run the handler and turn what it returns into a Reply."""
        result = await self._handlers[command_type].handler(command, context)
        if isinstance(result, Reply):
            return Reply(result.type, dict(result.body))
        if isinstance(result, Message):
            return Reply(type(result).TYPE, dump(result))
        raise TypeError(
            f"the handler of {command_type} returned {type(result).__name__}: a handler returns its"
            " reply (a message or a Reply), or raises Defer to send none"
        )


def reply_message_id(command_message_id: str, reply_type: str) -> str:
    """The contract's reply id (docs/protocol.md section 6): a command handled twice yields a reply
    the orchestrator recognises as a duplicate."""
    return reply_id_for(command_message_id, reply_type)
