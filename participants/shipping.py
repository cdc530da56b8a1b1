"""Shipping: the last step of the order saga, so its failure exercises every compensation.

Table (schema ``shipping``): ``shipments``, one row per ShipOrder carried out (not unique per
order: the exactly-once tests count them).
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.examples.contracts import OrderShipped, ShipmentFailed, ShipOrder
from orchestrator.participant import Context, Participant
from participants.common import Options, create_tables_of, derived_id, injected_failure

SERVICE = "shipping"

TABLES = """
CREATE TABLE IF NOT EXISTS shipping.shipments (
    id bigserial PRIMARY KEY,
    order_id text NOT NULL,
    tracking_id text NOT NULL,
    units bigint NOT NULL,
    message_id text NOT NULL,
    shipped_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX IF NOT EXISTS shipments_order ON shipping.shipments (order_id);
"""


async def create_tables(connection: AsyncConnection) -> None:
    await create_tables_of(connection, TABLES)


def build(options: Options) -> Participant:
    shipping = Participant(SERVICE)
    shipping.setup(create_tables)

    @shipping.handles(ShipOrder)
    async def ship(command: ShipOrder, context: Context) -> OrderShipped | ShipmentFailed:
        if injected_failure(SERVICE, command.order_id, options.fail_rate):
            return ShipmentFailed(command.order_id, "injected failure (fail rate)")
        tracking_id = derived_id("tracking", command.order_id)
        await context.connection.execute(
            text(
                "INSERT INTO shipping.shipments (order_id, tracking_id, units, message_id)"
                " VALUES (:order, :tracking, :units, :message)"
            ),
            {
                "order": command.order_id,
                "tracking": tracking_id,
                "units": sum(line.quantity for line in command.lines),
                "message": context.message_id,
            },
        )
        return OrderShipped(command.order_id, tracking_id)

    return shipping
