"""The generic AMQP side of a participant: everything a service module need not know about.

One runner serves every service so that the wire contract (docs/protocol.md) is implemented once:
topology, parsing, dead-lettering of unparsable commands, idempotent replies, failure injection
that is not business logic (delay, never answering), and a shutdown that loses no command and
ends within its bound whatever the broker does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aio_pika.abc
import aio_pika.exceptions
import orjson

from participants.common import InvalidCommand, Options, reply_message_id
from participants.services import Service

V = TypeVar("V")

__all__ = [
    "EXIT_BROKER",
    "EXIT_HUNG",
    "QUEUE_TYPES",
    "Participant",
    "Settings",
    "dead_letter_queue_arguments",
    "mask_url",
    "queue_arguments",
]

EXIT_BROKER = 2
"""Exit code when the broker cannot be reached or refuses the topology at start."""
EXIT_HUNG = 3
"""Exit code when the watchdog ends a shutdown that overran its bound (a hung event loop)."""
WATCHDOG_MARGIN = 3.0
"""Seconds past ``shutdown_grace`` before the watchdog gives up on the event loop: enough for an
orderly exit that is merely late, short enough that a supervisor never needs SIGKILL."""

CONNECT_TIMEOUT = 10.0
MAX_REMEMBERED = 100_000
"""Bound on the in-memory answers, so a long run cannot grow without limit."""

COPIED_HEADERS = ("x-saga-id", "x-workflow")
QUEUE_TYPES = ("classic", "quorum")
DELIVERY_LIMIT = 20
"""Of a quorum participant queue (docs/protocol.md, section 2): written out here rather than
imported, as a participant in another language would, and held equal to the orchestrator's by a
unit test, because RabbitMQ refuses the second of two declarations that differ."""


def queue_arguments(namespace: str, queue_type: str) -> dict[str, Any]:
    """The arguments of the participant's own queue ``{ns}.S``, exactly as every party declares it."""
    if queue_type == "quorum":
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": f"{namespace}.dead",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
    return {"x-dead-letter-exchange": f"{namespace}.dead"}


def dead_letter_queue_arguments(queue_type: str) -> dict[str, Any]:
    """The arguments of ``{ns}.dead-letter``: its type, nothing more."""
    return {"x-queue-type": "quorum"} if queue_type == "quorum" else {}


@dataclass(frozen=True)
class Settings:
    amqp_url: str
    namespace: str = "saga"
    #: ORCHESTRATOR_QUEUE_TYPE, which the orchestrator reads too: both must declare alike
    queue_type: str = "classic"
    prefetch: int = 100
    delay: float = 0.0
    never_answer: bool = False
    shutdown_grace: float = 10.0


class _Stopped(Exception):
    """A signal arrived while the runner was still connecting or declaring."""


@dataclass(frozen=True)
class _Answer:
    type: str
    body: bytes
    message_id: str


