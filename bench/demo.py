"""``make demo``: the orchestrator, ten participants and a mixed batch of orders, escrows, trips and
shop orders.

Starts every process the way a user would, places orders (some complete, some are declined,
some run out of stock), opens escrows (some close, some are refused) and books trips (a flight,
a room and a car at once: a parallel group; some book, some find the flight full or no room,
some are cancelled by their traveller mid-flight, and the other bookings are cancelled) and places
shop orders whose fulfilment is a child saga (some complete, some run out of stock and are
refunded, some are refused an invoice after their fulfilment completed, which is then compensated
again, and refunded) and opens escrows that hold their funds a few seconds (a wait; some are
cancelled by their buyer while held, and the funds go back), waits for every saga
to finish, prints the outcomes per status and exits 0 only when each saga reached the status it
should, each escrow's last reply (``bank.FundsReleased``, which nothing waits for, and
``seller.DocumentsVoided``, which ends a refused escrow) is in its journal, and the dead-letter
table has no row for the demo's namespace. It
runs in a namespace of its own and removes its queues afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aio_pika
import aio_pika.abc
import asyncpg
import orjson
from sqlalchemy import text

from orchestrator.adapters.amqp.broker import wait_for_consumers
from orchestrator.adapters.postgres.store import PostgresStore
from orchestrator.core.engine import saga_id_for
from orchestrator.entrypoints.settings import ConfigurationError, Settings
from participants.cli import DEFAULT_DATABASE_URL

PARTICIPANTS = {
    "inventory": ["--out-of-stock", "unobtainium"],
    "payment": ["--decline-over", "50000"],
    # a shipment takes a moment: the shop orders cancelled mid-fulfilment are cancelled while it runs
    "shipping": ["--delay", "0.2"],
    "buyer": ["--refuse-over", "1000000"],
    "seller": [],
    "bank": [],
    # the trip saga's, each with a delay of its own: the trip takes the longest, not their sum
    "flights": ["--sold-out", "Atlantis", "--delay", "0.3"],
    "hotels": ["--sold-out", "Venice", "--delay", "0.2"],
    "cars": ["--delay", "0.1"],
    # the shop order's last step, after its fulfilment (a child saga) completed
    "billing": ["--decline-over", "9000"],
}

#: the workflows the demo's orchestrator runs: the bundled ones and the trip
WORKFLOW_MODULES = (
    "orchestrator.examples,orchestrator.examples.travel,orchestrator.examples.shop,"
    "orchestrator.examples.held_escrow"
)
#: how long a held escrow holds its funds in the demo (``release_at``: the demo's start plus this)
HOLD_SECONDS = 4


#: a trip its traveller cancels while its bookings are in flight (a ``trips.TripCancelled``)
CANCELLED = "cancelled"


@dataclass(frozen=True)
class Case:
    workflow: str
    key: str
    kind: str
    expected: str  # the final status
    message_type: str
    body: dict[str, object]
    #: the reply to a command sent on entering the final state, which nothing waits for: it must
    #: be journaled on the saga (as ignored), never dead-lettered
    last_reply: str | None = None


def cases(run: str) -> list[Case]:
    made: list[Case] = []
    for i in range(40):
        kind, sku, amount, expected = "ok", "sku-1", 2_500, "completed"
        if i % 8 == 3:
            kind, amount, expected = "declined", 75_000, "compensated"
        elif i % 8 == 6:
            kind, sku, expected = "out of stock", "unobtainium", "compensated"
        key = f"order-{run}-{i}"
        body = {
            "order_id": key,
            "customer_id": f"c-{i}",
            "lines": [{"sku": sku, "quantity": 1}],
            "amount_cents": amount,
        }
        made.append(Case("order", key, kind, expected, "orders.OrderPlaced", body))
    for i in range(10):
        kind, amount, expected, last = "ok", 300_000, "completed", "bank.FundsReleased"
        if i % 5 == 4:
            kind, amount, expected, last = (
                "refused by buyer",
                2_000_000,
                "compensated",
                "seller.DocumentsVoided",
            )
        key = f"escrow-{run}-{i}"
        body = {"escrow_id": key, "buyer_id": f"b-{i}", "seller_id": f"s-{i}", "amount_cents": amount}
        made.append(Case("escrow", key, kind, expected, "escrow.EscrowOpened", body, last))
    for i in range(16):
        city, kind, expected = "Oslo", "ok", "completed"
        if i % 4 == 1:
            city, kind, expected = "Atlantis", "flight full", "compensated"
        elif i % 4 == 2:
            city, kind, expected = "Venice", "no room", "compensated"
        elif i % 4 == 3:
            kind, expected = CANCELLED, "compensated"
        key = f"trip-{run}-{i}"
        body = {"trip_id": key, "traveller": f"t-{i}", "city": city, "nights": 1 + i % 3}
        made.append(Case("trip", key, kind, expected, "trips.TripBooked", body))
    for i in range(16):
        kind, sku, amount, expected = "ok", "sku-1", 2_500, "completed"
        if i % 4 == 1:
            kind, sku, expected = "out of stock", "unobtainium", "compensated"
        elif i % 4 == 2:
            kind, amount, expected = "invoice refused", 12_000, "compensated"
        elif i % 4 == 3:  # its customer cancels it while its fulfilment (the child) is under way
            kind, expected = CANCELLED, "compensated"
        key = f"shop-{run}-{i}"
        body = {
            "order_id": key,
            "customer_id": f"c-{i}",
            "lines": [{"sku": sku, "quantity": 1}],
            "amount_cents": amount,
        }
        made.append(Case("shop_order", key, kind, expected, "shop.OrderPlaced", body))
    release_at = (datetime.now(UTC) + timedelta(seconds=HOLD_SECONDS)).replace(tzinfo=None).isoformat()
    for i in range(8):
        kind, expected = ("held, released", "completed") if i % 4 else (CANCELLED, "compensated")
        key = f"held-{run}-{i}"
        body = {
            "escrow_id": key,
            "buyer_id": f"hb-{i}",
            "seller_id": f"hs-{i}",
            "amount_cents": 100_000,
            "release_at": release_at,
        }
        made.append(Case("held_escrow", key, kind, expected, "escrow.HeldEscrowOpened", body))
    return made


async def wait_for_last_replies(store: PostgresStore, batch: list[Case], timeout: float) -> list[str]:
    """Wait until each saga's journal holds the reply nobody waits for that its last command
    gets; the ones still missing after ``timeout`` seconds, as ``key: type``."""
    missing = {c.key: c for c in batch if c.last_reply is not None}
    deadline = time.monotonic() + timeout
    while missing and time.monotonic() < deadline:
        for key, case in list(missing.items()):
            entries = await store.journal(saga_id_for(case.workflow, key))
            if any(e.message.type == case.last_reply for e in entries):
                del missing[key]
        if missing:
            await asyncio.sleep(0.2)
    return [f"{key}: {case.last_reply}" for key, case in missing.items()]


async def dead_letters_of(store: PostgresStore, namespace: str) -> list[tuple[str, str | None, str]]:
    """The rows of the dead-letter table for ``namespace`` (their exchange is ``{ns}.*``)."""
    query = text(
        "SELECT reason, message_type, detail FROM dead_letters"
        " WHERE starts_with(exchange, :prefix) ORDER BY id"
    )
    async with store.engine.connect() as connection:
        rows = await connection.execute(query, {"prefix": f"{namespace}."})
        return [(row.reason, row.message_type, row.detail) for row in rows]


#: the example participants' database unless PARTICIPANT_DATABASE_URL names another
PARTICIPANTS_DATABASE = DEFAULT_DATABASE_URL


async def effects_of(database_url: str, batch: list[Case], outcome: dict[str, str]) -> list[str]:
    """What the participants did, from their own tables, and what is wrong with it: each
    completed order charged, reserved and shipped once, each compensated one given back all it
    was charged and all the stock it held, and each escrow's funds where its outcome says."""
    orders = [c.key for c in batch if c.workflow in ("order", "shop_order")]
    escrows = [c.key for c in batch if c.workflow in ("escrow", "held_escrow")]
    trips = [c.key for c in batch if c.workflow == "trip"]
    connection = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        ledger = await connection.fetch(
            "SELECT order_id, kind, count(*) AS n, sum(amount_cents) AS cents FROM payment.ledger"
            " WHERE order_id = any($1) GROUP BY order_id, kind",
            orders,
        )
        held = dict(
            await connection.fetch(
                "SELECT order_id, -sum(delta) FROM inventory.stock_moves"
                " WHERE order_id = any($1) GROUP BY order_id",
                orders,
            )
        )
        shipped = dict(
            await connection.fetch(
                "SELECT order_id, count(*) FROM shipping.shipments"
                " WHERE order_id = any($1) GROUP BY order_id",
                orders,
            )
        )
        funds = await connection.fetch(
            "SELECT escrow_id, kind, count(*) AS n FROM bank.moves"
            " WHERE escrow_id = any($1) GROUP BY escrow_id, kind",
            escrows,
        )
        invoices = dict(
            await connection.fetch(
                "SELECT order_id, count(*) FROM billing.invoices WHERE order_id = any($1) GROUP BY order_id",
                orders,
            )
        )
        bookings = {
            (service, r["trip_id"], r["kind"]): r["n"]
            for service in ("flights", "hotels", "cars")
            for r in await connection.fetch(
                f"SELECT trip_id, kind, count(*) AS n FROM {service}.bookings"
                " WHERE trip_id = any($1) GROUP BY trip_id, kind",
                trips,
            )
        }
    finally:
        await connection.close()
    charged = {(r["order_id"], r["kind"]): (r["n"], r["cents"]) for r in ledger}
    moved = {(r["escrow_id"], r["kind"]): r["n"] for r in funds}
    problems = []
    for case in batch:
        completed = outcome.get(case.key, "").startswith("completed")
        if case.workflow == "order":
            charges, charged_cents = charged.get((case.key, "charge"), (0, 0))
            refunds, refunded_cents = charged.get((case.key, "refund"), (0, 0))
            effects = (charges, held.get(case.key, 0) > 0, shipped.get(case.key, 0))
            if completed and (effects != (1, True, 1) or refunds):
                problems.append(
                    f"{case.key} completed: {charges} charge(s), {shipped.get(case.key, 0)} shipment(s)"
                )
            if not completed and (charged_cents != refunded_cents or held.get(case.key, 0) or effects[2]):
                problems.append(f"{case.key} compensated but not given back")
        elif case.workflow == "shop_order":
            charges, charged_cents = charged.get((case.key, "charge"), (0, 0))
            refunds, refunded_cents = charged.get((case.key, "refund"), (0, 0))
            stock = held.get(case.key, 0)
            if completed and ((charges, refunds, invoices.get(case.key, 0)) != (1, 0, 1) or stock <= 0):
                problems.append(
                    f"{case.key} completed: {charges} charge(s), {invoices.get(case.key, 0)} invoices"
                )
            # the fulfilment (a child saga) gave its stock back, and the charge was refunded, once
            if not completed and ((charges, refunds) != (1, 1) or charged_cents != refunded_cents or stock):
                problems.append(
                    f"{case.key} compensated: {charges} charge(s), {refunds} refund(s), stock {stock}"
                )
        elif case.workflow == "trip":
            for service in ("flights", "hotels", "cars"):
                booked = bookings.get((service, case.key, "book"), 0)
                cancelled = bookings.get((service, case.key, "cancel"), 0)
                if completed and (booked, cancelled) != (1, 0):
                    problems.append(
                        f"{case.key} booked: {service} {booked} booking(s), {cancelled} cancelled"
                    )
                if not completed and (booked > 1 or cancelled != booked):
                    problems.append(
                        f"{case.key} failed: {service} {booked} booking(s), {cancelled} cancelled"
                    )
        else:
            collected, back, released = (
                moved.get((case.key, kind), 0) for kind in ("collect", "return", "release")
            )
            if completed and (collected, back, released) != (1, 0, 1):
                problems.append(f"{case.key} closed: collected {collected}, released {released}")
            if not completed and collected != back:
                problems.append(f"{case.key} unwound: collected {collected}, returned {back}")
    charges_total = sum(n for (_, kind), (n, _) in charged.items() if kind == "charge")
    refunds_total = sum(n for (_, kind), (n, _) in charged.items() if kind == "refund")
    print(
        f"participants' tables: {charges_total} charges and {refunds_total} refunds (payment.ledger),"
        f" {sum(shipped.values())} shipments, {sum(1 for units in held.values() if units > 0)} orders"
        f" holding stock (inventory.stock_moves), {sum(moved.values())} bank moves,"
        f" {sum(n for (_, _, kind), n in bookings.items() if kind == 'book')} trip bookings of which"
        f" {sum(n for (_, _, kind), n in bookings.items() if kind == 'cancel')} cancelled;"
        f" {'every effect as it should be' if not problems else f'{len(problems)} wrong'}"
    )
    return problems


