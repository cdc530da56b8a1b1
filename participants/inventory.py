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
        skus = sorted(wanted)
        # One statement for every SKU: created on first sight, locked in SKU order (so that two
        # orders locking the same SKUs never wait for each other in a circle), read as locked (a
        # row another order created meanwhile included, which a snapshot would miss).
        locked = await db.execute(
            text(
                "INSERT INTO inventory.stock AS s (sku, on_hand)"
                " SELECT sku, :n FROM unnest(CAST(:skus AS text[])) WITH ORDINALITY AS w(sku, i) ORDER BY i"
                " ON CONFLICT (sku) DO UPDATE SET on_hand = s.on_hand RETURNING sku, on_hand"
            ),
            {"skus": skus, "n": INITIAL_STOCK},
        )
        on_hand: dict[str, int] = {sku: n for sku, n in locked.all()}
        for sku in skus:
            if on_hand[sku] < wanted[sku]:
                return OutOfStock(command.order_id, sku)  # nothing written yet for any SKU
        await _move(context, command.order_id, {sku: -wanted[sku] for sku in skus}, "reserve")
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
                "SELECT h.sku, h.units FROM (SELECT sku, -sum(delta) AS units FROM inventory.stock_moves"
                " WHERE order_id = :order GROUP BY sku) AS h JOIN inventory.stock AS s USING (sku)"
                " WHERE h.units > 0 ORDER BY h.sku FOR UPDATE OF s"
            ),
            {"order": command.order_id},
        )
        units = {sku: int(n) for sku, n in held.all()}
        if units:
            await _move(context, command.order_id, units, "release")
        return StockReleased(command.order_id)

    return inventory


async def _move(context: Context, order_id: str, deltas: dict[str, int], kind: str) -> None:
    """Every SKU's change of stock and its line in the ledger, in one statement (the rows are
    locked already)."""
    await context.connection.execute(
        text(
            "WITH m AS (SELECT * FROM unnest(CAST(:skus AS text[]), CAST(:deltas AS bigint[]))"
            " AS m(sku, delta)), moved AS (UPDATE inventory.stock AS s SET on_hand = s.on_hand + m.delta"
            " FROM m WHERE s.sku = m.sku)"
            " INSERT INTO inventory.stock_moves (order_id, sku, delta, kind, message_id)"
            " SELECT :order, sku, delta, :kind, :message FROM m"
        ),
        {
            "skus": list(deltas),
            "deltas": list(deltas.values()),
            "order": order_id,
            "kind": kind,
            "message": context.message_id,
        },
    )
