"""The order saga written with DBOS, a durable-workflow library a user might pick instead of us.

``python -m bench.peer_dbos --sagas N --namespace NS [--amqp-url URL] [--database-url URL]``

A peer, measured in the same run as the orchestrator so that the ratio between the two is a
measurement, not a figure quoted from somewhere else (docs/benchmark.md, "The peer (DBOS)"). It
runs against the same RabbitMQ and the same participants (``bench.responder``, started by the
caller in namespace NS) and on the same PostgreSQL server, in a database of its own (DBOS's
system database; created by DBOS when missing, emptied here at start).

Each saga is one DBOS workflow doing what a saga step must: for each of reserve, charge and ship,
a DBOS step publishes the command to ``{ns}.commands`` (persistent, confirmed, with the
properties the orchestrator sends: type, a ``message_id`` derived from the workflow and the
command so that a step run again sends the same one, ``correlation_id`` = the workflow id,
``x-saga-id``/``x-workflow``), and DBOS records the step's output; then the workflow waits for
the reply with ``DBOS.recv`` on the service's topic, with a timeout. The replies come from a
queue bound to ``{ns}.events``, whose consumer hands each one to its workflow with ``DBOS.send``
(the reply's ``message_id`` as the idempotency key, so a redelivered reply is not taken twice)
before it acks. A reply other than the success, or none in time, undoes the steps done, newest
first, as the orchestrator's order saga does. Full durability as DBOS ships it: nothing is tuned
but its log level.

N workflows are started in one burst; the last line printed is the JSON the benchmark reads.
The reply queue is deleted at the end; the namespace's other queues and exchanges are the
participants' too, and the caller deletes them once those have stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aio_pika
import aio_pika.abc
import orjson
import sqlalchemy as sa
from dbos import DBOS, DBOSConfig, SetWorkflowID

from bench.responder import declare_services
from orchestrator.examples.contracts import (
    ChargePayment,
    OrderShipped,
    PaymentCharged,
    RefundPayment,
    ReleaseStock,
    ReserveStock,
    ShipOrder,
    StockReserved,
)
from orchestrator.settings import DEFAULT_AMQP_URL

__all__ = ["DEFAULT_DATABASE", "main"]

DEFAULT_DATABASE = "postgresql://postgres@127.0.0.1:5432/orchestrator_bench_dbos"
WORKFLOW = "peer_dbos_order"
STEPS = 3
#: the peer's own queue on ``{ns}.events``: the one thing in the namespace it alone uses
REPLY_QUEUE = "peer-dbos.replies"


@dataclass(frozen=True)
class Step:
    command: str
    done: str
    compensation: str | None  # the command that undoes it, None for the last step


ORDER_STEPS = (
    Step(ReserveStock.TYPE, StockReserved.TYPE, ReleaseStock.TYPE),
    Step(ChargePayment.TYPE, PaymentCharged.TYPE, RefundPayment.TYPE),
    Step(ShipOrder.TYPE, OrderShipped.TYPE, None),
)


class Wire:
    """What the workflow's steps publish through: module state, because a DBOS step's arguments
    are the workflow's data and an AMQP channel is not."""

    commands: aio_pika.abc.AbstractExchange | None = None
    step_timeout: float = 120.0


def service_of(message_type: str) -> str:
    """The topic a reply is sent on: the service that answers. A saga waits for one service at a
    time, so the service names the step it waits in."""
    return message_type.split(".", 1)[0]


#: the services the saga commands, whose queues it declares
PEER_SERVICES = tuple(service_of(step.command) for step in ORDER_STEPS)


def command_body(command: str, order: dict[str, Any]) -> dict[str, Any]:
    """The command's JSON body, as the orchestrator's order saga builds it from ``OrderPlaced``."""
    if command in (ReserveStock.TYPE, ShipOrder.TYPE):
        return {"order_id": order["order_id"], "lines": order["lines"]}
    if command == ChargePayment.TYPE:
        return {
            "order_id": order["order_id"],
            "customer_id": order["customer_id"],
            "amount_cents": order["amount_cents"],
        }
    return {"order_id": order["order_id"]}


