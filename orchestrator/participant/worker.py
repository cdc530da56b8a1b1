"""The participant's process: consume its queue, run handlers in the inbox's transaction, publish
replies with confirms, and stop within one bound.

Per command, in this order (docs/protocol.md section 6, with the inbox of section 7):

1. check the properties and the body; what no retry can fix is dead-lettered at once;
2. in one transaction: claim the message id in the inbox (a command seen before returns its
   recorded reply and does nothing else), run the handler, record its reply, commit;
3. publish the reply and wait for the broker's confirm, then ack the command.

A crash anywhere loses nothing: before the commit nothing happened, after it the command comes
back and its reply is published from the inbox. A handler that raises has its try counted in a
table of its own and the command goes back to the queue after a backoff; after ``max_attempts``
tries it is dead-lettered with the last error, so nothing retries forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from types import FrameType
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import aio_pika
import aio_pika.abc
import aio_pika.exceptions
import orjson
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from orchestrator.adapters import tracing
from orchestrator.adapters.amqp import nodes
from orchestrator.adapters.amqp.reconnect_noise import quiet_reconnects
from orchestrator.adapters.amqp.topology import Topology
from orchestrator.adapters.read_only import chain, drop_read_only_sessions
from orchestrator.core.ingress import Refused, clip, printable, text_property, trace_headers, trace_of
from orchestrator.participant.handlers import Defer, InvalidCommand, Participant
from orchestrator.participant.inbox import Recorded
from orchestrator.participant.processing import CommandProcessor, DeadLetter, TryAgain
from orchestrator.participant.settings import Settings
from orchestrator.settings import mask_url

V = TypeVar("V")

__all__ = ["EXIT_BROKER", "EXIT_DATABASE", "EXIT_HUNG", "Worker", "kit_engine", "run"]

EXIT_BROKER = 2
"""Exit code when the broker cannot be reached or refuses the topology at start."""
EXIT_HUNG = 3
"""Exit code when the watchdog ends a shutdown that overran its bound (a hung event loop)."""
EXIT_DATABASE = 4
"""Exit code when the participant's database cannot be reached or its tables created at start."""
WATCHDOG_MARGIN = 3.0
"""Seconds past ``shutdown_grace`` before the watchdog gives up on the event loop: enough for an
orderly exit that is merely late, short enough that a supervisor never needs SIGKILL."""
CONNECT_TIMEOUT = 10.0
RECONNECT_INTERVAL = 1.0
"""Seconds between reconnection attempts after the broker went away (aio-pika's default is 5):
a broker restarted in a second should cost a participant about that, not a step's deadline."""
COPIED_HEADERS = ("x-saga-id", "x-workflow")
PRUNE_EVERY = 3600.0
"""Seconds between two prunings of the inbox, when PARTICIPANT_INBOX_RETENTION_DAYS is set."""
MAX_REASON = 500
"""Characters of a dead letter's reason header: the full error stays in the attempts table."""


class _Stopped(Exception):
    """A signal arrived while the worker was still connecting or declaring."""


