"""The tracing port: what the service layer asks of a tracer, whatever implements it.

The one implementation is :mod:`orchestrator.adapters.tracing` (OpenTelemetry), installed only
when the ``OTEL_*`` variables ask for it. Everything here takes and gives a trace context as the
core carries it: one opaque string (:func:`orchestrator.core.ingress.trace_of`). Where no tracer is
given (``None``), the service passes the incoming context on unchanged, so that a traced
participant's trace is not broken by an untraced orchestrator, and pays for nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from orchestrator.core.engine import Decision

__all__ = ["Attributes", "Span", "Tracer", "decided"]

Attributes = Mapping[str, str | int | bool]


class Span(Protocol):
    #: this span's own context, as the opaque string: the parent of what it causes
    trace: str | None

    def set(self, attributes: Attributes) -> None: ...

    def fail(self, reason: str) -> None:
        """Mark it failed (the message was refused, the publish did not go out)."""

    def end(self) -> None: ...


class Tracer(Protocol):
    def start(self, name: str, parent: str | None, attributes: Attributes, kind: str = "internal") -> Span:
        """A span begun now, a child of ``parent`` (a root when None). ``kind``: internal,
        consumer, producer or server."""

    def record(
        self, name: str, parents: Sequence[str | None], start_ns: int, end_ns: int, attributes: Attributes
    ) -> None:
        """One finished span per parent, over the same time: something many messages shared (a
        batch's commit) shown in each of their traces."""


def decided(span: Span, decisions: Sequence[Decision]) -> None:
    """End a ``decide`` span with what the decision did: the saga, its state before and after."""
    first = decisions[0]
    span.set(
        {
            "orchestrator.saga.id": first.saga.id,
            "orchestrator.workflow": first.saga.workflow,
            "orchestrator.state.before": first.previous_state or "",
            "orchestrator.state.after": first.saga.state,
            "orchestrator.outcome": str(first.outcome),
            "orchestrator.commands": sum(len(d.commands) for d in decisions),
        }
    )
    span.end()