@DBOS.step()
async def send_command(workflow_id: str, command: str, body: dict[str, Any]) -> str:
    """Publish one command and return once the broker confirmed it; DBOS records the step's end.
    The ``message_id`` is derived, not drawn, so that a step run again after a crash sends a
    command the participant recognises as the same."""
    assert Wire.commands is not None
    message_id = str(uuid.uuid5(uuid.NAMESPACE_OID, f"{workflow_id}:{command}"))
    message = aio_pika.Message(
        orjson.dumps(body),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        type=command,
        message_id=message_id,
        correlation_id=workflow_id,
        headers={"x-saga-id": workflow_id, "x-workflow": WORKFLOW},
    )
    await Wire.commands.publish(message, routing_key=command, mandatory=True)
    return message_id


async def command_and_reply(workflow_id: str, command: str, body: dict[str, Any]) -> str | None:
    """One saga step: the command out, the reply's type in (None when none came in time)."""
    await send_command(workflow_id, command, body)
    reply = await DBOS.recv_async(topic=service_of(command), timeout_seconds=Wire.step_timeout)
    return None if reply is None else str(reply["type"])


@DBOS.workflow(name=WORKFLOW)
async def order_saga(order: dict[str, Any]) -> str:
    """Reserve, charge, ship; on a failure or a silence, undo what was done, newest first."""
    workflow_id = DBOS.workflow_id
    assert workflow_id is not None
    undo: list[str] = []
    for step in ORDER_STEPS:
        if await command_and_reply(workflow_id, step.command, command_body(step.command, order)) != step.done:
            for compensation in reversed(undo):
                await command_and_reply(workflow_id, compensation, command_body(compensation, order))
            return "compensated"
        if step.compensation is not None:
            undo.append(step.compensation)
    return "completed"


class Replies:
    """The consumer of ``{ns}.events`` that hands each reply to the workflow it answers."""

    def __init__(self) -> None:
        self.handed = 0
        self.refused = 0

    async def on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        workflow_id, type_ = message.correlation_id, message.type
        if not workflow_id or not type_ or not message.message_id:
            await message.reject(requeue=False)
            self.refused += 1
            return
        try:
            body = orjson.loads(message.body)
            await DBOS.send_async(
                workflow_id,
                {"type": type_, "body": body},
                topic=service_of(type_),
                idempotency_key=message.message_id,
            )
        except Exception as error:  # not one of ours, or unreadable: nobody else would take it either
            print(f"peer: reply {type_} for {workflow_id} refused: {error!r}", file=sys.stderr, flush=True)
            await message.reject(requeue=False)
            self.refused += 1
            return
        await message.ack()
        self.handed += 1


def reset(database_url: str) -> None:
    """Empty DBOS's tables when the database exists (DBOS creates and migrates it at launch when
    it does not): a run must not recover the workflows an interrupted earlier one left behind."""
    url = sa.make_url(database_url).set(drivername="postgresql+psycopg")
    server = sa.create_engine(url.set(database="postgres"))
    try:
        with server.connect() as connection:
            exists = connection.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": url.database}
            ).scalar()
    finally:
        server.dispose()
    if exists:
        DBOS.reset_system_database(system_database_url=database_url, truncate=True)


async def declare(
    consume: aio_pika.abc.AbstractChannel, publish: aio_pika.abc.AbstractChannel, namespace: str
) -> tuple[aio_pika.abc.AbstractExchange, aio_pika.abc.AbstractQueue]:
    """The topology the peer uses: the participants' side as bench/responder.py declares it (the
    services' queues too, so that a command published before they consume is kept, not
    returned), and the peer's own reply queue on ``{ns}.events``."""
    await declare_services(consume, namespace, PEER_SERVICES)
    commands = await publish.declare_exchange(f"{namespace}.commands", "topic", durable=True)
    events = await consume.declare_exchange(f"{namespace}.events", "topic", durable=True)
    replies = await consume.declare_queue(f"{namespace}.{REPLY_QUEUE}", durable=True)
    await replies.bind(events, "#")
    return commands, replies


