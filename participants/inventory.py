"""Inventory: reserves the stock of an order and releases it when a later step fails.

Tables (schema ``inventory``): ``stock`` (units on hand per SKU) and ``stock_moves``, the ledger
every change of ``stock`` is written to, which is what the exactly-once tests count: what an order
holds is minus the sum of its moves, so a release gives back exactly what is still held. A SKU
never seen before starts with ``INITIAL_STOCK`` units, so the demo needs no seeding; a line asking
for more than is on hand is ``OutOfStock``, as is one of ``--out-of-stock``.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.examples.contracts import (
    OutOfStock,
    ReleaseStock,
    ReserveStock,
    StockReleased,
    StockReserved,
)
from orchestrator.participant import Context, Participant
from participants.common import Options, create_tables_of, derived_id, injected_failure

SERVICE = "inventory"
INITIAL_STOCK = 1_000_000

TABLES = """
CREATE TABLE IF NOT EXISTS inventory.stock (
    sku text PRIMARY KEY,
    on_hand bigint NOT NULL CHECK (on_hand >= 0));
CREATE TABLE IF NOT EXISTS inventory.stock_moves (
    id bigserial PRIMARY KEY,
    order_id text NOT NULL,
    sku text NOT NULL,
    delta bigint NOT NULL,
    kind text NOT NULL CHECK (kind IN ('reserve', 'release')),
    message_id text NOT NULL,
    moved_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX IF NOT EXISTS stock_moves_order ON inventory.stock_moves (order_id);
"""


async def create_tables(connection: AsyncConnection) -> None:
    await create_tables_of(connection, TABLES)


def build(options: Options) -> Participant:
    inventory = Participant(SERVICE)
    inventory.setup(create_tables)

    @inventory.handles(ReserveStock)
    async def reserve(command: ReserveStock, context: Context) -> StockReserved | OutOfStock:
        db = context.connection
        wanted: dict[str, int] = {}
        for line in command.lines:
            wanted[line.sku] = wanted.get(line.sku, 0) + line.quantity
        for sku in sorted(wanted):
            if sku in options.out_of_stock:
                return OutOfStock(command.order_id, sku)
        if injected_failure(SERVICE, command.order_id, options.fail_rate):
            return OutOfStock(command.order_id, command.lines[0].sku if command.lines else "")
        # In SKU order, so that two orders locking the same SKUs never wait for each other in a circle.
        for sku in sorted(wanted):
            await db.execute(
                text("INSERT INTO inventory.stock (sku, on_hand) VALUES (:sku, :n) ON CONFLICT DO NOTHING"),
                {"sku": sku, "n": INITIAL_STOCK},
            )
            on_hand = (
                await db.execute(
                    text("SELECT on_hand FROM inventory.stock WHERE sku = :sku FOR UPDATE"), {"sku": sku}
                )
            ).scalar_one()
            if on_hand < wanted[sku]:
                return OutOfStock(command.order_id, sku)  # nothing written yet for any SKU
        for sku in sorted(wanted):
            await _move(context, command.order_id, sku, -wanted[sku], "reserve")
        return StockReserved(command.order_id, derived_id("reservation", command.order_id))

    @inventory.handles(ReleaseStock)
    async def release(command: ReleaseStock, context: Context) -> StockReleased:
        # A compensation must always succeed: an order with nothing reserved has nothing to release.
        db = context.connection
        # Two releases of one order (two commands, by design or by an operator) take turns here,
        # so the second finds nothing held rather than both giving the units back.
        await db.execute(
            text("SELECT pg_advisory_xact_lock(hashtext('inventory.stock_moves'), hashtext(:order))"),
            {"order": command.order_id},
        )
        held = await db.execute(
            text(
                "SELECT sku, -sum(delta) AS units FROM inventory.stock_moves"
                " WHERE order_id = :order GROUP BY sku ORDER BY sku"
            ),
            {"order": command.order_id},
        )
        for sku, units in held.all():
            if units > 0:
                await _move(context, command.order_id, sku, int(units), "release")
        return StockReleased(command.order_id)

    return inventory


async def _move(context: Context, order_id: str, sku: str, delta: int, kind: str) -> None:
    await context.connection.execute(
        text("UPDATE inventory.stock SET on_hand = on_hand + :delta WHERE sku = :sku"),
        {"delta": delta, "sku": sku},
    )
    await context.connection.execute(
        text(
            "INSERT INTO inventory.stock_moves (order_id, sku, delta, kind, message_id)"
            " VALUES (:order, :sku, :delta, :kind, :message)"
        ),
        {"order": order_id, "sku": sku, "delta": delta, "kind": kind, "message": context.message_id},
    )
