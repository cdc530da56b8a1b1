"""Teaching the AMQP client (pamqp, under aiormq) to read whatever the broker hands it.

pamqp decodes a ``shortstr`` (``type``, ``message_id``, header keys, ...) as strict UTF-8 and a
timestamp as a ``datetime``, and raises on anything else; aiormq then drops the connection, the
broker hands the same message back, and every consumer loops on it forever. Other clients (Java,
Go, Node) send such bytes without complaint. Installed once, on import, before any connection:

- a short string that is not UTF-8 is decoded with ``surrogateescape`` (and encoded back to the
  same bytes), so it reaches :func:`orchestrator.core.ingress.envelope`, which refuses it like any bad
  input (a lone surrogate is not text);
- a content header that cannot be decoded at all becomes :class:`UndecodableProperties`, which
  keeps its bytes, and the message is dead-lettered.

Valid input decodes and encodes exactly as before.
"""

from __future__ import annotations

import struct

from pamqp import commands, header

__all__ = ["UndecodableProperties"]


def _tolerate_undecodable_text() -> None:
    """Let the AMQP client read a property or a header key that is not UTF-8, instead of failing.

    pamqp decodes a ``shortstr`` (``type``, ``message_id``, header keys, ...) as strict UTF-8 and
    raises on anything else; aiormq then drops the connection, the broker hands the same message
    back, and the consumer loops on it forever. Decoded with ``surrogateescape`` instead, such a
    value reaches :func:`orchestrator.core.ingress.envelope`, which refuses it like any bad input (a
    lone surrogate is not text), and the message is dead-lettered with the reason. Valid UTF-8
    decodes exactly as before."""
    from pamqp import common
    from pamqp import decode as pamqp_decode

    if getattr(pamqp_decode, "_orchestrator_tolerant", False):
        return

    def short_str(value: bytes) -> tuple[int, str]:
        try:
            length = common.Struct.byte.unpack(value[0:1])[0]
        except (struct.error, TypeError) as err:
            raise ValueError("Could not unpack short string value") from err
        return length + 1, value[1 : length + 1].decode("utf-8", "surrogateescape")

    def field_table(value: bytes) -> tuple[int, common.FieldTable]:
        try:
            length = common.Struct.integer.unpack(value[0:4])[0]
            offset = 4
            data: dict[str, common.FieldValue] = {}
            end = offset + length
            if end > len(value):
                raise ValueError("Field table length exceeds available data")
            while offset < end:
                key_length = common.Struct.byte.unpack_from(value, offset)[0]
                offset += 1
                if offset + key_length > end:
                    raise ValueError("Field table key length exceeds data")
                key = value[offset : offset + key_length].decode("utf-8", "surrogateescape")
                offset += key_length
                consumed, result = pamqp_decode.embedded_value(value[offset:])
                offset += consumed
                data[key] = result
            return end, data
        except (struct.error, TypeError) as err:
            raise ValueError("Could not unpack data") from err

    pamqp_decode.METHODS["shortstr"] = short_str
    pamqp_decode.METHODS["table"] = field_table
    pamqp_decode.TABLE_MAPPING[b"F"] = field_table
    pamqp_decode.short_str = short_str
    pamqp_decode.field_table = field_table
    pamqp_decode._orchestrator_tolerant = True  # type: ignore[attr-defined]
    _encode_what_was_decoded()
    _keep_what_cannot_be_decoded()


class UndecodableProperties(commands.Basic.Properties):
    """The properties of a message whose content header the client library cannot decode at all
    (a timestamp past the year 9999, a header table nested past Python's recursion limit): its
    ``error`` and its ``raw`` header bytes, so that it is dead-lettered like any bad message."""

    error: str
    raw: bytes

    def marshal(self) -> bytes:
        """The bytes as they came: a message moved (``orchestrator migrate``) stays whole."""
        return self.raw


def _keep_what_cannot_be_decoded() -> None:
    """Without this, one such content header kills the consuming connection, and the broker hands
    the same message back to the next one, forever."""
    original = header.ContentHeader.unmarshal

    def unmarshal(self: header.ContentHeader, data: bytes) -> None:
        try:
            original(self, data)
        except Exception as error:
            self.class_id, self.weight, self.body_size = struct.unpack(">HHQ", data[0:12])
            properties = UndecodableProperties()
            properties.error = f"{type(error).__name__}: {error}"[:300]
            properties.raw = bytes(data[12:])
            self.properties = properties

    header.ContentHeader.unmarshal = unmarshal  # type: ignore[method-assign]


def _encode_what_was_decoded() -> None:
    """The other half: a value decoded with ``surrogateescape`` encodes back to the very bytes it
    came as, so that moving a message (``orchestrator migrate``) keeps it whole."""
    from pamqp import common
    from pamqp import encode as pamqp_encode

    def _string(encoder: struct.Struct, value: str) -> bytes:
        if not isinstance(value, str):
            raise TypeError(f"str required, received {type(value)}")
        encoded = value.encode("utf-8", "surrogateescape")
        max_length = 255 if encoder is common.Struct.byte else 4294967295
        if len(encoded) > max_length:
            raise TypeError(f"string exceeds maximum length of {max_length} bytes")
        return encoder.pack(len(encoded)) + encoded

    def field_table(value: common.FieldTable) -> bytes:
        if not value:
            return common.Struct.integer.pack(0)
        if not isinstance(value, dict):
            raise TypeError(f"dict required, received {type(value)}")
        data = []
        for key, item in sorted(value.items()):
            data.append(_string(common.Struct.byte, key))
            try:
                data.append(pamqp_encode.encode_table_value(item))
            except TypeError as err:
                raise TypeError(f"{key!r} error: {err}") from err
        output = b"".join(data)
        return common.Struct.integer.pack(len(output)) + output

    pamqp_encode._string = _string
    pamqp_encode.field_table = field_table
    pamqp_encode.METHODS["table"] = field_table


_tolerate_undecodable_text()