async def burst(sagas: int, run: str, timeout: float) -> tuple[float, dict[str, int]]:
    """Start every workflow at once and wait for them all, ``timeout`` at most: the seconds from
    the first start to the last end, and how many ended which way."""
    outcomes: dict[str, int] = {}

    async def one(index: int) -> None:
        order_id = f"{run}-{index}"
        order = {
            "order_id": order_id,
            "customer_id": "c-1",
            "lines": [{"sku": "sku-1", "quantity": 1}],
            "amount_cents": 1000,
        }
        with SetWorkflowID(f"order-{order_id}"):
            handle = await DBOS.start_workflow_async(order_saga, order)
        try:
            outcome = await handle.get_result()
        except Exception as error:
            outcome = f"failed: {type(error).__name__}"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    began = time.monotonic()
    tasks = [asyncio.create_task(one(i)) for i in range(sagas)]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    seconds = time.monotonic() - began
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
        outcomes["unfinished"] = len(pending)
    for task in done:
        if task.exception() is not None:  # the start itself failed
            key = f"not started: {type(task.exception()).__name__}"
            outcomes[key] = outcomes.get(key, 0) + 1
    return seconds, outcomes


async def run(args: argparse.Namespace) -> dict[str, Any]:
    reset(args.database_url)
    config: DBOSConfig = {
        "name": "orchestrator-bench-peer",
        "system_database_url": args.database_url,
        "log_level": "WARNING",  # a line per launch and recovery, not per workflow: nothing on the path
    }
    DBOS(config=config)
    DBOS.launch()
    Wire.step_timeout = args.step_timeout
    replies = Replies()
    # Two connections, as the orchestrator and the responder have: a publisher held back by flow
    # control must not hold back deliveries.
    consume = await aio_pika.connect(args.amqp_url, client_properties={"connection_name": "bench-peer"})
    publish = await aio_pika.connect(args.amqp_url, client_properties={"connection_name": "bench-peer-out"})
    queue: aio_pika.abc.AbstractQueue | None = None
    try:
        channel = await consume.channel()
        await channel.set_qos(prefetch_count=args.prefetch)
        # a command no queue takes fails its step, as the orchestrator's relay refuses it
        publish_channel = await publish.channel(publisher_confirms=True, on_return_raises=True)
        Wire.commands, queue = await declare(channel, publish_channel, args.namespace)
        tag = await queue.consume(replies.on_reply)
        print("peer ready", file=sys.stderr, flush=True)
        run_id = uuid.uuid4().hex[:8]
        cpu_before = time.process_time()  # every thread's: DBOS does its database work on threads
        seconds, outcomes = await burst(args.sagas, run_id, args.timeout)
        burst_cpu = time.process_time() - cpu_before
        await queue.cancel(tag)
    finally:
        if queue is not None:
            with contextlib.suppress(Exception):
                await queue.delete(if_unused=False, if_empty=False)
        await consume.close()
        await publish.close()
        DBOS.destroy()
    completed = outcomes.get("completed", 0)
    return {
        "peer": "dbos",
        "dbos_version": importlib.metadata.version("dbos"),
        "sagas": args.sagas,
        "steps": STEPS,
        "seconds": round(seconds, 3),
        "sagas_per_s": round(completed / seconds, 1) if seconds else None,
        "steps_per_s": round(completed * STEPS / seconds, 1) if seconds else None,
        "completed": completed,
        "outcomes": outcomes,
        # the burst's alone, as the orchestrator's is read: without the start (imports, DBOS's
        # launch and migrations), which the whole process's CPU has
        "burst_cpu_s": round(burst_cpu, 2),
        "replies_handed": replies.handed,
        "replies_refused": replies.refused,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sagas", type=int, required=True)
    parser.add_argument("--namespace", required=True, help="the participants' namespace (bench.responder)")
    parser.add_argument("--amqp-url", default=os.environ.get("ORCHESTRATOR_AMQP_URL", DEFAULT_AMQP_URL))
    parser.add_argument(
        "--database-url",
        default=os.environ.get("PEER_DATABASE_URL", DEFAULT_DATABASE),
        help="DBOS's system database, of its own: emptied at start (PEER_DATABASE_URL)",
    )
    parser.add_argument(
        "--step-timeout", type=float, default=120.0, help="seconds a step waits for its reply"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds the burst may take in all")
    parser.add_argument("--prefetch", type=int, default=1000, help="replies in hand at once")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(args))
    else:
        result = uvloop.run(run(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
