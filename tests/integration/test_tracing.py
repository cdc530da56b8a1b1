"""One saga, one trace, across the orchestrator and the participant processes (docs/tracing.md).

Every process exports over OTLP/HTTP to a small receiver this test runs (no collector here): the
orchestrator and the example participants, as real processes, with the standard ``OTEL_*``
variables. The sagas: one that completes, one that compensates (payment declines), one started
by ``POST /sagas`` with a ``traceparent`` header, one started over AMQP with one, and one whose
shipping step times out (its participant stopped), so that its deadline fires in its trace.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from orchestrator.core.engine import saga_id_for
from tests.integration.conftest import Bench, unique

pytestmark = pytest.mark.integration

FAST = "tests.integration.workflows"  # one-second step deadlines, on a clock the test holds
order_ids = unique("traced")


@dataclass
class Span:
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    attributes: dict[str, Any]


@dataclass
class Receiver:
    """An OTLP/HTTP trace receiver (POST /v1/traces, protobuf) on a free loopback port."""

    spans: list[Span] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def take(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        taken = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    attributes = {a.key: _value(a.value) for a in s.attributes}
                    taken.append(
                        Span(
                            resource.get("service.name", ""),
                            s.trace_id.hex(),
                            s.span_id.hex(),
                            s.parent_span_id.hex(),
                            s.name,
                            attributes,
                        )
                    )
        with self.lock:
            self.spans.extend(taken)

    def by_trace(self) -> dict[str, list[Span]]:
        with self.lock:
            traces: dict[str, list[Span]] = defaultdict(list)
            for span in self.spans:
                traces[span.trace_id].append(span)
            return traces


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                self.send_response(404)
                self.end_headers()
                return
            found.take(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    found.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()


def saga_trace(traces: dict[str, list[Span]], saga_id: str) -> list[Span]:
    """The one trace of a saga: every span naming it is in the same trace."""
    ids = {
        s.trace_id
        for spans in traces.values()
        for s in spans
        if s.attributes.get("orchestrator.saga.id") == saga_id
    }
    assert len(ids) == 1, f"saga {saga_id} is in {len(ids)} traces: {ids}"
    return traces[ids.pop()]


def check_chain(spans: list[Span], saga_id: str, commands: list[str], external_parent: str = "") -> None:
    """The parent-child chain of one saga's trace: start -> decide -> publish -> handle (the
    participant) -> decide (its reply) -> publish ..., every parent there but the root's."""
    by_id = {s.span_id: s for s in spans}
    roots = [s for s in spans if s.parent_id not in by_id]
    assert len(roots) == 1, f"roots: {[(r.service, r.name) for r in roots]}"
    assert roots[0].parent_id == external_parent
    assert {s.service for s in spans} >= {"orchestrator", "inventory", "payment"}

    def parent(span: Span) -> Span:
        return by_id[span.parent_id]

    for command in commands:
        published = [s for s in spans if s.name == f"publish {command}"]
        assert published, f"no publish {command} span in {sorted({s.name for s in spans})}"
        for span in published:
            assert span.service == "orchestrator"
            assert parent(span).name.startswith("decide ")
            assert span.attributes["orchestrator.saga.id"] == saga_id
            assert span.attributes["messaging.message.id"]
        handled = [s for s in spans if s.name == f"handle {command}"]
        assert handled, f"no participant's handle {command} span"
        service = command.split(".")[0]
        for span in handled:
            assert span.service == service
            assert parent(span).name == f"publish {command}"
            assert span.attributes["orchestrator.saga.id"] == saga_id
            assert span.attributes["orchestrator.workflow"] == "order"
            assert span.attributes["messaging.message.id"] == parent(span).attributes["messaging.message.id"]
        # the reply is decided in the same trace, under the handle span that published it (a
        # command re-sent by a retry is answered again, and that reply is a duplicate: not decided)
        assert any(
            c.name.startswith("decide ") and parent(c) in handled for c in spans if c.parent_id in by_id
        )
    for span in spans:
        if span.name.startswith("decide "):
            assert span.service == "orchestrator"
            assert span.attributes["orchestrator.saga.id"] == saga_id
            assert span.attributes["orchestrator.workflow"] == "order"
            assert span.attributes["messaging.message.id"]
            assert span.attributes["orchestrator.state.after"]
    commits = [s for s in spans if s.name == "commit"]
    assert commits and all(parent(c).name.startswith("decide ") for c in commits)


async def wait_for_spans(
    receiver: Receiver, saga_ids: list[str], timeout: float = 15
) -> dict[str, list[Span]]:
    deadline = time.monotonic() + timeout
    while True:
        traces = receiver.by_trace()
        named = {s.attributes.get("orchestrator.saga.id") for t in traces.values() for s in t}
        if set(saga_ids) <= named or time.monotonic() > deadline:
            return traces
        await asyncio.sleep(0.2)


