"""What may come in, by any way in (AMQP, REST, an operator's action): one set of rules.

Everything here is about what PostgreSQL can store and what the process can afford to hold: no
NUL, no lone surrogate, no integer beyond 64 bits, bounded sizes and depths, keys that fit their
index. A message that breaks a rule is refused with a reason code from a fixed list (the
dead-letter table and the metrics are keyed by it; docs/protocol.md lists every code) and a short
detail that never quotes a payload whole.

Pure: no I/O, and nothing here raises past its caller except :class:`Refused`.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_DEPTH",
    "MAX_DETAIL",
    "MAX_KEY_LENGTH",
    "DeadLetter",
    "Envelope",
    "Limits",
    "Reason",
    "Refused",
    "check_json",
    "check_text",
    "clip",
    "dead_letter_of",
    "envelope",
    "printable",
    "printable_json",
    "text_property",
    "trace_headers",
    "trace_of",
]

#: how deep a JSON body or a header table may nest
MAX_DEPTH = 32
#: the longest business key (the REST API's limit too); the saga index holds 500 4-byte characters
MAX_KEY_LENGTH = 500
#: the longest detail a refusal carries: a reason, not a copy of the message
MAX_DETAIL = 500
#: the integers orjson encodes, and so the integers a saga's data may hold
INT_RANGE = (-(2**63), 2**64 - 1)


class Reason(enum.StrEnum):
    """Why a message was dead-lettered. A fixed list: metrics and operators filter by it."""

    #: a property (type, message_id, correlation_id, ...) is not UTF-8, holds a NUL, or is too long
    BAD_PROPERTY = "bad_property"
    #: a header key or value is not UTF-8 or holds a NUL, or the headers are too large or too deep
    BAD_HEADER = "bad_header"
    #: the body is over ORCHESTRATOR_MAX_MESSAGE_BYTES; it was not parsed
    TOO_LARGE = "too_large"
    NOT_JSON = "not_json"
    NOT_AN_OBJECT = "not_an_object"
    #: the body holds what PostgreSQL cannot store (a NUL) or nests deeper than 32 levels (a lone
    #: surrogate or NaN is not JSON to the parser; REST refuses a 65-bit integer by this rule too)
    UNSTORABLE = "unstorable"
    #: the workflow's key field is longer than 500 characters
    KEY_TOO_LONG = "key_too_long"
    NO_TYPE = "no_type"
    NO_MESSAGE_ID = "no_message_id"
    #: published to the events exchange with a routing key other than its type: the broker's
    #: topic permissions bind routing keys, so a type must be its routing key to be bound too
    ROUTING_KEY = "routing_key"
    #: its user_id is not the broker user ORCHESTRATOR_SENDERS gives its service (or none is given)
    SENDER = "sender"
    #: no workflow takes a message of this type
    UNKNOWN_TYPE = "unknown_type"
    #: the x-workflow header names no workflow, or one that takes no such message
    UNKNOWN_WORKFLOW = "unknown_workflow"
    #: the correlation id, or the key of an event that does not start a saga, names no saga
    UNKNOWN_SAGA = "unknown_saga"
    #: a start event without the workflow's key
    NO_KEY = "no_key"
    #: the body does not fit its type's schema
    SCHEMA = "schema"
    #: its x-schema-version is newer than its type's class reads, or an upcaster is missing on
    #: the way from it to the class's (docs/protocol.md, section 5)
    SCHEMA_VERSION = "schema_version"
    #: an upcaster raised on its body, or returned what is not a storable JSON object
    UPCAST_FAILED = "upcast_failed"
    #: a reply whose key field names another saga than the one its correlation id names
    #: (journaled on that saga as ignored, with this reason)
    KEY_MISMATCH = "key_mismatch"
    #: it names a saga (by correlation id or key) and answers none of the commands that saga
    #: sent (its message_id is no reply id of docs/protocol.md, section 6), where it starts none
    NOT_AWAITED = "not_awaited"
    #: the saga holds ORCHESTRATOR_MAX_PARKED early events already
    PARKING_FULL = "parking_full"
    #: PostgreSQL refused to store it (a data exception or a program limit); detail is its error
    DATABASE_REFUSED = "database_refused"
    #: taking it failed the same way on every try; detail is the last error
    FAILED_REPEATEDLY = "failed_repeatedly"
    #: a command of ours the broker would not route (no queue bound for its type), every try
    UNROUTABLE = "unroutable"
    #: the broker's own reasons, from the x-death header of what reaches {ns}.dead-letter:
    #: a message redelivered past the queue's delivery limit (one the client could not take)
    DELIVERY_LIMIT = "delivery_limit"
    #: a participant rejected it (docs/protocol.md section 6)
    REJECTED = "rejected"
    EXPIRED = "expired"
    MAXLEN = "maxlen"
    #: a dead letter published to {ns}.dead by someone else, with no reason the broker gave
    UNKNOWN = "unknown"


class Refused(ValueError):
    """A message breaks a rule; it is dead-lettered with ``reason`` and ``detail``."""

    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason = reason
        self.detail = clip(printable(detail), MAX_DETAIL)
        super().__init__(f"{reason}: {self.detail}")

    def without_frames(self) -> Refused:
        """This refusal, kept as data: without its traceback, nor the error it was raised from
        (and that one's traceback), whose frames hold whatever their locals held."""
        self.__traceback__ = self.__context__ = None
        return self


@dataclass(frozen=True)
class Limits:
    """The sizes a running service accepts, and what it lets by during a migration, from the
    settings."""

    max_message_bytes: int = 1024 * 1024
    max_header_bytes: int = 16 * 1024
    max_depth: int = MAX_DEPTH
    max_key_length: int = MAX_KEY_LENGTH
    #: services (a type's prefix) whose replies are taken without a section 6 reply id, while
    #: they move to deriving one (ORCHESTRATOR_UNCHECKED_REPLIES): each is logged and counted
    unchecked_replies: frozenset[str] = frozenset()
    #: the exchange participants publish to (``{ns}.events``): what comes through it must have
    #: its type as its routing key ("": not checked, as in tests of the rules alone)
    events_exchange: str = ""
    #: service (a type's prefix) -> the broker user whose ``user_id`` its events through
    #: ``events_exchange`` must carry (ORCHESTRATOR_SENDERS); None: not checked
    senders: Mapping[str, str] | None = None


#: the limits when the settings say nothing else
DEFAULT_LIMITS = Limits()


def check_text(value: str, where: str = "text") -> str:
    """``value``, if PostgreSQL can store it in ``text`` or ``jsonb``; ValueError otherwise."""
    if "\x00" in value:
        raise ValueError(f"{where} must not contain NUL characters")
    if value.isascii():  # no lone surrogate in it: nothing to encode to know
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{where} must be valid Unicode (no lone surrogates)") from None
    return value


def check_json(value: Any, path: str = "data", depth: int = 0, max_depth: int = MAX_DEPTH) -> None:
    """ValueError, naming the first place, if decoded JSON holds what cannot be stored.

    Every message's body and every decision's data pass here, and nearly all of them are fine:
    they are walked once without naming places (:func:`_storable`), and only one that is not is
    walked again to say where."""
    if _storable(value, depth, max_depth):
        return
    _check_json(value, path, depth, max_depth)


def _storable(value: Any, depth: int, max_depth: int) -> bool:
    """Whether ``value`` can be stored (what :func:`_check_json` would pass), cheaply: an ASCII
    string holds no lone surrogate, so only a NUL needs looking for in it."""
    kind = type(value)
    if kind is str:
        return "\x00" not in value and (value.isascii() or _encodable(value))
    if kind is dict:
        if depth >= max_depth and value:
            return False
        for key, item in value.items():
            if type(key) is not str or "\x00" in key or not (key.isascii() or _encodable(key)):
                return False
            if not _storable(item, depth + 1, max_depth):
                return False
        return True
    if kind is list:
        if depth >= max_depth and value:
            return False
        return all(_storable(item, depth + 1, max_depth) for item in value)
    if kind is bool or value is None:
        return True
    if kind is int:
        return bool(INT_RANGE[0] <= value <= INT_RANGE[1])
    if kind is float:
        return math.isfinite(value)
    return False  # a subclass, or anything else: the full walk decides


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_json(value: Any, path: str, depth: int, max_depth: int) -> None:
    if depth > max_depth:
        raise ValueError(f"{clip(path, 100)} is nested deeper than {max_depth} levels")
    if isinstance(value, str):
        check_text(value, clip(path, 100))
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not INT_RANGE[0] <= value <= INT_RANGE[1]:
            raise ValueError(f"{clip(path, 100)} is an integer beyond 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{clip(path, 100)} must be a finite number")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key, f"a key in {clip(path, 100)}")
            _check_json(item, f"{path}.{key}", depth + 1, max_depth)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json(item, f"{path}[{index}]", depth + 1, max_depth)


