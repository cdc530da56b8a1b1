"""The participant kit's exactly-once processing against a real PostgreSQL, without a broker:
the inbox, concurrent duplicates, counted failures, deferrals, outages and restarts."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aio_pika
import orjson
import pytest
import pytest_asyncio
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from orchestrator import Command, Event
from orchestrator.adapters.amqp.broker import wait_for_consumers
from orchestrator.examples.contracts import (
    OutOfStock,
    ReleaseStock,
    ReserveStock,
    StockReleased,
    StockReserved,
)
from orchestrator.participant import (
    Context,
    Defer,
    InvalidCommand,
    Participant,
    Reply,
    Settings,
    Worker,
    reply_message_id,
)
from orchestrator.participant.processing import CommandProcessor, DeadLetter, TryAgain
from orchestrator.participant.worker import kit_engine
from participants import inventory
from participants.common import Options
from tests.integration.conftest import AMQP_URL, delete_namespace, empty_database


@dataclass(frozen=True)
class Debit(Command):
    TYPE = "wallet.Debit"
    account: str
    cents: int


@dataclass(frozen=True)
class Debited(Event):
    TYPE = "wallet.Debited"
    account: str
    balance: int


@dataclass
class Wallet:
    """A participant whose handler's behaviour a test steers, and which counts its calls."""

    participant: Participant
    calls: int = 0
    #: what the next calls do: "ok", "raise", "defer", "invalid", "slow"
    mode: str = "ok"


def wallet() -> Wallet:
    state = Wallet(Participant("wallet", schema="wallet_kit"))
    participant = state.participant

    @participant.setup
    async def tables(connection: AsyncConnection) -> None:
        await connection.execute(
            text(
                "CREATE TABLE IF NOT EXISTS wallet_kit.moves"
                " (id bigserial PRIMARY KEY, account text, cents int)"
            )
        )

    @participant.handles(Debit)
    async def debit(command: Debit, context: Context) -> Debited:
        state.calls += 1
        await context.connection.execute(
            text("INSERT INTO wallet_kit.moves (account, cents) VALUES (:a, :c)"),
            {"a": command.account, "c": -command.cents},
        )
        if state.mode == "slow":
            await asyncio.sleep(0.3)
        if state.mode == "raise":
            raise RuntimeError(f"boom on try {context.attempt}")
        if state.mode == "timeout":  # the handler's own network call, not its database
            raise TimeoutError("the card network did not answer")
        if state.mode == "defer":
            raise Defer("the ledger is closed for the night")
        if state.mode == "invalid":
            raise InvalidCommand("no such account")
        balance = (
            await context.connection.execute(
                text("SELECT sum(cents) FROM wallet_kit.moves WHERE account = :a"), {"a": command.account}
            )
        ).scalar_one()
        return Debited(command.account, int(balance))

    @participant.handles("wallet.Ping")
    async def ping(body: dict[str, Any], context: Context) -> Reply:
        return Reply("wallet.Pong", {"echo": body.get("n"), "attempt": context.attempt})

    return state


@pytest_asyncio.fixture
async def database() -> AsyncIterator[str]:
    async with empty_database("kit_test") as url:
        yield url


@pytest_asyncio.fixture
async def engine(database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database, pool_size=5)
    try:
        yield engine
    finally:
        await engine.dispose()


async def processor_for(state: Wallet, engine: AsyncEngine, **options: Any) -> CommandProcessor:
    processor = CommandProcessor(state.participant, engine, retry_backoff=0.01, **options)
    await processor.prepare()
    return processor


async def moves(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text("SELECT count(*) FROM wallet_kit.moves"))).scalar_one())


def debit(message_id: str, cents: int = 100) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "saga_id": "saga-1",
        "command_type": "wallet.Debit",
        "body": {"account": "a-1", "cents": cents},
        "headers": {"x-workflow": "checkout"},
    }


async def test_a_command_seen_before_returns_its_recorded_reply_and_does_nothing(engine: AsyncEngine) -> None:
    state = wallet()
    processor = await processor_for(state, engine)
    first = await processor.process(**debit("m-1"))
    second = await processor.process(**debit("m-1"))

    assert (first.repeat, second.repeat) == (False, True)
    assert first.reply == second.reply
    assert first.reply.reply_type == "wallet.Debited"
    assert first.reply.reply_message_id == reply_message_id("m-1", "wallet.Debited")
    assert state.calls == 1 and await moves(engine) == 1

    other = await processor.process(**debit("m-2"))  # another command: carried out
    assert not other.repeat and state.calls == 2 and await moves(engine) == 2