def exporting_to(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every process this test starts exports its spans to ``receiver``, quickly."""
    for name, value in {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)


async def test_a_saga_is_one_trace_across_the_orchestrator_and_the_participants(
    bench: Bench, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporting_to(receiver, monkeypatch)
    orchestrator = await bench.serve(FAST, hold_clock=True)
    inventory = await bench.start_participant("inventory")
    payment = await bench.start_participant("payment", "--decline-over", "50000")
    shipping = await bench.start_participant("shipping")

    completed, compensated, over_rest, over_amqp, timed_out = (order_ids() for _ in range(5))
    await bench.place_order(completed)
    await bench.place_order(compensated, amount_cents=90000)
    rest_trace, rest_parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with bench.api() as api:
        answer = await api.post(
            "/sagas",
            json={
                "workflow": "order",
                "key": over_rest,
                "data": {
                    "customer_id": "c-1",
                    "lines": [{"sku": "sku-1", "quantity": 1}],
                    "amount_cents": 1000,
                },
            },
            headers={"traceparent": f"00-{rest_trace}-{rest_parent}-01", "tracestate": "vendor=1"},
        )
        assert answer.status_code == 201, answer.text
    amqp_trace, amqp_parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    await bench.publish(
        "orders.OrderPlaced",
        {
            "order_id": over_amqp,
            "customer_id": "c-1",
            "lines": [{"sku": "sku-1", "quantity": 1}],
            "amount_cents": 1000,
        },
        headers={"traceparent": f"00-{amqp_trace}-{amqp_parent}-01"},
    )
    sagas = await bench.finished("order", [completed, compensated, over_rest, over_amqp], timeout=30)
    assert sagas[completed].status == "completed" and sagas[compensated].status == "compensated"

    # shipping away (its spans flushed as it stops): the next order's ship step times out
    assert shipping.stop() == 0
    await bench.place_order(timed_out)
    for _ in range(200):
        saga = await bench.saga("order", timed_out)
        if saga is not None and saga.state == "ship":
            break
        await asyncio.sleep(0.05)
    await orchestrator.advance(1.5)  # past the ship step's deadline
    late = await bench.finished("order", [timed_out], timeout=30)
    assert late[timed_out].status == "compensated"
    await orchestrator.stop()  # as SIGTERM: each flushes what it holds
    for process in (inventory, payment):
        assert process.stop() == 0, process.output()[-2000:]

    ids = {
        key: saga_id_for("order", key) for key in (completed, compensated, over_rest, over_amqp, timed_out)
    }
    traces = await wait_for_spans(receiver, list(ids.values()))

    shipped = ["inventory.ReserveStock", "payment.ChargePayment", "shipping.ShipOrder"]
    check_chain(saga_trace(traces, ids[completed]), ids[completed], shipped)
    assert {s.service for s in saga_trace(traces, ids[completed])} == {
        "orchestrator",
        "inventory",
        "payment",
        "shipping",
    }
    # the compensation: the declined payment's reply decided, the stock released, in one trace
    declined = saga_trace(traces, ids[compensated])
    check_chain(
        declined,
        ids[compensated],
        ["inventory.ReserveStock", "payment.ChargePayment", "inventory.ReleaseStock"],
    )
    assert any(s.attributes.get("orchestrator.state.after") == "compensated" for s in declined)

    # started over REST with a traceparent: the saga is that trace, under the request's span
    rest = saga_trace(traces, ids[over_rest])
    assert rest[0].trace_id == rest_trace
    check_chain(rest, ids[over_rest], shipped, external_parent=rest_parent)
    request = next(s for s in rest if s.name == "POST /sagas")
    assert request.parent_id == rest_parent and request.service == "orchestrator"

    # started over AMQP with a traceparent: the saga is that trace, its first decide under it
    amqp = saga_trace(traces, ids[over_amqp])
    assert amqp[0].trace_id == amqp_trace
    check_chain(amqp, ids[over_amqp], shipped, external_parent=amqp_parent)

    # the deadline fired in the saga's trace, and the compensation it started continued it
    late_spans = saga_trace(traces, ids[timed_out])
    check_chain(
        late_spans,
        ids[timed_out],
        [
            "inventory.ReserveStock",
            "payment.ChargePayment",
            "payment.RefundPayment",
            "inventory.ReleaseStock",
        ],
    )
    by_id = {s.span_id: s for s in late_spans}
    fired = [s for s in late_spans if s.name == "fire deadline"]
    assert len(fired) == 1
    assert by_id[fired[0].parent_id].name.startswith("decide ")  # the decision that set it
    assert any(
        s.name == "decide saga.DeadlineExpired" and s.parent_id == fired[0].span_id for s in late_spans
    )
    assert any(s.name == "publish shipping.ShipOrder" for s in late_spans)


async def test_a_child_saga_continues_its_parents_trace(
    bench: Bench, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 28, item 2: the child's start is published under the parent's decision, and the child
    is decided in the same trace; its outcome is decided in the parent's, under the child's."""
    exporting_to(receiver, monkeypatch)
    orchestrator = await bench.serve("orchestrator.examples.shop")
    participants = [await bench.start_participant(s) for s in ("inventory", "payment", "shipping", "billing")]
    key = order_ids()
    trace_id, parent_span = "5bf92f3577b34da6a3ce929d0e0e4737", "10f067aa0ba902b8"
    await bench.publish(
        "shop.OrderPlaced",
        {
            "order_id": key,
            "customer_id": "c-1",
            "lines": [{"sku": "sku-1", "quantity": 1}],
            "amount_cents": 100,
        },
        headers={"traceparent": f"00-{trace_id}-{parent_span}-01"},
    )
    assert (await bench.finished("shop_order", [key], timeout=30))[key].status == "completed"
    await orchestrator.stop()
    for process in participants:
        assert process.stop() == 0, process.output()[-2000:]

    parent, child = saga_id_for("shop_order", key), saga_id_for("fulfilment", key)
    traces = await wait_for_spans(receiver, [parent, child])
    spans = saga_trace(traces, parent)
    assert saga_trace(traces, child) is spans and spans[0].trace_id == trace_id
    by_id = {s.span_id: s for s in spans}
    started = next(
        s for s in spans if s.name.startswith("decide ") and s.attributes["orchestrator.saga.id"] == child
    )
    published = by_id[started.parent_id]
    assert published.name == "publish warehouse.FulfilmentRequested"
    assert published.attributes["orchestrator.saga.id"] == parent
    told = next(s for s in spans if s.name == "decide saga.ChildCompleted")
    assert told.attributes["orchestrator.saga.id"] == parent
    assert by_id[told.parent_id].attributes["orchestrator.saga.id"] == child
