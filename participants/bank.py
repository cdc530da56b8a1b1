"""Bank: collects the buyer's funds into escrow, then releases them to the seller or returns them.

Tables (schema ``bank``): ``accounts`` (a balance per account; one never seen starts with
``INITIAL_BALANCE`` cents) and ``moves``, one row per change of a balance, which is what the
exactly-once tests count: what an escrow holds is minus the sum of its moves.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.examples.contracts import (
    CollectFunds,
    FundsDeclined,
    FundsReceived,
    FundsReturned,
    ReleaseFunds,
    ReturnFunds,
)
from orchestrator.participant import Context, Participant, Reply
from participants.common import Options, create_tables_of, injected_failure

SERVICE = "bank"
INITIAL_BALANCE = 10**12

TABLES = """
CREATE TABLE IF NOT EXISTS bank.accounts (
    account_id text PRIMARY KEY,
    balance_cents bigint NOT NULL CHECK (balance_cents >= 0));
CREATE TABLE IF NOT EXISTS bank.moves (
    id bigserial PRIMARY KEY,
    escrow_id text NOT NULL,
    account_id text NOT NULL,
    delta_cents bigint NOT NULL,
    kind text NOT NULL CHECK (kind IN ('collect', 'return', 'release')),
    message_id text NOT NULL,
    moved_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX IF NOT EXISTS moves_escrow ON bank.moves (escrow_id);
"""


async def create_tables(connection: AsyncConnection) -> None:
    await create_tables_of(connection, TABLES)


def build(options: Options) -> Participant:
    bank = Participant(SERVICE)
    bank.setup(create_tables)

    @bank.handles(CollectFunds)
    async def collect(command: CollectFunds, context: Context) -> FundsReceived | FundsDeclined:
        if injected_failure(SERVICE, command.escrow_id, options.fail_rate):
            return FundsDeclined(command.escrow_id, "injected failure (fail rate)")
        await _open_account(context, command.buyer_id)
        balance = (
            await context.connection.execute(
                text("SELECT balance_cents FROM bank.accounts WHERE account_id = :id FOR UPDATE"),
                {"id": command.buyer_id},
            )
        ).scalar_one()
        if balance < command.amount_cents:
            return FundsDeclined(command.escrow_id, f"insufficient funds: {balance} cents")
        await _move(context, command.escrow_id, command.buyer_id, -command.amount_cents, "collect")
        return FundsReceived(command.escrow_id)

    @bank.handles(ReturnFunds)
    async def give_back(command: ReturnFunds, context: Context) -> FundsReturned:
        # A compensation must always succeed: an escrow with nothing held has nothing to return.
        held = await _held(context, command.escrow_id)
        if held is not None:
            buyer_id, amount = held
            await _move(context, command.escrow_id, buyer_id, amount, "return")
        return FundsReturned(command.escrow_id)

    @bank.handles(ReleaseFunds)
    async def pay_out(command: ReleaseFunds, context: Context) -> Reply:
        held = await _held(context, command.escrow_id)
        if held is not None:
            _, amount = held
            await _open_account(context, command.seller_id)
            await _move(context, command.escrow_id, command.seller_id, amount, "release")
        # The escrow sends ReleaseFunds as it closes and waits for nothing; the reply is for the record.
        return Reply("bank.FundsReleased", {"escrow_id": command.escrow_id})

    return bank


async def _open_account(context: Context, account_id: str) -> None:
    await context.connection.execute(
        text(
            "INSERT INTO bank.accounts (account_id, balance_cents) VALUES (:id, :balance)"
            " ON CONFLICT DO NOTHING"
        ),
        {"id": account_id, "balance": INITIAL_BALANCE},
    )


async def _held(context: Context, escrow_id: str) -> tuple[str, int] | None:
    """The buyer and the amount an escrow holds, None if it holds nothing; under a lock on the
    escrow, so that a return and a release of one escrow never both pay it out."""
    await context.connection.execute(
        text("SELECT pg_advisory_xact_lock(hashtext('bank.moves'), hashtext(:escrow))"), {"escrow": escrow_id}
    )
    row = (
        await context.connection.execute(
            text(
                "SELECT -sum(delta_cents) AS held,"
                " (array_agg(account_id ORDER BY id DESC) FILTER (WHERE kind = 'collect'))[1] AS buyer"
                " FROM bank.moves WHERE escrow_id = :escrow"
            ),
            {"escrow": escrow_id},
        )
    ).one()
    if row.held is None or row.held <= 0 or row.buyer is None:
        return None
    return str(row.buyer), int(row.held)


async def _move(context: Context, escrow_id: str, account_id: str, delta: int, kind: str) -> None:
    await context.connection.execute(
        text("UPDATE bank.accounts SET balance_cents = balance_cents + :delta WHERE account_id = :id"),
        {"delta": delta, "id": account_id},
    )
    await context.connection.execute(
        text(
            "INSERT INTO bank.moves (escrow_id, account_id, delta_cents, kind, message_id)"
            " VALUES (:escrow, :account, :delta, :kind, :message)"
        ),
        {
            "escrow": escrow_id,
            "account": account_id,
            "delta": delta,
            "kind": kind,
            "message": context.message_id,
        },
    )