def clip(text: str, limit: int) -> str:
    """At most ``limit`` characters, saying how many were cut."""
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    return f"{text[:limit]}…({cut} more)"


_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(value: object) -> str:
    """Text safe to store and to log on one line, whatever ``value`` was: bytes that are not
    UTF-8, lone surrogates and control characters become visible escapes (``\\xff``, ``\\n``)."""
    if isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value).decode("utf-8", "backslashreplace")
    elif isinstance(value, str):
        if value.isascii() and value.isprintable():  # every exchange and routing key, nearly
            return value
        text = value
    else:
        text = repr(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def printable_json(value: object, budget: int = 16 * 1024, depth: int = 0) -> Any:
    """A JSON-safe, storable, bounded copy of a property or header value, for the dead-letter
    table: an operator must see what came, but a hostile header must not become a huge row."""
    if depth > MAX_DEPTH:
        return "…(nested deeper)"
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if INT_RANGE[0] <= value <= INT_RANGE[1] else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if budget <= 0:
                out["…"] = f"{len(value) - len(out)} more"
                break
            safe_key = clip(printable(key), 200)
            out[safe_key] = printable_json(item, budget, depth + 1)
            budget -= len(safe_key) + len(str(out[safe_key]))
        return out
    if isinstance(value, list | tuple):
        items: list[Any] = []
        for item in value:
            if budget <= 0:
                items.append(f"…({len(value) - len(items)} more)")
                break
            items.append(printable_json(item, budget, depth + 1))
            budget -= len(str(items[-1]))
        return items
    return clip(printable(value), max(budget, 100))


@dataclass(frozen=True)
class Envelope:
    """A message as it came off the wire. ``refused`` is set when it broke a rule before it was
    even parsed; it is then dead-lettered as it is."""

    body: bytes
    type: str | None = None
    message_id: str | None = None
    correlation_id: str | None = None
    workflow: str | None = None
    refused: Refused | None = None
    exchange: str = ""
    routing_key: str = ""
    #: every property as received (headers included, under "headers"), for the dead-letter record
    properties: Mapping[str, Any] = field(default_factory=dict)
    #: the schema version its body was written in (header x-schema-version; absent: 1)
    schema_version: int = 1
    #: its W3C trace context (headers traceparent, tracestate), opaque: :func:`trace_of`
    trace: str | None = None
    #: the saga that starts it as its child (header x-parent-saga), read only from a message the
    #: orchestrator published into its own queue (orchestrator.core.children)
    parent: str | None = None

    def refuse(self, refused: Refused) -> Envelope:
        return replace(self, refused=refused)


#: the string properties a delivery may carry; each must be text
_TEXT_PROPERTIES = (
    "type",
    "message_id",
    "correlation_id",
    "content_type",
    "content_encoding",
    "reply_to",
    "expiration",
    "user_id",
    "app_id",
)
#: properties AMQP defines as a shortstr: 255 bytes at most
_MAX_PROPERTY = 255


def text_property(name: str, value: object) -> str | None:
    """A text property (``type``, ``message_id``, ...) as the rules take it, None when absent:
    UTF-8 without NUL (which PostgreSQL cannot store), a shortstr's 255 bytes at most;
    :class:`Refused` (``bad_property``) otherwise. The participant kit applies it too."""
    if value is None or value == "":
        return None
    if isinstance(value, bytes | bytearray):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(Reason.BAD_PROPERTY, f"{name} is not UTF-8: {printable(value)}") from None
    if not isinstance(value, str):
        raise Refused(Reason.BAD_PROPERTY, f"{name} is not text but {type(value).__name__}")
    try:
        check_text(value, name)
    except ValueError as error:
        raise Refused(Reason.BAD_PROPERTY, f"{error}: {printable(value)}") from None
    if len(value) > _MAX_PROPERTY // 4 and len(value.encode("utf-8")) > _MAX_PROPERTY:
        raise Refused(Reason.BAD_PROPERTY, f"{name} is longer than {_MAX_PROPERTY} bytes")
    return value


def _check_header(value: object, path: str, depth: int, budget: list[int]) -> None:
    """Every key and string in a header table must be storable text; the whole stays small."""
    if depth > MAX_DEPTH:
        raise Refused(Reason.BAD_HEADER, f"{clip(path, 100)} is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, bytes | bytearray):
        budget[0] -= len(value)
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(Reason.BAD_HEADER, f"{clip(path, 100)} is not UTF-8") from None
    if isinstance(value, str):
        budget[0] -= len(value)
        try:
            check_text(value)
        except ValueError:
            try:
                check_text(value, clip(path, 100))  # again, to say where (rare: only when refused)
            except ValueError as error:
                raise Refused(Reason.BAD_HEADER, str(error)) from None
    elif type(value) is dict or isinstance(value, Mapping):  # a dict, nearly always: no ABC check
        for key, item in value.items():
            if not isinstance(key, str):
                raise Refused(Reason.BAD_HEADER, f"a key in {clip(path, 100)} is not text")
            budget[0] -= len(key)
            try:
                check_text(key, f"a key in {clip(path, 100)}")
            except ValueError as error:
                raise Refused(Reason.BAD_HEADER, f"{error}: {printable(key)}") from None
            _check_header(item, f"{path}.{key}", depth + 1, budget)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_header(item, f"{path}[{index}]", depth + 1, budget)
    else:
        budget[0] -= 8
    if budget[0] < 0:
        raise Refused(Reason.BAD_HEADER, "the headers are too large")


def _schema_version(value: object) -> int:
    """The header ``x-schema-version``: an AMQP integer >= 1, or absent (1: senders from before
    schema versions). Text such as ``"2"`` is refused, not guessed at: one meaning per header."""
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int):
        raise Refused(Reason.BAD_HEADER, f"x-schema-version is not an integer but {type(value).__name__}")
    if not 1 <= value <= 2**31 - 1:
        raise Refused(Reason.BAD_HEADER, f"x-schema-version must be from 1 to 2147483647, not {value}")
    return value


#: the type prefix of the messages between sagas (orchestrator.core.children.INTERNAL)
_INTERNAL = "saga."


def _check_sender(type_: str, user_id: str | None, senders: Mapping[str, str]) -> None:
    """Refuse an event whose validated ``user_id`` is not its service's broker user: with one
    user per service, RabbitMQ vouches for the property, and the service is who sent it."""
    service = type_.split(".", 1)[0]
    expected = senders.get(service)
    if expected is None:
        raise Refused(
            Reason.SENDER, f"ORCHESTRATOR_SENDERS names no broker user for service {clip(service, 100)!r}"
        )
    if user_id != expected:
        said = "no user_id" if user_id is None else f"user_id {clip(user_id, 100)!r}"
        raise Refused(Reason.SENDER, f"{said}, but {service}'s events come from broker user {expected!r}")


def envelope(
    body: bytes,
    properties: Mapping[str, Any],
    exchange: str = "",
    routing_key: str = "",
    limits: Limits = DEFAULT_LIMITS,
) -> Envelope:
    """The envelope of a delivery, whatever its bytes; never raises. A property or header that
    breaks a rule, or a body over the size cap, gives a refused envelope (the body unparsed)."""
    kept = dict(properties)
    try:
        exchange, routing_key = printable(exchange), printable(routing_key)
        if len(body) > limits.max_message_bytes:
            raise Refused(
                Reason.TOO_LARGE,
                f"the body is {len(body)} bytes,"
                f" over ORCHESTRATOR_MAX_MESSAGE_BYTES={limits.max_message_bytes}",
            )
        texts = {name: text_property(name, properties.get(name)) for name in _TEXT_PROPERTIES}
        headers = properties.get("headers") or {}
        if type(headers) is not dict and not isinstance(headers, Mapping):
            raise Refused(Reason.BAD_HEADER, f"the headers are not a table but {type(headers).__name__}")
        _check_header(headers, "headers", 0, [limits.max_header_bytes])
        # moved straight into the queue (a hand-over, orchestrator migrate): only the orchestrator
        # writes to the default exchange, and checked the sender where the message first came in
        moved = not exchange
        if moved:  # where it was sent
            exchange = printable(headers.get("x-original-exchange") or "")
            routing_key = printable(headers.get("x-original-routing-key") or routing_key)
        workflow = headers.get("x-workflow")
        if isinstance(workflow, bytes | bytearray):
            workflow = bytes(workflow).decode("utf-8")  # _check_header proved it decodes
        if workflow is not None and not isinstance(workflow, str):
            raise Refused(Reason.BAD_HEADER, f"x-workflow is not text but {type(workflow).__name__}")
        if workflow is not None and len(workflow) > 200:
            raise Refused(Reason.BAD_HEADER, "x-workflow is longer than 200 characters")
        schema_version = _schema_version(headers.get("x-schema-version"))
        if (
            limits.events_exchange
            and exchange == limits.events_exchange
            and texts["type"] is not None
            and routing_key != texts["type"]
        ):
            raise Refused(
                Reason.ROUTING_KEY,
                f"published to {exchange} with routing key {clip(routing_key, 200)!r}, not its type"
                f" {texts['type']!r}: an event's routing key is its type (docs/protocol.md, section 3)",
            )
        if limits.senders is not None and not moved and exchange == limits.events_exchange and texts["type"]:
            _check_sender(texts["type"], texts["user_id"], limits.senders)
        # published by the orchestrator straight into its queue, not handed over from elsewhere
        own = not exchange
        if texts["type"] is not None and texts["type"].startswith(_INTERNAL) and not own:
            raise Refused(
                Reason.SENDER,
                f"{clip(texts['type'], 100)!r}: the saga service's messages come only from the"
                " orchestrator itself (docs/protocol.md, section 9)",
            )
        parent = headers.get("x-parent-saga") if own else None
        if isinstance(parent, bytes | bytearray):
            parent = bytes(parent).decode("utf-8")
        if parent is not None and (not isinstance(parent, str) or len(parent) > 200):
            raise Refused(Reason.BAD_HEADER, "x-parent-saga is not a saga id")
        traceparent = headers.get("traceparent")
        return Envelope(
            body=body,
            type=texts["type"],
            message_id=texts["message_id"],
            correlation_id=texts["correlation_id"],
            workflow=workflow or None,
            exchange=exchange,
            routing_key=routing_key,
            properties=kept,
            schema_version=schema_version,
            trace=trace_of(traceparent, headers.get("tracestate")) if traceparent is not None else None,
            parent=parent or None,
        )
    except Refused as broken:
        return Envelope(
            body=body, refused=broken, exchange=exchange, routing_key=routing_key, properties=kept
        )
    except Exception as error:  # a value of a kind no rule foresaw: still about this message only
        unforeseen = Refused(Reason.BAD_PROPERTY, f"cannot read the message: {type(error).__name__}: {error}")
        # where it came in, so that a hand-over never passes it for the orchestrator's own
        came = exchange if isinstance(exchange, str) else "?"
        return Envelope(body=body, refused=unforeseen, properties=kept, exchange=came or "?")


#: a W3C traceparent: version, trace id, parent id, flags (a later version may append fields)
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-[0-9a-f-]{0,200})?")
#: the longest tracestate carried on (W3C: 32 members of at most 256 characters; 512 keeps it small)
MAX_TRACESTATE = 512


