"""What every part of the REST API shares: the running service's parts, and small helpers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import HTTPException

from orchestrator.adapters.metrics import Metrics
from orchestrator.adapters.postgres.queries import Queries
from orchestrator.core.diagrams import WorkflowView, describe, mermaid
from orchestrator.core.engine import OutgoingCommand
from orchestrator.core.machine import CompiledWorkflow
from orchestrator.core.routing import Registry
from orchestrator.entrypoints.api import models as m
from orchestrator.entrypoints.settings import Settings
from orchestrator.service.bus import MessageBus
from orchestrator.service.dead_letters import Publish
from orchestrator.service.store import Store

__all__ = ["DEFAULT_ACTOR", "RETRY_AFTER", "UNAVAILABLE_DETAIL", "ApiContext", "answers", "utc"]

#: who an action is journaled as when the caller sends no ``X-Actor``
DEFAULT_ACTOR = "api"
#: the 503's detail and its Retry-After (seconds)
UNAVAILABLE_DETAIL = "the database is unavailable; try again"
RETRY_AFTER = "5"


def _now() -> datetime:
    return datetime.now(UTC)


async def _no_checks() -> dict[str, str]:
    return {}


class _NoRelay:
    """Without a running service (tests of reads), nothing is there to send commands: the
    outbox keeps them."""

    def submit(self, commands: Iterable[OutgoingCommand], received_at: float | None = None) -> None:
        return None


@dataclass
class ApiContext:
    """What the API needs from the running service; tests build one around a bare store."""

    registry: Registry
    store: Store
    queries: Queries
    settings: Settings
    metrics: Metrics
    #: the way in for starts and actions (None: one of its own, sending nothing: a test of reads)
    bus: MessageBus | None = None
    #: readiness checks besides the database: name -> "ok" or what is wrong
    checks: Callable[[], Awaitable[dict[str, str]]] = _no_checks
    clock: Callable[[], datetime] = _now
    #: publishes a dead letter's replay over the service's publishing connection (None: no broker)
    republish: Publish | None = None
    #: per workflow, its definition and diagram, built once: both are pure and fixed for the process
    views: dict[str, tuple[WorkflowView, str]] = field(default_factory=dict, init=False)
    #: per workflow and state, the participants' events that move a saga on
    waiting: dict[tuple[str, str], dict[str, list[str]]] = field(default_factory=dict, init=False)

    @property
    def way_in(self) -> MessageBus:
        """The bus starts and actions go through."""
        assert self.bus is not None  # set at init
        return self.bus

    def __post_init__(self) -> None:
        if self.bus is None:
            self.bus = MessageBus(
                self.registry, self.store, outbox=_NoRelay(), counts=self.metrics, clock=lambda: self.clock()
            )
        for name, compiled in self.registry.workflows.items():
            self.views[name] = (
                describe(compiled.workflow),
                mermaid(compiled.workflow, compiled.moves),
            )
        for pair, compiled in self.registry.releases.items():
            self.waiting[pair] = _waiting_for(compiled)


def _waiting_for(compiled: CompiledWorkflow) -> dict[str, list[str]]:
    """Per state, the event types that move a saga on (not its timers, not an operator)."""
    found: dict[str, set[str]] = {}
    for state, event in compiled.moves:
        if event in compiled.workflow.events:
            found.setdefault(state, set()).add(event)
    return {state: sorted(events) for state, events in found.items()}


_ANSWERS = {
    400: "the body is not JSON",
    401: "missing or wrong bearer token",
    403: "the token's role is not enough for this (read < operate < admin); detail says which is needed",
    404: "no such saga, workflow or dead letter",
    409: "the action does not fit the saga (or the dead letter) as it stands; detail says why",
    413: "the body is over ORCHESTRATOR_API_MAX_BODY_BYTES",
    422: "bad input; detail says which and why",
    429: (
        "too many failed authentications from this client lately: refused, even with a good token,"
        " until Retry-After seconds have passed"
    ),
    503: (
        "the database is unavailable or failed mid-request, before the request's commit (or during"
        " it, when a repeated start answers 200 with the saga): try again after Retry-After seconds"
    ),
}


def answers(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error answers a route documents, so that the OpenAPI schema lists every status it gives."""
    return {code: {"model": m.Problem, "description": _ANSWERS[code]} for code in codes}


def utc(value: datetime | None, name: str) -> datetime | None:
    """Aware UTC, as the database compares; a time without a zone is taken as UTC."""
    if value is None:
        return None
    try:
        return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).astimezone(UTC)
    except (OverflowError, ValueError):
        raise HTTPException(422, f"{name}: {value.isoformat()} is out of range") from None


def storable(value: str | None, name: str) -> None:
    """A query string PostgreSQL could not compare (a NUL, a lone surrogate) is bad input."""
    if value is None:
        return
    try:
        m.storable_text(value)
    except ValueError as error:
        raise HTTPException(422, f"{name}: {error}") from None