def run(participant: Participant, settings: Settings | None = None) -> int:
    """Serve ``participant`` until SIGTERM or SIGINT, with settings from the environment unless
    given; returns the exit code (``raise SystemExit(run(payment))`` in a ``__main__``)."""
    settings = settings or Settings.from_env()
    # a tracer provider of its own, named OTEL_SERVICE_NAME or the service (docs/tracing.md)
    tracer = tracing.setup(participant.service)
    worker = Worker(participant, settings, tracer)
    runner = asyncio.Runner(loop_factory=_loop_factory())
    try:
        code = runner.run(worker.run())
    except KeyboardInterrupt:
        runner.close()
        return 130
    finally:
        if tracer is not None:  # the spans buffered: out before the process ends, however it ends
            tracer.flush(2.0)
    if worker.abandoned:
        # Closing the loop would cancel, and wait for, calls left hanging on a broker that is
        # away; the broker redelivers whatever they held, so skip the teardown instead.
        logging.shutdown()
        os._exit(code)
    runner.close()
    return code


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed, as the orchestrator runs on: with it (and the
    inbox's statements built once) the benchmark's kit services took 1.9-2.2 ms of CPU per command
    instead of 2.3. None: asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def kit_engine(url: str, connections: int) -> AsyncEngine:
    """The kit's pool: ``connections`` at most, none pinged before use. A ping is a round trip
    per command; a connection found dead instead fails its command as an outage (sent back to
    the queue, no try counted) and SQLAlchemy replaces every connection of the pool opened before
    it. A demoted primary's sessions are replaced, not retried."""
    engine = create_async_engine(url, pool_size=connections, max_overflow=0, pool_pre_ping=False)
    drop_read_only_sessions(engine)
    return engine


class Worker:
    """Consumes ``{ns}.{service}`` and answers every command on ``{ns}.events``."""

    def __init__(
        self, participant: Participant, settings: Settings, tracer: tracing.OtelTracer | None = None
    ) -> None:
        self.participant = participant
        self.settings = settings
        #: None unless the OTEL_* variables ask for traces; the trace context is passed on either way
        self.tracer = tracer
        self.log = logging.getLogger(f"participant.{participant.service}")
        self.topology = Topology(settings.namespace, queue_type=settings.queue_type)
        self.queue_name = self.topology.participant_queue(participant.service)
        self._inflight: set[asyncio.Task[object]] = set()
        self._stopping = asyncio.Event()
        self._deadline: float | None = None
        #: whether the shutdown left broker calls or commands behind when its bound ran out
        self.abandoned = False
        self._events: aio_pika.abc.AbstractExchange | None = None
        self._dead: aio_pika.abc.AbstractExchange | None = None
        self._engine: AsyncEngine | None = None
        self._processor: CommandProcessor | None = None

    # -- life cycle ----------------------------------------------------------------------------------
    async def run(self) -> int:
        """Serve until SIGTERM or SIGINT (or :meth:`stop`); the exit code to use."""
        quiet_reconnects()  # a broker restart it rides out is no ERROR line (issue 29)
        loop = asyncio.get_running_loop()
        with contextlib.suppress(RuntimeError, ValueError):  # not the main thread: stop() only
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            if not await self._open_database():
                return EXIT_DATABASE
            return await self._serve_broker()
        finally:
            if self._engine is not None:
                await self._bounded(self._engine.dispose(), max(self._left(), 1.0))
            for signum in (signal.SIGTERM, signal.SIGINT):  # a worker inside a host's own loop
                with contextlib.suppress(RuntimeError, ValueError):
                    loop.remove_signal_handler(signum)

    async def _open_database(self) -> bool:
        url = mask_url(self.settings.database_url)
        # One connection per command in flight, and one for counting a failed try meanwhile.
        self._engine = kit_engine(self.settings.engine_url, self.settings.concurrency + 1)
        self._processor = CommandProcessor(
            self.participant,
            self._engine,
            max_attempts=self.settings.max_attempts,
            retry_backoff=self.settings.retry_backoff,
            scrub=self._scrub,
        )
        try:
            await self._unless_stopping(asyncio.wait_for(self._prepare(url), CONNECT_TIMEOUT * 3))
        except _Stopped:
            self.abandoned = True  # the connection attempt, left to the database's whims
            return True  # the broker part sees the stop at once and ends without connecting
        except Exception as error:  # any failure here is fatal, said in one line
            self.log.error("cannot prepare the database at %s: %s", url, self._safe(error))
            await self._engine.dispose()
            return False
        return True

    async def _prepare(self, url: str) -> None:
        """The kit's tables, once the database takes writes: a start during a failover (no host
        takes writes for a few seconds) waits, said once as a WARNING, within the caller's bound."""
        assert self._processor is not None
        warned = False
        while True:
            try:
                await self._processor.prepare()
                return
            except Exception as error:
                if not _unreachable(error):
                    raise
                if not warned:
                    self.log.warning("the database at %s does not take writes yet (%s): waiting", url, error)
                    warned = True
                await asyncio.sleep(0.5)

    async def _serve_broker(self) -> int:
        url = mask_url(self.settings.amqp_url)
        if self._stopping.is_set():  # stopped while the database was being prepared
            self.log.info("stopped before reaching RabbitMQ at %s", url)
            return 0
        self.log.info("connecting to RabbitMQ at %s", url)
        try:
            connection = await self._unless_stopping(
                asyncio.wait_for(
                    nodes.connect_robust(
                        self.settings.amqp_url,
                        timeout=CONNECT_TIMEOUT,
                        reconnect_interval=RECONNECT_INTERVAL,
                        client_properties={"connection_name": f"participant-{self.participant.service}"},
                    ),
                    CONNECT_TIMEOUT + 5,
                )
            )
        except _Stopped:
            self.abandoned = True  # the connection attempt, left to the broker's whims
            self.log.info("stopped before reaching RabbitMQ at %s", url)
            return 0
        except (OSError, TimeoutError, ValueError, aio_pika.exceptions.AMQPError) as error:
            self.log.error("cannot connect to RabbitMQ at %s: %s", url, self._safe(error))
            return EXIT_BROKER
        queue: aio_pika.abc.AbstractQueue | None = None
        tag = ""
        try:
            queue, tag = await self._unless_stopping(self._declare_and_consume(connection))
        except _Stopped:
            pass
        except aio_pika.exceptions.AMQPError as error:
            self.log.error("RabbitMQ at %s refused the topology: %s", url, self._safe(error))
            if isinstance(error, aio_pika.exceptions.ChannelPreconditionFailed):
                # The usual cause: the queues were migrated to the other type (docs/protocol.md,
                # section 2); its commands wait there for a participant that declares alike.
                self.log.error(
                    "declared as %s queues (ORCHESTRATOR_QUEUE_TYPE): is the broker's of the other type?",
                    self.settings.queue_type,
                )
            await self._bounded(connection.close(), CONNECT_TIMEOUT)
            return EXIT_BROKER
        pruning: asyncio.Task[None] | None = None
        if queue is not None and self.settings.inbox_retention_days is not None:
            pruning = asyncio.create_task(self._prune_hourly(self.settings.inbox_retention_days))
        if queue is not None:
            self.log.info("consuming %s on %s (%s)", self.queue_name, url, self._describe())

            def reconnected(sender: aio_pika.abc.AbstractRobustConnection | None, /) -> None:
                self.log.info("reconnected to %s", url)

            connection.reconnect_callbacks.add(reconnected)
            await self._stopping.wait()
        if pruning is not None:
            pruning.cancel()
        await self._shutdown(connection, queue, tag)
        return 0

    async def _prune_hourly(self, days: float) -> None:
        """Keep the inbox to ``days`` of records; a failed round is logged and tried next hour."""
        assert self._processor is not None
        while True:
            try:
                deleted = await self._processor.inbox.prune(days)
            except Exception as error:  # the database away: the next round catches up
                self.log.warning("pruning the inbox failed: %s", self._safe(error))
            else:
                if deleted:
                    self.log.info("pruned %d inbox record(s) older than %g days", deleted, days)
            await asyncio.sleep(PRUNE_EVERY)

    def _describe(self) -> str:
        """The settings that shape the answers, so a log reader knows why a reply failed."""
        parts = [
            f"{self.settings.queue_type} queue",
            f"concurrency {self.settings.concurrency}",
            f"{self.settings.max_attempts} attempts",
            f"database {mask_url(self.settings.database_url)}",
        ]
        if self.settings.never_answer:
            parts.append("never answering")
        if self.settings.reply_delay:
            parts.append(f"delay {self.settings.reply_delay:g}s")
        return ", ".join(parts)

    def stop(self) -> None:
        """Stop taking commands and start the one bounded shutdown (what the first signal does)."""
        if self._stopping.is_set():
            return
        self._deadline = time.monotonic() + self.settings.shutdown_grace
        self._stopping.set()

    def _on_signal(self, signum: int) -> None:
        self.log.info(
            "%s: stopping within %gs (again to exit at once)",
            signal.Signals(signum).name,
            self.settings.shutdown_grace,
        )
        # The second signal is handled by Python in the main thread, not by the event loop, so
        # it works even while the loop is busy or stuck.
        loop = asyncio.get_running_loop()
        for other in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(other)
            signal.signal(other, _exit_at_once)
        # The last resort if the event loop itself is stuck, which nothing in it could notice.
        threading.Thread(
            target=_watchdog,
            args=(self.settings.shutdown_grace + WATCHDOG_MARGIN,),
            name="shutdown-watchdog",
            daemon=True,
        ).start()
        self.stop()

    def _left(self) -> float:
        """Seconds left of the shutdown bound (all of it while not stopping)."""
        if self._deadline is None:
            return self.settings.shutdown_grace
        return max(0.0, self._deadline - time.monotonic())

    async def _unless_stopping(self, work: Awaitable[V]) -> V:
        """The result of ``work``, or _Stopped as soon as a signal comes first: a robust
        connection retries a broker that is away forever, and a signal must not wait for that."""
        task = asyncio.ensure_future(work)
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if task.done():
            return task.result()
        _abandon(task)
        raise _Stopped

    async def _bounded(self, work: Awaitable[Any], timeout: float) -> bool:
        """Whether ``work`` ended (well or not) within ``timeout``; if not it is cancelled and left
        behind, never awaited: aio-pika shields parts of a close, and wait_for would wait for those."""
        task = asyncio.ensure_future(work)
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            _abandon(task)
            return False
        if not task.cancelled() and task.exception() is not None:
            self.log.debug("during shutdown: %s", self._safe(task.exception() or Exception()))
        return True

    async def _shutdown(
        self,
        connection: aio_pika.abc.AbstractRobustConnection,
        queue: aio_pika.abc.AbstractQueue | None,
        tag: str,
    ) -> None:
        """Stop taking commands, let the ones in flight finish, then close, all within one bound.

        Whatever is still open when the bound runs out is left: commands not acked yet are
        redelivered by the broker once the connection is gone, and their replies, if committed,
        are in the inbox for that redelivery, so exiting early loses nothing."""
        self.log.info("stopping: %d command(s) in flight", len(self._inflight))
        abandoned: list[str] = []
        # With the broker away the consumer went with the connection, and a robust channel's
        # cancel would only wait for the broker to come back.
        if (
            queue is not None
            and connection.connected.is_set()
            and not await self._bounded(queue.cancel(tag), self._left())
        ):
            abandoned.append("cancelling the consumer")
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=self._left())
            if pending:
                abandoned.append(f"{len(pending)} command(s) in flight, left unacked for redelivery")
                for task in pending:
                    task.cancel()
                # Cancelled at their next await; a moment to unwind, not a second bound.
                await asyncio.wait(pending, timeout=max(self._left(), 0.1))
        if not await self._bounded(connection.close(), self._left()):
            abandoned.append("closing the connection")
        if abandoned:
            self.abandoned = True
            self.log.warning(
                "stopped: the %gs bound ran out, abandoned %s",
                self.settings.shutdown_grace,
                "; ".join(abandoned),
            )
        else:
            self.log.info("stopped")

    def _safe(self, error: BaseException) -> str:
        """An error's text with no password of either URL in it."""
        return self._scrub(str(error) or type(error).__name__)

    def _scrub(self, text: str) -> str:
        for url in (self.settings.amqp_url, self.settings.database_url):
            password = _password(url)
            if password:
                text = text.replace(password, "******")
        return text

    async def _declare_and_consume(
        self, connection: aio_pika.abc.AbstractRobustConnection
    ) -> tuple[aio_pika.abc.AbstractQueue, str]:
        # Consuming and publishing on separate channels keeps a slow publisher confirm from
        # holding back deliveries, and lets the prefetch apply to commands only.
        consume_channel = await connection.channel(publisher_confirms=False)
        await consume_channel.set_qos(prefetch_count=self.settings.concurrency)
        publish_channel = await connection.channel(publisher_confirms=True)

        topology = self.topology
        topic, fanout = aio_pika.ExchangeType.TOPIC, aio_pika.ExchangeType.FANOUT
        commands = await consume_channel.declare_exchange(topology.commands, topic, durable=True)
        await consume_channel.declare_exchange(topology.events, topic, durable=True)
        dead = await consume_channel.declare_exchange(topology.dead, fanout, durable=True)
        # Declared here too so that a command rejected before the orchestrator ever ran is kept.
        dead_letters = await consume_channel.declare_queue(
            topology.dead_letter_queue, durable=True, arguments=topology.dead_letter_queue_arguments
        )
        await dead_letters.bind(dead, routing_key="")
        queue = await consume_channel.declare_queue(
            self.queue_name, durable=True, arguments=topology.queue_arguments
        )
        await queue.bind(commands, routing_key=f"{self.participant.service}.#")

        self._events = await publish_channel.declare_exchange(topology.events, topic, durable=True)
        self._dead = await publish_channel.declare_exchange(topology.dead, fanout, durable=True)
        tag = await queue.consume(self._on_message)
        return queue, tag

    # -- one command ------------------------------------------------------------------------------
    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if self._stopping.is_set():
            # Intake stopped with the signal; a delivery that raced it (or came with a reconnect)
            # goes back to the queue for another consumer instead of into the bound.
            await self._bounded(message.nack(requeue=True), self._left())
            return
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            await self._serve(message)
        except Exception:
            self.log.exception("unexpected failure on message id=%s", message.message_id)
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def _serve(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        """One command, in a ``handle <type>`` span when tracing is on: a child of the command's
        ``traceparent``, and the parent of the reply (or dead letter) it causes. Off, the
        command's trace context goes on to the reply as it came."""
        headers = message.headers
        trace = trace_of(headers.get("traceparent"), headers.get("tracestate"))
        if self.tracer is None:
            await self._serve_traced(message, trace)
            return
        attributes = {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "process",
            "messaging.message.id": printable(message.message_id or ""),
            "messaging.destination.name": printable(message.exchange or ""),
            "messaging.rabbitmq.destination.routing_key": printable(message.routing_key or ""),
            "orchestrator.saga.id": printable(message.correlation_id or ""),
            "orchestrator.workflow": printable(headers.get("x-workflow") or ""),
            "orchestrator.message.type": printable(message.type or ""),
            "orchestrator.service": self.participant.service,
        }
        name = f"handle {clip(printable(message.type or '<no type>'), 100)}"
        span = self.tracer.start(name, trace, attributes, kind="consumer")
        try:
            await self._serve_traced(message, span.trace)
        finally:
            span.end()

    async def _serve_traced(self, message: aio_pika.abc.AbstractIncomingMessage, trace: str | None) -> None:
        assert self._processor is not None
        # the properties are anybody's: shown escaped and bounded until they pass the rules
        shown_type = clip(printable(message.type or "<no type>"), 100)
        label = f"{shown_type} id={clip(printable(message.message_id or '<none>'), 100)}"
        try:
            body = self._parse(message)
            label = f"{label} saga={clip(printable(message.correlation_id or ''), 100)}"
            outcome = await self._processor.process(
                message_id=message.message_id or "",
                saga_id=message.correlation_id or "",
                command_type=message.type or "",
                body=body,
                headers=message.headers,
                redelivered=bool(message.redelivered),
            )
        except InvalidCommand as error:
            await self._dead_letter(message, f"invalid command: {error}", label, trace)
            return
        except DeadLetter as dead:
            await self._dead_letter(message, str(dead), label, trace)
            return
        except Defer as deferred:
            self.log.info("%s -> no reply yet (deferred: %s)", label, deferred)
            await self._settle(message.ack())
            return
        except TryAgain as retry:
            self.log.warning("%s -> back to the queue in %gs: %s", label, retry.after, retry)
            await self._pause(retry.after)  # cut short by a shutdown: the queue keeps it either way
            await self._settle(message.nack(requeue=True))
            return
        recorded = outcome.reply
        if self.settings.never_answer:
            self.log.info("%s -> no answer (never-answer)", label)
            await self._settle(message.ack())
            return
        if self.settings.reply_delay > 0 and not await self._pause(self.settings.reply_delay):
            self.log.info("%s -> requeued: stopping during the delay", label)
            await self._settle(message.nack(requeue=True))
            return
        try:
            await self._publish(message, recorded, trace)
        except Exception as error:
            # a warning: the command goes back to the queue and its recorded reply is sent when it
            # comes again (a broker node stopping closes the channel under a publish: ridden out)
            self.log.warning("%s -> %s not published, requeueing: %s", label, recorded.reply_type, error)
            await self._settle(message.nack(requeue=True))
            return
        await self._settle(message.ack())
        self.log.info("%s -> %s%s", label, recorded.reply_type, " (recorded reply)" if outcome.repeat else "")

    def _parse(self, message: aio_pika.abc.AbstractIncomingMessage) -> dict[str, Any]:
        """The body of a command whose properties are all there and pass the orchestrator's own
        rules for properties (core.ingress: one set of input rules); InvalidCommand otherwise."""
        try:
            for name in ("type", "message_id", "correlation_id"):
                text_property(name, getattr(message, name))
        except Refused as refused:
            raise InvalidCommand(refused.detail) from None
        if not message.type:
            raise InvalidCommand("no type property")
        if not message.message_id:
            raise InvalidCommand("no message_id property")
        if not message.correlation_id:
            raise InvalidCommand("no correlation_id property: the reply could not name its saga")
        try:
            body = orjson.loads(message.body)
        except orjson.JSONDecodeError as error:
            raise InvalidCommand(f"body is not JSON: {error}") from None
        if not isinstance(body, dict):
            raise InvalidCommand(f"body is a JSON {type(body).__name__}, not an object")
        return body

    async def _publish(
        self, command: aio_pika.abc.AbstractIncomingMessage, recorded: Recorded, trace: str | None = None
    ) -> None:
        if self._events is None:
            raise RuntimeError("events exchange not declared yet")
        headers: dict[str, Any] = {
            name: command.headers[name] for name in COPIED_HEADERS if name in command.headers
        }
        headers.update(trace_headers(trace))  # the saga's trace goes on (docs/protocol.md)
        reply = aio_pika.Message(
            body=recorded.reply_body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            type=recorded.reply_type,
            message_id=recorded.reply_message_id,
            correlation_id=command.correlation_id,
            headers=headers,
            timestamp=datetime.now(UTC),
            app_id=f"participant.{self.participant.service}",
            # its broker user, which RabbitMQ vouches for: what ORCHESTRATOR_SENDERS checks
            user_id=broker_user(self.settings.amqp_url),
        )
        # With publisher confirms this returns only once the broker has the reply, so acking
        # the command afterwards can never lose both.
        await self._events.publish(reply, routing_key=recorded.reply_type)

    async def _dead_letter(
        self, message: aio_pika.abc.AbstractIncomingMessage, reason: str, label: str, trace: str | None = None
    ) -> None:
        """Publish the command to ``{ns}.dead`` with the reason, then ack it; if that publish
        fails, reject it, which dead-letters it through the queue argument without the reason."""
        self.log.warning("%s dead-lettered: %s", label, reason)
        if self._dead is not None:
            headers: dict[str, Any] = dict(message.headers)
            headers.update(
                {
                    "x-participant": self.participant.service,
                    "x-participant-reason": clip(printable(reason), MAX_REASON),
                    "x-original-exchange": message.exchange or self.topology.commands,
                    "x-original-routing-key": message.routing_key or (message.type or ""),
                }
            )
            headers.update(trace_headers(trace))
            copy = aio_pika.Message(
                body=message.body,
                content_type=message.content_type,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                type=message.type,
                message_id=message.message_id,
                correlation_id=message.correlation_id,
                headers=headers,
                timestamp=message.timestamp,
            )
            try:
                await self._dead.publish(copy, routing_key=message.routing_key or "")
            except Exception as error:
                self.log.warning("%s: the dead letter was not published (%s), rejecting it", label, error)
            else:
                await self._settle(message.ack())
                return
        await self._settle(message.reject(requeue=False))

    async def _pause(self, seconds: float) -> bool:
        """Sleep without blocking other commands; False if the participant is stopping meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return not self._stopping.is_set()

    async def _settle(self, settling: Awaitable[None]) -> None:
        """Ack, nack or reject; a channel lost meanwhile means the broker redelivers anyway."""
        try:
            await settling
        except Exception as error:
            self.log.warning("could not settle the message (it will be redelivered): %s", error)


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def _exit_at_once(signum: int, frame: FrameType | None) -> None:
    """The second SIGTERM or SIGINT: no more waiting. os.write, not logging: this runs between any
    two bytecodes of the main thread, possibly inside a logging call."""
    code = 128 + signum
    os.write(2, f"{signal.Signals(signum).name} again: exiting at once ({code})\n".encode())
    os._exit(code)


def _watchdog(seconds: float) -> None:
    time.sleep(seconds)
    os.write(2, f"shutdown overran its bound by {WATCHDOG_MARGIN:g}s: exiting ({EXIT_HUNG})\n".encode())
    os._exit(EXIT_HUNG)


def _abandon(task: asyncio.Future[Any]) -> None:
    """Cancel and forget; its outcome is retrieved so asyncio does not log it as never retrieved."""
    task.cancel()
    task.add_done_callback(lambda done: done.cancelled() or done.exception())


def broker_user(url: str) -> str | None:
    """The user an AMQP URL logs in as (None: none given, as with certificate logins), as the
    ``user_id`` a publish may carry: RabbitMQ refuses any other."""
    user = urlsplit(url).username
    return unquote(user) if user else None


def _unreachable(error: BaseException) -> bool:
    """A database that cannot be reached now (refused, no writable host, starting up or shutting
    down), as opposed to one that refuses this participant (a password, a privilege, a bug):
    anywhere in what SQLAlchemy or asyncpg raised (``.orig``, the cause, the context)."""
    import asyncpg

    away = OSError | asyncpg.TargetServerAttributeNotMatched | asyncpg.CannotConnectNowError
    for link in chain(error):
        code = getattr(link, "sqlstate", None)
        if isinstance(link, away) or (isinstance(code, str) and code[:2] in {"08", "57"}):
            return True
    return False