def mask_url(url: str) -> str:
    """The URL with its password hidden, because URLs end up in logs and CI output."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:******@{hostinfo}"))


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


class Participant:
    """Consumes ``{ns}.{service}`` and answers every command on ``{ns}.events``."""

    def __init__(self, service: Service, settings: Settings, options: Options) -> None:
        self.service = service
        self.settings = settings
        self.options = options
        self.log = logging.getLogger(f"participants.{service.name}")
        ns = settings.namespace
        self.commands_exchange = f"{ns}.commands"
        self.events_exchange = f"{ns}.events"
        self.dead_exchange = f"{ns}.dead"
        self.dead_letter_queue = f"{ns}.dead-letter"
        self.queue_name = f"{ns}.{service.name}"
        self._answers: dict[str, _Answer] = {}
        self._inflight: set[asyncio.Task[object]] = set()
        self._stopping = asyncio.Event()
        self._deadline: float | None = None
        #: whether the shutdown left broker calls or commands behind when its bound ran out
        self.abandoned = False
        self._events: aio_pika.abc.AbstractExchange | None = None

    async def run(self) -> int:
        """Serve until SIGTERM or SIGINT; the exit code to use."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        url = mask_url(self.settings.amqp_url)
        try:
            connection = await self._unless_stopping(
                asyncio.wait_for(
                    aio_pika.connect_robust(self.settings.amqp_url, timeout=CONNECT_TIMEOUT),
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
        if queue is not None:
            self.log.info("consuming %s on %s (%s)", self.queue_name, url, self._describe())

            def reconnected(sender: aio_pika.abc.AbstractRobustConnection | None, /) -> None:
                self.log.info("reconnected to %s: answers given before are still remembered", url)

            connection.reconnect_callbacks.add(reconnected)
            await self._stopping.wait()
        await self._shutdown(connection, queue, tag)
        return 0

    def _describe(self) -> str:
        """The settings that shape the answers, so a log reader knows why a reply failed."""
        parts = [f"{self.settings.queue_type} queue", f"prefetch {self.settings.prefetch}"]
        if self.settings.never_answer:
            parts.append("never answering")
        if self.settings.delay:
            parts.append(f"delay {self.settings.delay:g}s")
        if self.options.fail_rate:
            parts.append(f"fail rate {self.options.fail_rate:g}")
        if self.options.out_of_stock:
            parts.append(f"out of stock {','.join(sorted(self.options.out_of_stock))}")
        if self.options.decline_over is not None:
            parts.append(f"decline over {self.options.decline_over} cents")
        if self.options.refuse_over is not None:
            parts.append(f"refuse over {self.options.refuse_over} cents")
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
        # Here and not in stop(): ending the whole process is for the process's own signal.
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
        redelivered by the broker once the connection is gone, and replies already confirmed
        were published before their command was acked, so exiting early loses nothing."""
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
        text = str(error) or type(error).__name__
        password = _password(self.settings.amqp_url)
        return text.replace(password, "******") if password else text

    async def _declare_and_consume(
        self, connection: aio_pika.abc.AbstractRobustConnection
    ) -> tuple[aio_pika.abc.AbstractQueue, str]:
        # Consuming and publishing on separate channels keeps a slow publisher confirm from
        # holding back deliveries, and lets the prefetch apply to commands only.
        consume_channel = await connection.channel(publisher_confirms=False)
        await consume_channel.set_qos(prefetch_count=self.settings.prefetch)
        publish_channel = await connection.channel(publisher_confirms=True)

        topic, fanout = aio_pika.ExchangeType.TOPIC, aio_pika.ExchangeType.FANOUT
        commands = await consume_channel.declare_exchange(self.commands_exchange, topic, durable=True)
        await consume_channel.declare_exchange(self.events_exchange, topic, durable=True)
        dead = await consume_channel.declare_exchange(self.dead_exchange, fanout, durable=True)
        # Declared here too so that a command rejected before the orchestrator ever ran is kept.
        dead_letters = await consume_channel.declare_queue(
            self.dead_letter_queue,
            durable=True,
            arguments=dead_letter_queue_arguments(self.settings.queue_type),
        )
        await dead_letters.bind(dead, routing_key="")
        queue = await consume_channel.declare_queue(
            self.queue_name,
            durable=True,
            arguments=queue_arguments(self.settings.namespace, self.settings.queue_type),
        )
        await queue.bind(commands, routing_key=f"{self.service.name}.#")

        self._events = await publish_channel.declare_exchange(self.events_exchange, topic, durable=True)
        tag = await queue.consume(self._on_message)
        return queue, tag

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
        label = f"{message.type or '<no type>'} id={message.message_id or '<none>'}"
        try:
            answer, repeat = self._answer(message)
        except InvalidCommand as error:
            self.log.warning("%s rejected to %s: %s", label, self.dead_exchange, error)
            await self._settle(message.reject(requeue=False))
            return
        except Exception:
            # A bug in a handler would fail again on every redelivery: dead-letter, do not loop.
            self.log.exception("%s rejected to %s: handler failed", label, self.dead_exchange)
            await self._settle(message.reject(requeue=False))
            return
        label = f"{label} saga={message.correlation_id}"
        if self.settings.never_answer:
            self.log.info("%s -> no answer (never-answer)", label)
            await self._settle(message.ack())
            return
        if self.settings.delay > 0 and not await self._pause(self.settings.delay):
            self.log.info("%s -> requeued: stopping during the delay", label)
            await self._settle(message.nack(requeue=True))
            return
        try:
            await self._publish(message, answer)
        except Exception as error:
            self.log.error("%s -> %s not published, requeueing: %s", label, answer.type, error)
            await self._settle(message.nack(requeue=True))
            return
        await self._settle(message.ack())
        self.log.info("%s -> %s%s", label, answer.type, " (repeated answer)" if repeat else "")

    def _answer(self, message: aio_pika.abc.AbstractIncomingMessage) -> tuple[_Answer, bool]:
        """The reply to a command, and whether it was already given; raises InvalidCommand."""
        if not message.type:
            raise InvalidCommand("no type property")
        if not message.message_id:
            raise InvalidCommand("no message_id property")
        body = _decode(message.body)
        if not message.correlation_id:
            raise InvalidCommand("no correlation_id property: the reply could not name its saga")
        known = self._answers.get(message.message_id)
        if known is not None:
            return known, True
        reply_type, reply_body = self.service.handle(message.type, body, self.options)
        answer = _Answer(
            type=reply_type,
            body=orjson.dumps(reply_body),
            message_id=reply_message_id(message.message_id, reply_type),
        )
        _put_bounded(self._answers, message.message_id, answer)
        return answer, False

    async def _publish(self, command: aio_pika.abc.AbstractIncomingMessage, answer: _Answer) -> None:
        if self._events is None:
            raise RuntimeError("events exchange not declared yet")
        headers = {name: command.headers[name] for name in COPIED_HEADERS if name in command.headers}
        reply = aio_pika.Message(
            body=answer.body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            type=answer.type,
            message_id=answer.message_id,
            correlation_id=command.correlation_id,
            headers=headers,
            timestamp=datetime.now(UTC),
            app_id=f"participants.{self.service.name}",
        )
        # With publisher confirms this returns only once the broker has the reply, so acking
        # the command afterwards can never lose both.
        await self._events.publish(reply, routing_key=answer.type)

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


def _decode(raw: bytes) -> dict[str, object]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise InvalidCommand(f"body is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise InvalidCommand(f"body is a JSON {type(body).__name__}, not an object")
    return body


def _put_bounded(store: dict[str, V], key: str, value: V) -> None:
    store[key] = value
    while len(store) > MAX_REMEMBERED:
        del store[next(iter(store))]
