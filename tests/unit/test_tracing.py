"""Tracing (docs/tracing.md): off unless the OTEL_* variables ask for it, and the W3C trace context
passed on either way; with a tracer, the decide span between the incoming context and the
commands. The whole chain across processes: tests/integration/test_tracing.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestrator.adapters import tracing
from orchestrator.adapters.amqp.broker import _command_headers
from orchestrator.adapters.memory import MemoryStore
from orchestrator.core.engine import OutgoingCommand
from orchestrator.core.ingress import envelope, trace_headers, trace_of
from orchestrator.core.messages import dump
from orchestrator.core.routing import Registry
from orchestrator.examples import WORKFLOWS
from orchestrator.examples.contracts import Line, OrderPlaced
from orchestrator.service.batch import fire_due_deadlines, process_batch
from orchestrator.service.operations import OperatorAction, apply_action

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
REGISTRY = Registry(WORKFLOWS)
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def placed(order_id: str = "o-1", headers: dict[str, object] | None = None) -> object:
    body = orjson.dumps(dump(OrderPlaced(order_id, "c-1", [Line("sku-1", 2)], 1250)))
    properties = {"type": OrderPlaced.TYPE, "message_id": f"m-{order_id}", "headers": headers or {}}
    return envelope(body, properties, "saga.events", OrderPlaced.TYPE)


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_SERVICE_NAME": "orders"},  # a name alone asks for nothing
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
    ],
)
def test_off_unless_the_variables_ask_for_traces(environ: dict[str, str]) -> None:
    assert not tracing.configured(environ)
    assert tracing.setup("orchestrator", environ) is None
    # nothing installed globally either: the API's own provider is still its proxy
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"},
        {"OTEL_TRACES_EXPORTER": "otlp"},
        {"OTEL_TRACES_EXPORTER": "console"},
    ],
)
def test_on_when_they_do(environ: dict[str, str]) -> None:
    assert tracing.configured(environ)
    tracer = tracing.setup("payment", environ)
    assert tracer is not None and tracer.service == "payment"
    tracer.shutdown()
    named = tracing.setup("payment", {**environ, "OTEL_SERVICE_NAME": "payments-eu"})
    assert named is not None and named.service == "payments-eu"
    named.shutdown()


def test_a_malformed_trace_context_is_not_carried_on() -> None:
    assert trace_of(PARENT) == PARENT
    assert trace_of(PARENT, "a=1,b=2") == f"{PARENT} a=1,b=2"
    assert trace_of(PARENT.encode(), b"a=1") == f"{PARENT} a=1"
    for bad in (
        None,
        "",
        "00-xyz",
        PARENT.upper(),
        "ff" + PARENT[2:],
        PARENT.replace("b7ad", "0000")[:36] + "0" * 16 + "-01",
        7,
    ):
        assert trace_of(bad) is None
    assert trace_of(PARENT, "x" * 600) == PARENT  # a tracestate too large is dropped, not the parent
    assert trace_headers(f"{PARENT} a=1") == {"traceparent": PARENT, "tracestate": "a=1"}
    assert trace_headers(None) == {}


async def test_off_the_incoming_context_goes_on_to_the_commands_and_the_timers() -> None:
    store = MemoryStore()
    incoming = placed(headers={"traceparent": PARENT, "tracestate": "a=1"})
    assert incoming.trace == f"{PARENT} a=1"

    result = await process_batch(REGISTRY, store, [incoming], NOW)

    [command] = result.commands
    assert command.trace == f"{PARENT} a=1"
    assert [c.trace for c, _ in store.outbox.values()] == [f"{PARENT} a=1"]  # through the outbox
    assert {d.trace for d, _ in store.deadlines.values()} == {f"{PARENT} a=1"}  # and the timers
    headers = _command_headers(command)
    assert headers["traceparent"] == PARENT and headers["tracestate"] == "a=1"
    # a deadline fired later continues the context that set it
    fired = await fire_due_deadlines(REGISTRY, store, NOW + timedelta(hours=1))
    assert [e.message.trace for e in fired.journal] == [f"{PARENT} a=1"]
    # and an untraced message costs nothing: no context, none carried
    plain = await process_batch(REGISTRY, store, [placed("o-2")], NOW)
    assert [c.trace for c in plain.commands] == [None]
    assert "traceparent" not in _command_headers(plain.commands[0])


async def test_with_a_tracer_the_decide_span_stands_between_the_message_and_its_commands() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = tracing.OtelTracer(provider, "orchestrator")
    store = MemoryStore()

    result = await process_batch(
        REGISTRY, store, [placed(headers={"traceparent": PARENT})], NOW, tracer=tracer
    )

    spans = {s.name: s for s in exporter.get_finished_spans()}
    decide, commit = spans["decide orders.OrderPlaced"], spans["commit"]
    assert f"{decide.parent.span_id:016x}" == PARENT[36:52]
    assert f"{decide.context.trace_id:032x}" == PARENT[3:35]
    assert commit.parent.span_id == decide.context.span_id
    assert decide.attributes["orchestrator.saga.id"] == result.decisions[0].saga.id
    assert decide.attributes["orchestrator.state.after"] == "reserve"
    assert decide.attributes["messaging.message.id"] == "m-o-1"
    [command] = result.commands
    assert command.trace == f"00-{decide.context.trace_id:032x}-{decide.context.span_id:016x}-01"

    sent: list[OutgoingCommand] = []

    async def publish(c: OutgoingCommand) -> None:
        sent.append(c)

    await tracing.publishing(tracer, publish, "saga.commands")(command)
    publish_span = next(s for s in exporter.get_finished_spans() if s.name.startswith("publish "))
    assert publish_span.parent.span_id == decide.context.span_id
    assert sent[0].trace == f"00-{decide.context.trace_id:032x}-{publish_span.context.span_id:016x}-01"


async def test_an_operator_action_is_decided_in_a_span_its_commands_continue() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = tracing.OtelTracer(provider, "orchestrator")
    store = MemoryStore()
    saga_id = (await process_batch(REGISTRY, store, [placed()], NOW)).decisions[0].saga.id

    applied = await apply_action(REGISTRY, store, saga_id, OperatorAction("retry", "alice"), NOW, tracer)

    [span] = [s for s in exporter.get_finished_spans() if s.name == "operator retry"]
    assert span.parent is None  # a trace of its own: the saga's start context is not on its row
    assert span.attributes["orchestrator.saga.id"] == saga_id
    assert span.attributes["orchestrator.state.after"] == "reserve"
    assert applied.commands and {c.trace for c in applied.commands} == {
        f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-{int(span.context.trace_flags):02x}"
    }