async def children_of_shop(store: PostgresStore, batch: list[Case], outcome: dict[str, str]) -> list[str]:
    """Each shop order's fulfilment, its child saga: completed where the order completed,
    compensated where it was (reopened after it completed, for a refused invoice)."""
    problems = []
    reopened = 0
    for case in (c for c in batch if c.workflow == "shop_order"):
        child = await store.get_saga(saga_id_for("fulfilment", case.key))
        deadline = time.monotonic() + 15  # a cancelled one may still undo a late reservation
        while child is not None and child.status not in ("completed", "compensated", "failed"):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
            child = await store.get_saga(child.id)
        expected = "completed" if outcome.get(case.key, "").startswith("completed") else "compensated"
        if child is None or child.status != expected:
            problems.append(
                f"{case.key}: its fulfilment is {child.status if child else 'missing'}, not {expected}"
            )
        elif case.kind == "invoice refused":
            entries = await store.journal(child.id)
            reopened += any(e.decision.get("outcome") == "reopened" for e in entries)
    shop = sum(c.workflow == "shop_order" for c in batch)
    print(
        f"child sagas: {shop - len(problems)} of {shop} shop orders' fulfilments ended as their order did;"
        f" {reopened} completed ones compensated again when their invoice was refused"
    )
    return problems