def trace_of(traceparent: object, tracestate: object = None) -> str | None:
    """The trace context of a message (or an HTTP request) as one opaque string: the
    ``traceparent``, then the ``tracestate`` after a space when there is one. None when the
    traceparent is absent or malformed: a broken trace context never refuses a message, it is just
    not carried on. The string is stored (outbox, timers) and sent on as it is, so what carried it
    in never needs to know OpenTelemetry."""
    if isinstance(traceparent, bytes | bytearray):
        traceparent = bytes(traceparent).decode("ascii", "replace")
    if not isinstance(traceparent, str) or not _TRACEPARENT.fullmatch(traceparent):
        return None
    if traceparent.startswith("ff") or traceparent[3:35] == "0" * 32 or traceparent[36:52] == "0" * 16:
        return None  # invalid by the W3C rules: a new trace starts instead
    if isinstance(tracestate, bytes | bytearray):
        tracestate = bytes(tracestate).decode("ascii", "replace")
    if isinstance(tracestate, str) and tracestate and len(tracestate) <= MAX_TRACESTATE:
        state = tracestate.strip()
        if state and all(" " < c <= "~" or c == " " for c in state):
            return f"{traceparent} {state}"
    return traceparent


def trace_headers(trace: str | None) -> dict[str, str]:
    """The ``traceparent`` and ``tracestate`` headers of an opaque trace context (empty for None)."""
    if not trace:
        return {}
    parent, _, state = trace.partition(" ")
    return {"traceparent": parent, "tracestate": state} if state else {"traceparent": parent}


