"""The generic AMQP side of a participant: everything a service module need not know about.

One runner serves every service so that the wire contract (docs/protocol.md) is implemented once:
topology, parsing, dead-lettering of unparsable commands, idempotent replies, failure injection
that is not business logic (delay, never answering), and a shutdown that loses no command.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aio_pika.abc
import aio_pika.exceptions
import orjson

from participants.common import InvalidCommand, Options, reply_message_id
from participants.services import Service

V = TypeVar("V")

__all__ = ["EXIT_BROKER", "Participant", "Settings", "mask_url"]

EXIT_BROKER = 2
"""Exit code when the broker cannot be reached or refuses the topology at start."""

CONNECT_TIMEOUT = 10.0
MAX_REMEMBERED = 100_000
"""Bound on the in-memory answers, so a long run cannot grow without limit."""

DEAD_LETTER_ARGUMENTS_KEY = "x-dead-letter-exchange"
COPIED_HEADERS = ("x-saga-id", "x-workflow")


@dataclass(frozen=True)
class Settings:
    amqp_url: str
    namespace: str = "saga"
    prefetch: int = 100
    delay: float = 0.0
    never_answer: bool = False
    shutdown_grace: float = 10.0


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
        self._events: aio_pika.abc.AbstractExchange | None = None

    async def run(self) -> int:
        """Serve until SIGTERM or SIGINT; the exit code to use."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        url = mask_url(self.settings.amqp_url)
        try:
            connection = await asyncio.wait_for(
                aio_pika.connect_robust(self.settings.amqp_url, timeout=CONNECT_TIMEOUT),
                CONNECT_TIMEOUT + 5,
            )
        except (OSError, TimeoutError, ValueError, aio_pika.exceptions.AMQPError) as error:
            self.log.error("cannot connect to RabbitMQ at %s: %s", url, self._safe(error))
            return EXIT_BROKER
        try:
            try:
                queue, tag = await self._declare_and_consume(connection)
            except aio_pika.exceptions.AMQPError as error:
                self.log.error("RabbitMQ at %s refused the topology: %s", url, self._safe(error))
                return EXIT_BROKER
            self.log.info("consuming %s on %s (%s)", self.queue_name, url, self._describe())

            def reconnected(sender: aio_pika.abc.AbstractRobustConnection | None, /) -> None:
                self.log.info("reconnected to %s: answers given before are still remembered", url)

            connection.reconnect_callbacks.add(reconnected)
            await self._stopping.wait()
            await self._drain(queue, tag)
        finally:
            await connection.close()
        self.log.info("stopped")
        return 0

    def _describe(self) -> str:
        """The settings that shape the answers, so a log reader knows why a reply failed."""
        parts = [f"prefetch {self.settings.prefetch}"]
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
        self._stopping.set()

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
        dead_letters = await consume_channel.declare_queue(self.dead_letter_queue, durable=True)
        await dead_letters.bind(dead, routing_key="")
        queue = await consume_channel.declare_queue(
            self.queue_name,
            durable=True,
            arguments={DEAD_LETTER_ARGUMENTS_KEY: self.dead_exchange},
        )
        await queue.bind(commands, routing_key=f"{self.service.name}.#")

        self._events = await publish_channel.declare_exchange(self.events_exchange, topic, durable=True)
        tag = await queue.consume(self._on_message)
        return queue, tag

    async def _drain(self, queue: aio_pika.abc.AbstractQueue, tag: str) -> None:
        """Stop taking commands, let the ones in flight finish, requeue what cannot."""
        self.log.info("stopping: %d command(s) in flight", len(self._inflight))
        with contextlib.suppress(Exception):
            await queue.cancel(tag)
        if not self._inflight:
            return
        _, pending = await asyncio.wait(set(self._inflight), timeout=self.settings.shutdown_grace)
        for task in pending:
            task.cancel()
        # Their commands were never acked, so the broker redelivers them when the channel closes.
        await asyncio.gather(*pending, return_exceptions=True)

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
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