async def cancel_trips(
    store: PostgresStore, events: aio_pika.abc.AbstractExchange, trips: list[Case]
) -> None:
    """The travellers' cancellations, published as the booking site would (an id of its own, no
    correlation id) once each trip's saga exists and its bookings are in flight."""
    await cancel_when(store, events, trips, "trips.TripCancelled", "trip_id", None)


async def cancel_when(
    store: PostgresStore,
    events: aio_pika.abc.AbstractExchange,
    cases: list[Case],
    cancel_type: str,
    key_field: str,
    state: str | None,
) -> None:
    """Each case's cancel event, published as its site would (an id of its own, no correlation
    id) once its saga exists (and is in ``state``, where one is given)."""
    waiting = {c.key: c for c in cases}
    deadline = time.monotonic() + 30
    while waiting and time.monotonic() < deadline:
        for key, case in sorted(waiting.items()):
            saga = await store.get_saga(saga_id_for(case.workflow, key))
            if saga is not None and (state is None or saga.state == state):
                message = aio_pika.Message(
                    orjson.dumps({key_field: key}),
                    type=cancel_type,
                    message_id=str(uuid.uuid4()),
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                )
                await events.publish(message, routing_key=cancel_type)
                del waiting[key]
        await asyncio.sleep(0.02)