async def test_the_record_outlives_the_process(engine: AsyncEngine) -> None:
    state = wallet()
    first = await (await processor_for(state, engine)).process(**debit("m-1"))
    restarted = wallet()  # a new process: nothing in memory
    again = await (await processor_for(restarted, engine)).process(**debit("m-1"))
    assert again.repeat and again.reply == first.reply
    assert restarted.calls == 0 and await moves(engine) == 1


async def test_concurrent_duplicates_act_once(engine: AsyncEngine) -> None:
    state = wallet()
    state.mode = "slow"  # the first holds its transaction open while the second arrives
    processor = await processor_for(state, engine)
    outcomes = await asyncio.gather(*(processor.process(**debit("m-1")) for _ in range(4)))

    assert sorted(o.repeat for o in outcomes) == [False, True, True, True]
    assert len({o.reply for o in outcomes}) == 1
    assert state.calls == 1 and await moves(engine) == 1


async def test_a_failing_handler_is_counted_rolled_back_and_dead_lettered_after_the_limit(
    engine: AsyncEngine,
) -> None:
    state = wallet()
    state.mode = "raise"
    processor = await processor_for(state, engine, max_attempts=3)
    for attempt in (1, 2):
        with pytest.raises(TryAgain) as retry:
            await processor.process(**debit("m-1"))
        assert f"try {attempt} of 3" in str(retry.value)
    with pytest.raises(DeadLetter, match="failed 3 times, last: RuntimeError: boom on try 3"):
        await processor.process(**debit("m-1"))
    assert await moves(engine) == 0  # every failed try's writes were rolled back

    # counted in the database, so a new process goes on counting; handed back by the broker (the
    # dead-lettering cut short), the handler no longer runs
    restarted = wallet()
    with pytest.raises(DeadLetter, match="dead-lettered before"):
        await (await processor_for(restarted, engine, max_attempts=3)).process(
            **debit("m-1"), redelivered=True
        )
    assert restarted.calls == 0
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT attempts, last_error, dead_lettered_at FROM wallet_kit.participant_attempts")
            )
        ).one()
    assert row.attempts == 3 and "boom on try 3" in row.last_error and row.dead_lettered_at is not None


async def test_a_dead_lettered_command_sent_again_under_its_own_id_runs_with_fresh_tries(
    engine: AsyncEngine,
) -> None:
    """Issue 27: an operator's replay (or the saga's resend) of a command dead-lettered before,
    once its cause is fixed, is carried out, where it was refused for ever."""
    state = wallet()
    state.mode = "raise"
    processor = await processor_for(state, engine, max_attempts=2)
    with pytest.raises(TryAgain):
        await processor.process(**debit("m-1"))
    with pytest.raises(DeadLetter, match="failed 2 times"):
        await processor.process(**debit("m-1"), redelivered=True)

    state.mode = "raise"  # sent again, still failing: a fresh count, not dead at once
    with pytest.raises(TryAgain, match="try 1 of 2"):
        await processor.process(**debit("m-1"))
    with pytest.raises(DeadLetter, match="failed 2 times"):
        await processor.process(**debit("m-1"), redelivered=True)
    state.mode = "ok"  # the cause fixed, replayed once more
    replayed = await processor.process(**debit("m-1"))

    assert not replayed.repeat and replayed.reply.reply_type == "wallet.Debited"
    assert await moves(engine) == 1  # the failed tries' writes rolled back, this one kept


async def test_a_message_id_reused_for_another_command_is_refused_not_answered(engine: AsyncEngine) -> None:
    state = wallet()
    processor = await processor_for(state, engine)
    first = await processor.process(**debit("m-1", cents=100))
    same = await processor.process(**{**debit("m-1", cents=100), "body": {"cents": 100, "account": "a-1"}})

    with pytest.raises(DeadLetter, match="message id m-1 was taken before for another command"):
        await processor.process(**debit("m-1", cents=100_000))
    with pytest.raises(DeadLetter, match="another command"):
        await processor.process(**{**debit("m-1"), "saga_id": "saga-2"})
    assert same.repeat and same.reply == first.reply  # the same command, keys in another order
    assert state.calls == 1


async def test_a_try_that_fails_then_succeeds_knows_its_attempt(engine: AsyncEngine) -> None:
    state = wallet()
    processor = await processor_for(state, engine)
    state.mode = "raise"
    with pytest.raises(TryAgain):
        await processor.process(**debit("m-1"))
    state.mode = "ok"
    outcome = await processor.process(**debit("m-1"))
    assert outcome.reply.reply_type == "wallet.Debited" and await moves(engine) == 1
    pong = await processor.process(
        message_id="p-1", saga_id="s", command_type="wallet.Ping", body={"n": 7}, headers={}
    )
    assert pong.reply.reply_body == b'{"echo":7,"attempt":1}'


