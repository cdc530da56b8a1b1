"""Seller: always signs, and voids its documents when the escrow unwinds.

Table (schema ``seller``): ``documents``, one row per signature, voided or not. The seller has no
failure reply in the contract, so ``--fail-rate`` has nothing to inject here.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.examples.contracts import (
    DocumentsVoided,
    RequestSellerSignature,
    SellerSigned,
    VoidDocuments,
)
from orchestrator.participant import Context, Participant
from participants.common import Options, create_tables_of

SERVICE = "seller"

TABLES = """
CREATE TABLE IF NOT EXISTS seller.documents (
    id bigserial PRIMARY KEY,
    escrow_id text NOT NULL,
    signed_at timestamptz NOT NULL DEFAULT now(),
    voided_at timestamptz);
"""


async def create_tables(connection: AsyncConnection) -> None:
    await create_tables_of(connection, TABLES)


def build(options: Options) -> Participant:
    seller = Participant(SERVICE)
    seller.setup(create_tables)

    @seller.handles(RequestSellerSignature)
    async def sign(command: RequestSellerSignature, context: Context) -> SellerSigned:
        await context.connection.execute(
            text("INSERT INTO seller.documents (escrow_id) VALUES (:escrow)"), {"escrow": command.escrow_id}
        )
        return SellerSigned(command.escrow_id)

    @seller.handles(VoidDocuments)
    async def void(command: VoidDocuments, context: Context) -> DocumentsVoided:
        await context.connection.execute(
            text(
                "UPDATE seller.documents SET voided_at = now()"
                " WHERE escrow_id = :escrow AND voided_at IS NULL"
            ),
            {"escrow": command.escrow_id},
        )
        return DocumentsVoided(command.escrow_id)

    return seller