async def print_parallel_trip(store: PostgresStore, trips: list[Case]) -> None:
    """A booked trip's wall time beside the sum of its three bookings' latencies, from its
    journal: the start, and the entry that took each booking's reply."""
    if not trips:
        return
    entries = await store.journal(saga_id_for("trip", trips[0].key))
    start = entries[0].recorded_at
    replies = {"flights.FlightBooked": "flight", "hotels.RoomBooked": "room", "cars.CarRented": "car"}
    took = {
        replies[e.message.type]: (e.recorded_at - start).total_seconds()
        for e in entries
        if e.message.type in replies
    }
    if len(took) == len(replies):
        each = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in sorted(took.items()))
        print(
            f"a parallel trip ({trips[0].key}): booked in {max(took.values()):.2f}s wall time;"
            f" its bookings took {each}, {sum(took.values()):.2f}s together"
        )


def spawn(args: list[str], env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=out, stderr=subprocess.STDOUT)


async def demo() -> int:
    settings = Settings.from_env()
    namespace = f"demo-{uuid.uuid4().hex[:6]}"
    run = uuid.uuid4().hex[:6]
    # The REST API gets a token of the demo's own (unless one is set) and any free port, so the demo
    # runs beside an orchestrator already serving on 8000.
    token = os.environ.get("ORCHESTRATOR_API_TOKEN") or secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "ORCHESTRATOR_NAMESPACE": namespace,
        "ORCHESTRATOR_API_TOKEN": token,
        "PYTHONUNBUFFERED": "1",
        # ten services, each holding a database connection per command in hand: four each keep
        # the demo within PostgreSQL's default 100 connections, beside whatever else runs
        "PARTICIPANT_CONCURRENCY": os.environ.get("PARTICIPANT_CONCURRENCY", "4"),
    }
    logs = os.environ.get("DEMO_LOGS", f"/tmp/orchestrator-{namespace}")
    os.makedirs(logs, exist_ok=True)
    processes = [
        spawn(
            ["orchestrator", "run", "--port", "0", "--workflows", WORKFLOW_MODULES],
            env,
            f"{logs}/orchestrator.log",
        )
    ]
    processes += [
        spawn(["participants", name, *options], env, f"{logs}/{name}.log")
        for name, options in PARTICIPANTS.items()
    ]
    connection = await aio_pika.connect(settings.amqp_url)
    store = PostgresStore.from_url(settings.database_url, pool_size=2)
    try:
        channel = await connection.channel(publisher_confirms=True)
        queues = [f"{namespace}.orchestrator.events", *(f"{namespace}.{n}" for n in PARTICIPANTS)]
        try:
            await wait_for_consumers(connection, queues, timeout=60)
        except TimeoutError as error:
            raise SystemExit(f"demo: {error}") from None
        events = await channel.get_exchange(f"{namespace}.events")
        batch = cases(run)
        started = time.monotonic()
        for case in batch:
            message = aio_pika.Message(
                orjson.dumps(case.body),
                type=case.message_type,
                message_id=str(uuid.uuid4()),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await events.publish(message, routing_key=case.message_type)
        cancelled = [c for c in batch if c.kind == CANCELLED]
        await asyncio.gather(
            cancel_trips(store, events, [c for c in cancelled if c.workflow == "trip"]),
            # the buyers who change their minds while their funds are held (the wait)
            cancel_when(
                store,
                events,
                [c for c in cancelled if c.workflow == "held_escrow"],
                "escrow.EscrowCancelled",
                "escrow_id",
                "hold",
            ),
            # the customers who cancel while their order's fulfilment (a child saga) is under way
            cancel_when(
                store,
                events,
                [c for c in cancelled if c.workflow == "shop_order"],
                "shop.OrderCancelled",
                "order_id",
                "fulfil",
            ),
        )
        print(
            f"demo: placed {sum(c.workflow == 'order' for c in batch)} orders, opened "
            f"{sum(c.workflow == 'escrow' for c in batch)} escrows, booked"
            f" {sum(c.workflow == 'trip' for c in batch)} trips, placed"
            f" {sum(c.workflow == 'shop_order' for c in batch)} shop orders and opened"
            f" {sum(c.workflow == 'held_escrow' for c in batch)} escrows held {HOLD_SECONDS}s"
            f" (namespace {namespace}, logs in {logs})"
        )

        outcome: dict[str, str] = {}
        deadline = time.monotonic() + 120
        while len(outcome) < len(batch) and time.monotonic() < deadline:
            for case in batch:
                if case.key not in outcome:
                    saga = await store.get_saga(saga_id_for(case.workflow, case.key))
                    if saga is not None and saga.finished:
                        outcome[case.key] = f"{saga.status} ({saga.state})"
            await asyncio.sleep(0.2)
        elapsed = time.monotonic() - started

        table: Counter[tuple[str, str, str, str]] = Counter()
        wrong = 0
        for case in batch:
            got = outcome.get(case.key, "unfinished")
            table[(case.workflow, case.kind, case.expected, got)] += 1
            wrong += not got.startswith(case.expected)
        print()
        print(f"{'workflow':<11} {'case':<17} {'expected':<12} {'got':<28} {'sagas':>5}")
        print("-" * 77)
        for (workflow, kind, expected, got), count in sorted(table.items()):
            mark = "" if got.startswith(expected) else "   <-- wrong"
            print(f"{workflow:<11} {kind:<17} {expected:<12} {got:<28} {count:>5}{mark}")
        print("-" * 77)
        print(f"{len(batch) - wrong} of {len(batch)} sagas reached the status they should, in {elapsed:.1f}s")
        unanswered = await wait_for_last_replies(store, batch, timeout=30)
        await print_parallel_trip(store, [c for c in batch if c.workflow == "trip" and c.kind == "ok"])
        wrong_children = await children_of_shop(store, batch, outcome)  # waits for them first
        wrong_effects = await effects_of(
            os.environ.get("PARTICIPANT_DATABASE_URL") or PARTICIPANTS_DATABASE, batch, outcome
        )
        wrong_effects += wrong_children
        for problem in wrong_effects[:10]:
            print(f"demo: FAILED: {problem}")
        dead = await dead_letters_of(store, namespace)
        if unanswered:
            print(
                f"demo: FAILED: {len(unanswered)} last replies never journaled: {', '.join(unanswered[:5])}"
            )
        if dead:
            print(f"demo: FAILED: the dead-letter table has {len(dead)} rows for namespace {namespace}:")
            for reason, message_type, detail in dead[:10]:
                print(f"  {reason:<18} {message_type or '-':<28} {detail}")
        else:
            print(f"demo: the dead-letter table has no rows for namespace {namespace}")
        return 1 if wrong or dead or unanswered or wrong_effects else 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        await store.close()
        channel = await connection.channel()
        for name in ["orchestrator.events", "dead-letter", *PARTICIPANTS]:
            with contextlib.suppress(Exception):
                await channel.queue_delete(f"{namespace}.{name}")
        for name in ["events", "commands", "dead"]:
            with contextlib.suppress(Exception):
                await channel.exchange_delete(f"{namespace}.{name}")
        await connection.close()


def main() -> None:
    try:
        sys.exit(asyncio.run(demo()))
    except ConfigurationError as error:  # a bad setting: one line, as the command line says it
        print(f"demo: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
