"""A tiny AMQP 0-9-1 publisher that encodes whatever bytes it is given.

aio-pika (through pamqp) refuses to encode a property such as ``type`` that is not ``str``, and a
``str`` always becomes valid UTF-8. Java, Go and Node clients are not that strict: their
participants can put invalid UTF-8, NUL bytes or 100 KB values into properties and headers, and
RabbitMQ passes them on untouched. This module writes the frames itself on an asyncio stream so
integration tests can reproduce those messages::

    async with RawPublisher(AMQP_URL) as publisher:
        await publisher.publish(
            "some.exchange", "routing.key", b"body",
            properties={"type": b"\\xff\\xfe", "message_id": "m-1"},
            headers={"x-workflow": b"\\xff\\xfe"},
        )

Every publish waits for the broker's ``basic.ack`` (publisher confirms), so when it returns the
message is in its queue(s). Only the client side that publishing needs is implemented: one
channel, no consumers, no heartbeats (``heartbeat=0`` is asked for in ``tune-ok``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import decimal
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import unquote, urlsplit

PROTOCOL_HEADER: Final = b"AMQP\x00\x00\x09\x01"
FRAME_METHOD: Final = 1
FRAME_HEADER: Final = 2
FRAME_BODY: Final = 3
FRAME_HEARTBEAT: Final = 8
FRAME_END: Final = 0xCE
FRAME_OVERHEAD: Final = 8  # type (1) + channel (2) + size (4) + frame-end (1)

# (class id, method id) of the methods this client sends or understands
CONNECTION_START: Final = (10, 10)
CONNECTION_START_OK: Final = (10, 11)
CONNECTION_TUNE: Final = (10, 30)
CONNECTION_TUNE_OK: Final = (10, 31)
CONNECTION_OPEN: Final = (10, 40)
CONNECTION_OPEN_OK: Final = (10, 41)
CONNECTION_CLOSE: Final = (10, 50)
CONNECTION_CLOSE_OK: Final = (10, 51)
CHANNEL_OPEN: Final = (20, 10)
CHANNEL_OPEN_OK: Final = (20, 11)
CHANNEL_CLOSE: Final = (20, 40)
CHANNEL_CLOSE_OK: Final = (20, 41)
BASIC_PUBLISH: Final = (60, 40)
BASIC_RETURN: Final = (60, 50)
BASIC_ACK: Final = (60, 80)
BASIC_NACK: Final = (60, 120)
CONFIRM_SELECT: Final = (85, 10)
CONFIRM_SELECT_OK: Final = (85, 11)
BASIC_CLASS: Final = 60
CHANNEL: Final = 1

#: Basic content properties in wire order: name -> (bit in the property flags, kind)
PROPERTIES: Final[dict[str, tuple[int, str]]] = {
    "content_type": (15, "shortstr"),
    "content_encoding": (14, "shortstr"),
    "headers": (13, "table"),
    "delivery_mode": (12, "octet"),
    "priority": (11, "octet"),
    "correlation_id": (10, "shortstr"),
    "reply_to": (9, "shortstr"),
    "expiration": (8, "shortstr"),
    "message_id": (7, "shortstr"),
    "timestamp": (6, "timestamp"),
    "type": (5, "shortstr"),
    "user_id": (4, "shortstr"),
    "app_id": (3, "shortstr"),
    "cluster_id": (2, "shortstr"),  # deprecated in 0-9-1, still on the wire
}


class RawAmqpError(Exception):
    """The broker refused something (it closed the channel or the connection, or nacked)."""


class BrokerClosed(RawAmqpError):
    """The broker sent ``channel.close`` or ``connection.close``, or the socket ended."""

    def __init__(self, what: str, reply_code: int, reply_text: str, method: tuple[int, int]) -> None:
        super().__init__(f"{what} closed by the broker: {reply_code} {reply_text} (method {method})")
        self.what = what
        self.reply_code = reply_code
        self.reply_text = reply_text
        self.method = method


class PublishNacked(RawAmqpError):
    """The broker answered the publish with ``basic.nack``."""


class PublishReturned(RawAmqpError):
    """A ``mandatory`` publish was unroutable and came back with ``basic.return``."""

    def __init__(self, reply_code: int, reply_text: str) -> None:
        super().__init__(f"message returned: {reply_code} {reply_text}")
        self.reply_code = reply_code
        self.reply_text = reply_text


@dataclass(frozen=True)
class RawField:
    """A field-table value written as given: its type tag, then ``data`` verbatim.

    For what the automatic mapping cannot express, e.g. ``RawField(b"x", b"\\x00\\x00\\x00\\x01\\xff")``
    (a byte array) or a tag the broker may not know at all.
    """

    tag: bytes
    data: bytes


# --- encoding -------------------------------------------------------------------------------------


def _bytes(value: str | bytes | bytearray) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def shortstr(value: str | bytes) -> bytes:
    """Length octet + bytes; any bytes (invalid UTF-8, NUL) up to 255 of them."""
    data = _bytes(value)
    if len(data) > 255:
        raise ValueError(f"a shortstr holds at most 255 bytes, not {len(data)}")
    return bytes([len(data)]) + data


def longstr(value: str | bytes | bytearray) -> bytes:
    data = _bytes(value)
    return struct.pack(">I", len(data)) + data


def field_value(value: Any) -> bytes:
    """One field-table value with its type tag (RabbitMQ's tags, see its 0-9-1 errata)."""
    if isinstance(value, RawField):
        return value.tag + value.data
    if isinstance(value, bool):
        return b"t" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return b"I" + struct.pack(">i", value)
        return b"l" + struct.pack(">q", value)
    if isinstance(value, float):
        return b"d" + struct.pack(">d", value)
    if isinstance(value, decimal.Decimal):
        sign, digits, exponent = value.as_tuple()
        assert isinstance(exponent, int), "no NaN or infinity in an AMQP decimal"
        unscaled = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
        return b"D" + struct.pack(">Bi", max(0, -exponent), unscaled * 10 ** max(0, exponent))
    if isinstance(value, datetime.datetime):
        return b"T" + struct.pack(">Q", int(value.timestamp()))
    if isinstance(value, str | bytes | bytearray):
        return b"S" + longstr(value)
    if isinstance(value, Mapping):
        return b"F" + field_table(value)
    if isinstance(value, Sequence):
        items = b"".join(field_value(item) for item in value)
        return b"A" + struct.pack(">I", len(items)) + items
    if value is None:
        return b"V"
    raise TypeError(f"no AMQP field type for {type(value).__name__}: {value!r}")


def field_table(table: Mapping[str | bytes, Any]) -> bytes:
    """Length-prefixed table; keys are shortstrs (any bytes), values as in :func:`field_value`."""
    items = b"".join(shortstr(key) + field_value(value) for key, value in table.items())
    return struct.pack(">I", len(items)) + items


def encode_properties(properties: Mapping[str, Any]) -> bytes:
    """Property flags + property list of a basic content header."""
    unknown = set(properties) - set(PROPERTIES)
    if unknown:
        raise ValueError(f"not AMQP basic properties: {sorted(unknown)}")
    flags = 0
    payload = b""
    for name, (bit, kind) in PROPERTIES.items():
        value = properties.get(name)
        if value is None:
            continue
        flags |= 1 << bit
        if kind == "shortstr":
            payload += shortstr(value)
        elif kind == "table":
            payload += field_table(value)
        elif kind == "octet":
            payload += struct.pack(">B", int(value))
        else:  # timestamp: seconds since the epoch
            seconds = int(value.timestamp()) if isinstance(value, datetime.datetime) else int(value)
            payload += struct.pack(">Q", seconds)
    return struct.pack(">H", flags) + payload


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + bytes([FRAME_END])


def method_frame(channel: int, method: tuple[int, int], arguments: bytes = b"") -> bytes:
    return frame(FRAME_METHOD, channel, struct.pack(">HH", *method) + arguments)


def content_frames(channel: int, body: bytes, properties: Mapping[str, Any], frame_max: int) -> list[bytes]:
    """The content header frame, then the body split into frames of at most ``frame_max`` bytes.

    The header frame is not checked against ``frame_max``: a header too big for it is one more
    thing a buggy client can send (RabbitMQ closes the connection with FRAME_ERROR).
    """
    header = struct.pack(">HHQ", BASIC_CLASS, 0, len(body)) + encode_properties(properties)
    frames = [frame(FRAME_HEADER, channel, header)]
    chunk = frame_max - FRAME_OVERHEAD if frame_max else len(body) or 1
    view = memoryview(body)
    frames += [frame(FRAME_BODY, channel, bytes(view[i : i + chunk])) for i in range(0, len(body), chunk)]
    return frames


# --- decoding (only what the broker sends a publisher) --------------------------------------------


def _read_shortstr(data: bytes, offset: int) -> tuple[str, int]:
    length = data[offset]
    return data[offset + 1 : offset + 1 + length].decode(errors="replace"), offset + 1 + length


def _close_arguments(what: str, arguments: bytes) -> BrokerClosed:
    (reply_code,) = struct.unpack_from(">H", arguments, 0)
    reply_text, offset = _read_shortstr(arguments, 2)
    class_id, method_id = struct.unpack_from(">HH", arguments, offset)
    return BrokerClosed(what, reply_code, reply_text, (class_id, method_id))


@dataclass(frozen=True)
class Frame:
    kind: int
    channel: int
    payload: bytes

    @property
    def method(self) -> tuple[int, int]:
        class_id, method_id = struct.unpack_from(">HH", self.payload, 0)
        return class_id, method_id

    @property
    def arguments(self) -> bytes:
        return self.payload[4:]


# --- the publisher --------------------------------------------------------------------------------


class RawPublisher:
    """One connection, one channel in confirm mode; ``publish`` returns once the broker acked.

    ``async with RawPublisher("amqp://guest:guest@127.0.0.1:5672/") as publisher: ...``
    Publishes are serialized (one in flight), so a ``basic.return`` is known to be for the
    publish that is waiting.
    """

    def __init__(self, url: str, *, frame_max: int | None = None, timeout: float = 30) -> None:
        parts = urlsplit(url)
        if parts.scheme != "amqp":
            raise ValueError(f"only amqp:// URLs (no TLS here): {url}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 5672
        self.username = unquote(parts.username or "guest")
        self.password = unquote(parts.password or "guest")
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        self.vhost = unquote(path) or "/"
        self.timeout = timeout
        self._wanted_frame_max = frame_max
        #: negotiated in connection.tune-ok; body frames are at most this long (frame included)
        self.frame_max = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        self._replies: asyncio.Queue[Frame] = asyncio.Queue()
        #: why publishing is impossible now (the channel or the connection was closed)
        self._closed: BrokerClosed | None = None
        self._channel_open = False
        self._connection_open = False
        self._rpc_pending = False
        self._lock = asyncio.Lock()
        self._delivery_tag = 0
        self._confirm: asyncio.Future[None] | None = None
        self._returned: PublishReturned | None = None
        self._skip_content = False

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # -- connection lifecycle --

    async def connect(self) -> None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)
        self._reader, self._writer = reader, writer
        writer.write(PROTOCOL_HEADER)
        await self._expect_during_handshake(CONNECTION_START)
        client_properties: dict[str | bytes, Any] = {
            "product": "tests.integration.raw_amqp",
            "capabilities": {"publisher_confirms": True, "basic.nack": True},
        }
        response = b"\x00" + self.username.encode() + b"\x00" + self.password.encode()
        self._send(
            method_frame(
                0,
                CONNECTION_START_OK,
                field_table(client_properties) + shortstr("PLAIN") + longstr(response) + shortstr("en_US"),
            )
        )
        tune = await self._expect_during_handshake(CONNECTION_TUNE)
        channel_max, server_frame_max, _heartbeat = struct.unpack_from(">HIH", tune.arguments, 0)
        wanted = self._wanted_frame_max or server_frame_max
        self.frame_max = min(wanted, server_frame_max) if server_frame_max else wanted
        self._send(method_frame(0, CONNECTION_TUNE_OK, struct.pack(">HIH", channel_max, self.frame_max, 0)))
        self._send(method_frame(0, CONNECTION_OPEN, shortstr(self.vhost) + shortstr("") + b"\x00"))
        await self._expect_during_handshake(CONNECTION_OPEN_OK)
        self._connection_open = True

        self._reading = asyncio.create_task(self._read_loop(), name="raw-amqp-reader")
        await self._rpc(method_frame(CHANNEL, CHANNEL_OPEN, shortstr("")), CHANNEL_OPEN_OK)
        self._channel_open = True
        await self._rpc(method_frame(CHANNEL, CONFIRM_SELECT, b"\x00"), CONFIRM_SELECT_OK)

    async def close(self) -> None:
        """Close the channel and the connection politely if they are still open; idempotent."""
        reply = struct.pack(">H", 200) + shortstr("bye") + struct.pack(">HH", 0, 0)
        try:
            with contextlib.suppress(RawAmqpError, TimeoutError, ConnectionError):
                if self._channel_open:
                    self._channel_open = False
                    await self._rpc(method_frame(CHANNEL, CHANNEL_CLOSE, reply), CHANNEL_CLOSE_OK)
                if self._connection_open:
                    self._connection_open = False
                    await self._rpc(method_frame(0, CONNECTION_CLOSE, reply), CONNECTION_CLOSE_OK)
        finally:
            if self._reading is not None:
                self._reading.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._reading
            if self._writer is not None:
                self._writer.close()
                with contextlib.suppress(Exception):
                    await self._writer.wait_closed()
            self._closed = self._closed or BrokerClosed("connection", 0, "closed by the client", (0, 0))

    # -- publishing --

    async def publish(
        self,
        exchange: str | bytes,
        routing_key: str | bytes,
        body: bytes = b"",
        *,
        properties: Mapping[str, Any] | None = None,
        headers: Mapping[str | bytes, Any] | None = None,
        mandatory: bool = False,
    ) -> int:
        """Publish one message and wait for the broker's ack; its delivery tag.

        ``properties``: AMQP basic property names (``content_type``, ``type``, ``message_id``,
        ``delivery_mode``, ``timestamp``, ...) to values; a shortstr property takes ``str`` or any
        ``bytes`` up to 255. ``headers`` is the field table (or ``properties["headers"]``, not both);
        keys are ``str`` or ``bytes``, ``bytes``/``str`` values become longstrs ('S').
        Raises :class:`BrokerClosed`, :class:`PublishNacked`, :class:`PublishReturned`.
        """
        props = dict(properties or {})
        if headers is not None:
            if props.get("headers") is not None:
                raise ValueError("headers given twice: as headers= and as properties['headers']")
            props["headers"] = headers
        arguments = (
            struct.pack(">H", 0) + shortstr(exchange) + shortstr(routing_key) + bytes([1 if mandatory else 0])
        )
        frames = [method_frame(CHANNEL, BASIC_PUBLISH, arguments)]
        frames += content_frames(CHANNEL, bytes(body), props, self.frame_max)
        async with self._lock:
            self._raise_if_closed()
            self._delivery_tag += 1
            tag = self._delivery_tag
            self._returned = None
            self._confirm = asyncio.get_running_loop().create_future()
            try:
                assert self._writer is not None
                self._writer.writelines(frames)
                await self._writer.drain()
                await asyncio.wait_for(asyncio.shield(self._confirm), self.timeout)
            finally:
                self._confirm = None
        return tag

    # -- internals --

    def _send(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)

    def _raise_if_closed(self) -> None:
        if self._closed is not None:
            raise self._closed

    async def _read_frame(self) -> Frame:
        assert self._reader is not None
        try:
            head = await self._reader.readexactly(7)
            kind, channel, size = struct.unpack(">BHI", head)
            payload = await self._reader.readexactly(size)
            end = await self._reader.readexactly(1)
        except asyncio.IncompleteReadError as error:
            raise BrokerClosed("connection", 0, "socket closed without connection.close", (0, 0)) from error
        if end[0] != FRAME_END:
            raise RawAmqpError(f"bad frame end {end!r}")
        return Frame(kind, channel, payload)

    async def _expect_during_handshake(self, method: tuple[int, int]) -> Frame:
        """Before the reader task runs: the next method frame, which must be ``method``."""
        assert self._writer is not None
        await self._writer.drain()
        while True:
            received = await asyncio.wait_for(self._read_frame(), self.timeout)
            if received.kind == FRAME_HEARTBEAT:
                continue
            if received.kind == FRAME_METHOD and received.method == CONNECTION_CLOSE:
                self._send(method_frame(0, CONNECTION_CLOSE_OK))
                self._closed = _close_arguments("connection", received.arguments)
                raise self._closed
            if received.kind != FRAME_METHOD or received.method != method:
                raise RawAmqpError(f"expected method {method}, got frame {received}")
            return received

    async def _rpc(self, request: bytes, reply: tuple[int, int]) -> Frame:
        """Send a synchronous method and wait for its reply (channel.close while waiting raises)."""
        self._send(request)
        assert self._writer is not None and self._reading is not None
        await self._writer.drain()
        get = asyncio.ensure_future(self._replies.get())
        self._rpc_pending = True
        try:
            done, _ = await asyncio.wait(
                {get, self._reading}, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            self._rpc_pending = False
        if get not in done:
            get.cancel()
            if self._reading.done():
                self._raise_if_closed()
            raise TimeoutError(f"no {reply} from the broker in {self.timeout}s")
        received = get.result()
        if received.method == CHANNEL_CLOSE:
            self._raise_if_closed()
        if received.method != reply:
            raise RawAmqpError(f"expected method {reply}, got {received.method}")
        return received

    async def _read_loop(self) -> None:
        try:
            while True:
                received = await self._read_frame()
                self._dispatch(received)
        except BrokerClosed as closed:
            self._connection_open = self._channel_open = False
            self._fail(closed)
        except Exception as error:  # a bug here must not leave publish() waiting forever
            self._connection_open = self._channel_open = False
            self._fail(BrokerClosed("connection", 0, f"reader failed: {error!r}", (0, 0)))

    def _dispatch(self, received: Frame) -> None:
        if received.kind == FRAME_HEARTBEAT:
            return
        if received.kind in (FRAME_HEADER, FRAME_BODY):
            return  # the content of a basic.return: not kept
        method = received.method
        if method == CONNECTION_CLOSE:
            self._send(method_frame(0, CONNECTION_CLOSE_OK))
            self._connection_open = self._channel_open = False
            raise _close_arguments("connection", received.arguments)
        if method == CHANNEL_CLOSE:
            self._send(method_frame(CHANNEL, CHANNEL_CLOSE_OK))
            self._channel_open = False
            self._fail(_close_arguments("channel", received.arguments))
            if self._rpc_pending:
                self._replies.put_nowait(received)  # wakes the waiting _rpc, which raises
            return
        if method in (BASIC_ACK, BASIC_NACK):
            (tag,) = struct.unpack_from(">Q", received.arguments, 0)  # "multiple": one in flight anyway
            if self._confirm is not None and not self._confirm.done() and tag >= self._delivery_tag:
                if method == BASIC_NACK:
                    self._confirm.set_exception(PublishNacked(f"basic.nack for delivery tag {tag}"))
                elif self._returned is not None:
                    self._confirm.set_exception(self._returned)
                else:
                    self._confirm.set_result(None)
            return
        if method == BASIC_RETURN:
            (reply_code,) = struct.unpack_from(">H", received.arguments, 0)
            reply_text, _ = _read_shortstr(received.arguments, 2)
            self._returned = PublishReturned(reply_code, reply_text)
            return
        self._replies.put_nowait(received)

    def _fail(self, closed: BrokerClosed) -> None:
        self._closed = self._closed or closed
        if self._confirm is not None and not self._confirm.done():
            self._confirm.set_exception(closed)
