"""OpenTelemetry tracing, for the orchestrator and the participant kit alike (docs/tracing.md).

Off unless the standard ``OTEL_*`` variables ask for it (:func:`configured`, which reads them
as every setting is read, through :mod:`orchestrator.settings`): then
:func:`setup` gives an :class:`OtelTracer` with a tracer provider of its own, which exports
over OTLP/HTTP (or to the console) in a background thread. When it is off nothing of the SDK is
built, and the callers hold ``None`` instead of a tracer: they pass the incoming W3C trace context
on as the opaque string the core carries (:func:`orchestrator.core.ingress.trace_of`), and pay for
nothing else.

The trace context travels as that one string, ``traceparent`` then ``tracestate`` after a space,
everywhere a message or a timer goes (the outbox, the timer rows, the command headers), so no
layer but this one knows OpenTelemetry.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from orchestrator.core.engine import OutgoingCommand
from orchestrator.core.ingress import trace_headers, trace_of
from orchestrator.settings import stripped, value, words

#: as the tracing port (orchestrator.service.tracing) has it; said again here, so that the
#: participant kit, which uses this module too, never imports the orchestrator's service layer
Attributes = Mapping[str, str | int | bool]

__all__ = ["OtelTracer", "active", "configured", "install", "publishing", "request_span", "setup"]

log = logging.getLogger("orchestrator.tracing")

_KINDS = {
    "internal": SpanKind.INTERNAL,
    "consumer": SpanKind.CONSUMER,
    "producer": SpanKind.PRODUCER,
    "server": SpanKind.SERVER,
}
_PROPAGATOR = TraceContextTextMapPropagator()
#: the exporters this package brings; others (zipkin, grpc) are not installed
_EXPORTERS = {"otlp", "console"}


def configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the ``OTEL_*`` variables ask for traces: ``OTEL_TRACES_EXPORTER`` naming an
    exporter, or an OTLP endpoint set (``OTEL_EXPORTER_OTLP_ENDPOINT``,
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); never with ``OTEL_SDK_DISABLED=true`` or
    ``OTEL_TRACES_EXPORTER=none``. The SDK itself would export to localhost by default; a service
    that nobody asked to trace must not try."""
    env = os.environ if environ is None else environ
    # the OpenTelemetry spec's boolean: "true" alone, in any case (not the settings' flag words)
    if (stripped(env, "OTEL_SDK_DISABLED") or "").lower() == "true":
        return False
    exporters = words(env, "OTEL_TRACES_EXPORTER")
    if exporters:
        return bool(exporters & _EXPORTERS)
    return bool(
        stripped(env, "OTEL_EXPORTER_OTLP_ENDPOINT") or stripped(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def _exporters(env: Mapping[str, str]) -> list[SpanExporter]:
    names = words(env, "OTEL_TRACES_EXPORTER")
    exporters: list[SpanExporter] = []
    if "otlp" in names or not names:  # none named: an endpoint alone asked for traces
        protocol = (
            value(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or value(env, "OTEL_EXPORTER_OTLP_PROTOCOL")
            or ""
        )
        if protocol.strip() and protocol.strip() != "http/protobuf":
            log.warning("tracing: OTLP protocol %r is not installed; exporting over http/protobuf", protocol)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporters.append(OTLPSpanExporter())  # endpoint, headers, timeout: from the OTEL_* variables
    if "console" in names:
        exporters.append(ConsoleSpanExporter())
    for name in sorted(names - _EXPORTERS - {"none"}):
        log.warning("tracing: exporter %r is not installed; ignored", name)
    return exporters


def _parent(trace_context: str | None) -> otel_context.Context | None:
    """The OpenTelemetry context whose remote parent ``trace_context`` names (None: a new trace)."""
    if not trace_context:
        return None
    return _PROPAGATOR.extract(trace_headers(trace_context))


def _opaque(span: trace.Span) -> str:
    """A span's own context as the opaque string: what its children carry."""
    sc = span.get_span_context()
    parent = f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"
    state = sc.trace_state.to_header() if sc.trace_state else ""
    return f"{parent} {state}" if state else parent


class _Span:
    """One span begun by :meth:`OtelTracer.start`, as the service layer's port sees it."""

    __slots__ = ("_span", "trace")

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self.trace: str | None = _opaque(span)

    def set(self, attributes: Attributes) -> None:
        self._span.set_attributes(dict(attributes))

    def fail(self, reason: str) -> None:
        self._span.set_status(Status(StatusCode.ERROR, reason[:300]))

    def end(self) -> None:
        self._span.end()


class OtelTracer:
    """The tracing port (:class:`orchestrator.service.tracing.Tracer`) on a tracer provider of
    its own: a process may hold two (the tests run participants in-process), each with its
    ``service.name``."""

    def __init__(self, provider: TracerProvider, service: str) -> None:
        self.provider = provider
        self.service = service
        self._tracer = provider.get_tracer("saga-orchestrator")

    def start(self, name: str, parent: str | None, attributes: Attributes, kind: str = "internal") -> _Span:
        span = self._tracer.start_span(
            name, context=_parent(parent), kind=_KINDS.get(kind, SpanKind.INTERNAL), attributes=attributes
        )
        return _Span(span)

    def record(
        self, name: str, parents: Sequence[str | None], start_ns: int, end_ns: int, attributes: Attributes
    ) -> None:
        for parent in parents:
            span = self._tracer.start_span(
                name, context=_parent(parent), start_time=start_ns, attributes=attributes
            )
            span.end(end_time=end_ns)

    def flush(self, timeout_seconds: float = 5.0) -> None:
        """Export what is buffered now: before the process exits, however it exits."""
        try:
            self.provider.force_flush(int(timeout_seconds * 1000))
        except Exception as error:  # an exporter away must never fail a stop
            log.warning("tracing: could not flush the spans: %s", error)

    def shutdown(self) -> None:
        try:
            self.provider.shutdown()
        except Exception as error:
            log.warning("tracing: could not shut the exporter down: %s", error)


def setup(service: str, environ: Mapping[str, str] | None = None) -> OtelTracer | None:
    """A tracer exporting as the ``OTEL_*`` variables say, named ``OTEL_SERVICE_NAME`` or else
    ``service``; None when they do not ask for traces (:func:`configured`)."""
    env = os.environ if environ is None else environ
    if not configured(env):
        return None
    name = stripped(env, "OTEL_SERVICE_NAME") or service
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES; the name given here wins over theirs
    provider = TracerProvider(resource=Resource.create({"service.name": name}), shutdown_on_exit=True)
    for exporter in _exporters(env):
        provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("tracing on: service.name=%s", name)
    return OtelTracer(provider, name)


_active: OtelTracer | None = None


def install(tracer: OtelTracer | None) -> None:
    """Make ``tracer`` the orchestrator process's own, for the REST API's spans (:func:`active`)."""
    global _active
    _active = tracer


def active() -> OtelTracer | None:
    """The orchestrator process's tracer, None when tracing is off."""
    return _active


@contextmanager
def request_span(name: str, headers: Mapping[str, str], attributes: Attributes) -> Iterator[str | None]:
    """A REST request's ``server`` span, a child of its ``traceparent`` header; gives the context
    what it starts carries on: the span's, or without tracing the header's as it came."""
    parent = trace_of(headers.get("traceparent"), headers.get("tracestate"))
    tracer = _active
    if tracer is None:
        yield parent
        return
    span = tracer.start(name, parent, {"http.request.method": name.split(" ")[0], **attributes}, "server")
    try:
        yield span.trace
    except BaseException as error:
        span.fail(f"{type(error).__name__}: {error}")
        raise
    finally:
        span.end()


def publishing(
    tracer: OtelTracer, publish: Callable[[OutgoingCommand], Awaitable[None]], exchange: str
) -> Callable[[OutgoingCommand], Awaitable[None]]:
    """``publish`` inside a ``publish <type>`` producer span, a child of the context the command
    was committed with (its outbox row's); the span's own context goes out as its
    ``traceparent``, so the participant's span is the publish span's child."""

    async def send(command: OutgoingCommand) -> None:
        attributes: dict[str, Any] = {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "send",
            "messaging.message.id": command.message_id,
            "messaging.destination.name": exchange,
            "messaging.rabbitmq.destination.routing_key": command.type,
            "orchestrator.saga.id": command.saga_id,
            "orchestrator.workflow": command.workflow,
            "orchestrator.message.type": command.type,
        }
        span = tracer.start(f"publish {command.type}", command.trace, attributes, kind="producer")
        try:
            await publish(replace(command, trace=span.trace))
        except BaseException as error:
            span.fail(f"{type(error).__name__}: {error}")
            raise
        finally:
            span.end()

    return send