async def test_a_deferred_command_records_nothing_and_runs_again(engine: AsyncEngine) -> None:
    state = wallet()
    state.mode = "defer"
    processor = await processor_for(state, engine)
    with pytest.raises(Defer):
        await processor.process(**debit("m-1"))
    assert await moves(engine) == 0
    state.mode = "ok"
    outcome = await processor.process(**debit("m-1"))
    assert not outcome.repeat and state.calls == 2 and await moves(engine) == 1


async def test_invalid_commands_are_dead_lettered_at_once(engine: AsyncEngine) -> None:
    state = wallet()
    processor = await processor_for(state, engine)
    with pytest.raises(InvalidCommand, match=r"wallet\.Debit does not fit its schema"):
        await processor.process(**{**debit("m-1"), "body": {"account": "a-1"}})
    with pytest.raises(InvalidCommand, match=r"does not handle 'wallet\.Credit'"):
        await processor.process(**{**debit("m-2"), "command_type": "wallet.Credit"})
    state.mode = "invalid"  # the handler itself says no retry can help
    with pytest.raises(DeadLetter, match="invalid command: no such account"):
        await processor.process(**debit("m-3"))
    assert state.calls == 1 and await moves(engine) == 0


async def test_a_handler_timing_out_on_its_own_call_is_counted_not_taken_for_an_outage(
    engine: AsyncEngine,
) -> None:
    """A TimeoutError (an OSError) from the handler's own network call used to be taken for a
    database outage: requeued every half second, forever, uncounted."""
    state = wallet()
    state.mode = "timeout"
    processor = await processor_for(state, engine, max_attempts=2)
    with pytest.raises(TryAgain, match="try 1 of 2"):
        await processor.process(**debit("m-timeout"))
    with pytest.raises(DeadLetter, match="failed 2 times, last: TimeoutError: the card network"):
        await processor.process(**debit("m-timeout"))
    assert await moves(engine) == 0


async def test_a_database_outage_is_not_counted_as_a_failed_try(engine: AsyncEngine) -> None:
    state = wallet()
    processor = await processor_for(state, engine, max_attempts=1)
    away = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:1/nowhere")
    try:
        unreachable = CommandProcessor(state.participant, away, max_attempts=1)
        for _ in range(3):
            with pytest.raises(TryAgain, match="database unavailable"):
                await unreachable.process(**debit("m-1"))
    finally:
        await away.dispose()
    # with max_attempts=1 one counted failure would have dead-lettered it
    outcome = await processor.process(**debit("m-1"))
    assert outcome.reply.reply_type == "wallet.Debited"


def test_a_handler_for_another_service_is_refused() -> None:
    participant = Participant("wallet")
    with pytest.raises(ValueError, match=r"wallet receives wallet\.\* commands only"):
        participant.handles("bank.Debit")
    participant.handles(Debit)(lambda command, context: None)
    with pytest.raises(ValueError, match="has a handler already"):
        participant.handles(Debit)