@dataclass(frozen=True)
class DeadLetter:
    """A message set aside with the reason, kept where an operator can list, show and replay it.

    Everything in it is storable and bounded whatever the message held: text made printable,
    properties and headers as bounded JSON, the body (raw bytes) up to the size cap."""

    reason: str
    detail: str
    #: "orchestrator" (refused here) or "broker" (taken from {ns}.dead-letter)
    source: str
    message_id: str | None
    message_type: str | None
    correlation_id: str | None
    exchange: str
    routing_key: str
    properties: dict[str, Any]
    body: bytes
    #: the body's size as received; more than ``len(body)`` when it was cut at the size cap
    body_size: int


def _property_text(value: object) -> str | None:
    return None if value is None or value == "" else clip(printable(value), 300)


def dead_letter_of(
    envelope: Envelope, refused: Refused, source: str = "orchestrator", limits: Limits = DEFAULT_LIMITS
) -> DeadLetter:
    """The record of a refused message. Never raises: it is how a bad message leaves."""
    properties = printable_json(dict(envelope.properties), budget=limits.max_header_bytes)
    return DeadLetter(
        reason=str(refused.reason),
        detail=refused.detail,
        source=source,
        message_id=_property_text(envelope.properties.get("message_id") or envelope.message_id),
        message_type=_property_text(envelope.properties.get("type") or envelope.type),
        correlation_id=_property_text(envelope.properties.get("correlation_id") or envelope.correlation_id),
        exchange=clip(printable(envelope.exchange), 300),
        routing_key=clip(printable(envelope.routing_key), 300),
        properties=properties if isinstance(properties, dict) else {},
        body=envelope.body[: limits.max_message_bytes],
        body_size=len(envelope.body),
    )
