"""The one cursor codec of the paged reads (``GET /sagas``, ``GET /dead-letters``, the shell):
a position in an index ordered by a time and a tie-breaking id, opaque to the caller."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import TypeVar

import orjson

__all__ = ["BadCursor", "decode_cursor", "encode_cursor"]

Id = TypeVar("Id", str, int)


class BadCursor(ValueError):
    """A cursor this API did not hand out (or one mangled on the way back)."""


def encode_cursor(at: datetime, tiebreak: str | int) -> str:
    raw = orjson.dumps([at.isoformat(), tiebreak])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, kind: type[Id]) -> tuple[datetime, Id]:
    """The time (aware UTC, as the database compares) and the id of ``kind`` a cursor holds;
    :class:`BadCursor` for anything else, out of range included."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, tiebreak = orjson.loads(raw)
        if not isinstance(at, str) or type(tiebreak) is not kind:
            raise ValueError(cursor)
        if isinstance(tiebreak, str) and "\x00" in tiebreak:
            raise ValueError(cursor)
        if isinstance(tiebreak, int) and not 0 <= tiebreak < 2**63:
            raise ValueError(cursor)
        when = datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError(cursor)
        return when.astimezone(UTC), tiebreak
    except (ValueError, TypeError, OverflowError, binascii.Error, orjson.JSONDecodeError):
        raise BadCursor("cursor is not one this API handed out: pass next_cursor back unchanged") from None