async def test_the_worker_answers_once_defers_and_dead_letters_with_the_reason(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The kit's process over the real broker: confirmed replies, a repeated command answered from
    the inbox, a deferral acked without a reply, a failing handler dead-lettered with its reason."""
    namespace = f"test-kit-{uuid.uuid4().hex[:8]}"
    state = wallet()
    settings = Settings(
        database_url=database,
        amqp_url=AMQP_URL,
        namespace=namespace,
        max_attempts=2,
        retry_backoff=0.05,
        shutdown_grace=5,
    )
    worker = Worker(state.participant, settings)
    running = asyncio.create_task(worker.run())
    connection = await aio_pika.connect(AMQP_URL)
    try:
        await wait_for_consumers(connection, [f"{namespace}.wallet"], 30)
        channel = await connection.channel(publisher_confirms=True)
        replies = await channel.declare_queue(exclusive=True)
        await replies.bind(f"{namespace}.events", "#")
        commands = await channel.get_exchange(f"{namespace}.commands")

        async def send(message_id: str, body: dict[str, Any], saga: str = "saga-1") -> None:
            message = aio_pika.Message(
                orjson.dumps(body), type="wallet.Debit", message_id=message_id, correlation_id=saga
            )
            await commands.publish(message, routing_key="wallet.Debit")

        async def next_message(queue: aio_pika.abc.AbstractQueue) -> aio_pika.abc.AbstractIncomingMessage:
            async with asyncio.timeout(20):
                while (message := await queue.get(no_ack=True, fail=False)) is None:
                    await asyncio.sleep(0.05)
            return message

        await send("m-1", {"account": "a-1", "cents": 5})
        first = await next_message(replies)
        await send("m-1", {"account": "a-1", "cents": 5})
        second = await next_message(replies)
        assert first.type == second.type == "wallet.Debited"
        assert first.message_id == second.message_id == reply_message_id("m-1", "wallet.Debited")
        assert first.body == second.body == b'{"account":"a-1","balance":-5}'
        assert first.correlation_id == "saga-1" and state.calls == 1

        # a property is anybody's: its log line shows it escaped, on one line
        caplog.set_level(logging.INFO, logger="participant.wallet")
        await send("m-forged", {"account": "a-1", "cents": 1}, saga="saga-2\n2026 INFO forged")
        await next_message(replies)
        lines = [r.getMessage() for r in caplog.records if "m-forged" in r.getMessage()]
        assert lines and all("\n" not in line and "saga=saga-2\\n2026" in line for line in lines), lines

        state.mode = "raise"
        await send("m-2", {"account": "a-1", "cents": 5})
        dead_letters = await channel.declare_queue(f"{namespace}.dead-letter", passive=True)
        dead = await next_message(dead_letters)
        assert dead.message_id == "m-2" and dead.headers["x-participant"] == "wallet"
        assert str(dead.headers["x-participant-reason"]).startswith(
            "the handler failed 2 times, last: RuntimeError"
        )
        assert dead.headers["x-original-exchange"] == f"{namespace}.commands"

        # the orchestrator's rules for properties hold here too: a NUL never reaches the inbox
        calls = state.calls
        await send("m\x00nul", {"account": "a-1", "cents": 5})
        refused = await next_message(dead_letters)
        assert (
            refused.headers["x-participant-reason"]
            == "invalid command: message_id must not contain NUL characters: m\\x00nul"
        )
        assert state.calls == calls

        state.mode = "defer"
        calls = state.calls
        await send("m-3", {"account": "a-1", "cents": 5})
        async with asyncio.timeout(20):
            while state.calls == calls:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert await replies.get(no_ack=True, fail=False) is None  # deferred: no reply
        queue = await channel.declare_queue(f"{namespace}.wallet", passive=True)
        assert queue.declaration_result.message_count == 0  # and acked, not left in the queue
    finally:
        worker.stop()
        assert await asyncio.wait_for(running, 15) == 0
        await connection.close()
        await delete_namespace(namespace, queues=("wallet", "dead-letter"))


async def test_pruning_forgets_old_records_only(engine: AsyncEngine) -> None:
    state = wallet()
    processor = await processor_for(state, engine, max_attempts=5)
    await processor.process(**debit("old"))
    await processor.process(**debit("new"))
    state.mode = "raise"
    with pytest.raises(TryAgain):
        await processor.process(**debit("old-failure"))
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "UPDATE wallet_kit.participant_inbox SET handled_at = now() - interval '10 days'"
                " WHERE message_id = 'old'"
            )
        )
        await connection.execute(
            text("UPDATE wallet_kit.participant_attempts SET updated_at = now() - interval '10 days'")
        )

    assert await processor.inbox.prune(7) == 2
    assert await processor.inbox.prune(7) == 0
    state.mode = "ok"
    assert (await processor.process(**debit("new"))).repeat  # a recent record stays
    # what the retention setting warns about: a command seen again after its record went runs again
    assert not (await processor.process(**debit("old"))).repeat


async def test_a_worker_stopped_while_its_database_never_answers_ends_at_once() -> None:
    """The kit's setup waits on a hung server: stop() must not wait out its timeout (30 s)."""
    accepted: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        settings = Settings(database_url=f"postgresql://postgres@127.0.0.1:{port}/x", shutdown_grace=2)
        worker = Worker(wallet().participant, settings)
        running = asyncio.create_task(worker.run())
        async with asyncio.timeout(20):
            while not accepted:
                await asyncio.sleep(0.05)
        worker.stop()
        assert await asyncio.wait_for(running, 5) == 0
    finally:
        for writer in accepted:
            writer.close()
        server.close()


class Statements:
    """The statements sent on a pool's one connection, by their first words: SQLAlchemy's own
    (its prepared statements, which asyncpg's query logger does not see) and the transaction's
    BEGIN and COMMIT (which asyncpg's query logger does)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def __call__(self, record: Any) -> None:
        self.sent.append(" ".join(record.query.split())[:50])

    def executed(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.sent.append(" ".join(statement.split())[:50])

    def take(self) -> list[str]:
        taken, self.sent = self.sent, []
        return taken


async def test_a_command_costs_its_handler_s_statements_and_four_round_trips(database: str) -> None:
    """BEGIN, the claim (the lock and the failed tries, one statement), the recorded reply,
    COMMIT: a change that adds a round trip to every command fails here (issue 30)."""
    engine = kit_engine(database, 1)  # as the worker builds it: no ping before each command
    try:
        state = wallet()
        processor = await processor_for(state, engine)
        statements = Statements()
        event.listen(engine.sync_engine, "before_cursor_execute", statements.executed)
        async with engine.connect() as connection:
            raw = await connection.get_raw_connection()
            raw.driver_connection.add_query_logger(statements)  # type: ignore[union-attr]
        ping = {"saga_id": "saga-1", "command_type": "wallet.Ping", "body": {"n": 1}}
        await processor.process(message_id="warm-up", **ping)  # asyncpg learns the statements' types
        statements.take()

        done = await processor.process(message_id="p-1", **ping)
        sent = statements.take()
        assert not done.repeat
        assert len(sent) == 4, sent
        # (SQLAlchemy's event comes before the BEGIN that its first statement opens)
        assert sent[0].startswith("WITH claimed AS") and sent[1] == "BEGIN;" and sent[-1] == "COMMIT;", sent

        again = await processor.process(message_id="p-1", **ping)  # a duplicate: found in the claim
        sent = statements.take()
        assert again.repeat and again.reply == done.reply
        assert len(sent) == 3, sent  # BEGIN, the claim (the reply read with it), COMMIT

        await processor.process(**debit("d-1"))  # the handler's two statements on top
        assert len(statements.take()) == 4 + 2
    finally:
        await engine.dispose()


async def test_the_example_inventory_reserves_and_releases_any_number_of_skus_in_few_statements(
    database: str,
) -> None:
    """Reserve: one statement creates and locks every SKU in order, one moves them all; release:
    the order's lock, its held units read and locked, one move (issue 30: four statements per SKU
    before)."""
    engine = kit_engine(database, 1)
    try:
        processor = CommandProcessor(inventory.build(Options()), engine)
        await processor.prepare()
        statements = Statements()
        event.listen(engine.sync_engine, "before_cursor_execute", statements.executed)

        def reserve(order: str, lines: list[tuple[str, int]]) -> dict[str, Any]:
            body = {"order_id": order, "lines": [{"sku": sku, "quantity": n} for sku, n in lines]}
            return {"saga_id": order, "command_type": ReserveStock.TYPE, "body": body}

        await processor.process(message_id="warm-up", **reserve("o-0", [("A", 1)]))
        statements.take()
        reserved = await processor.process(
            message_id="r-1", **reserve("o-1", [("C", 2), ("A", 1), ("B", 3), ("A", 1)])
        )
        assert reserved.reply.reply_type == StockReserved.TYPE
        assert len(statements.take()) == 2 + 2  # the claim and the record; the handler's two
        too_many = await processor.process(
            message_id="r-2", **reserve("o-2", [("B", inventory.INITIAL_STOCK)])
        )
        assert too_many.reply.reply_type == OutOfStock.TYPE  # 3 of B are held: nothing written

        body = {"order_id": "o-1"}
        released = await processor.process(
            message_id="x-1", saga_id="o-1", command_type=ReleaseStock.TYPE, body=body
        )
        assert released.reply.reply_type == StockReleased.TYPE
        assert len(statements.take()) == 2 + 3 + 3  # o-2's one; the release's lock, read and move
        again = await processor.process(
            message_id="x-2", saga_id="o-1", command_type=ReleaseStock.TYPE, body=body
        )
        assert again.reply.reply_type == StockReleased.TYPE  # a second release finds nothing held

        async with engine.connect() as connection:
            rows = await connection.execute(text("SELECT sku, on_hand FROM inventory.stock"))
            stock = {sku: on_hand for sku, on_hand in rows}
            rows = await connection.execute(
                text("SELECT sku, delta, kind FROM inventory.stock_moves WHERE order_id = 'o-1'")
            )
            moves = sorted((sku, delta, kind) for sku, delta, kind in rows)
        assert stock == {
            "A": inventory.INITIAL_STOCK - 1,
            "B": inventory.INITIAL_STOCK,
            "C": inventory.INITIAL_STOCK,
        }
        reserved_moves = [("A", -2, "reserve"), ("B", -3, "reserve"), ("C", -2, "reserve")]
        released_moves = [("A", 2, "release"), ("B", 3, "release"), ("C", 2, "release")]
        assert moves == sorted([*reserved_moves, *released_moves])
    finally:
        await engine.dispose()
