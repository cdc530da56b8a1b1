"""``check_json`` walks a body twice only when it is wrong: its quick walk must pass exactly what
the full walk passes, or a body PostgreSQL cannot store would reach the commit (or a good one be
refused)."""

from __future__ import annotations

import enum
from typing import Any

import pytest

from orchestrator.core.ingress import MAX_DEPTH, _check_json, _storable, check_json


class Colour(enum.StrEnum):
    RED = "red"


def nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


CASES: list[Any] = [
    {"order_id": "o-1", "lines": [{"sku": "s", "qty": 2}], "total": 10.5, "gift": False, "note": None},
    "plain",
    "ünïcode ✓",
    "nul \x00 inside",
    {"nul\x00key": 1},
    "lone \ud800 surrogate",
    {"lone \udc00 key": 1},
    2**63 - 1,
    2**64 - 1,
    2**64,
    -(2**63),
    -(2**63) - 1,
    float("nan"),
    float("inf"),
    1e308,
    True,
    nested(MAX_DEPTH, 1),
    nested(MAX_DEPTH, {}),
    nested(MAX_DEPTH, {"b": 1}),
    nested(MAX_DEPTH + 1, 1),
    nested(MAX_DEPTH - 1, [1, [2]]),
    nested(MAX_DEPTH, []),
    nested(MAX_DEPTH, [1]),
    (1, "\x00"),
    Colour.RED,
    [Colour.RED, {"k": Colour.RED}],
]


def full_walk(value: Any) -> str | None:
    try:
        _check_json(value, "data", 0, MAX_DEPTH)
    except ValueError as error:
        return str(error)
    return None


@pytest.mark.parametrize("value", CASES, ids=range(len(CASES)))
def test_the_quick_walk_passes_what_the_full_walk_passes_and_the_errors_are_the_full_walks(
    value: Any,
) -> None:
    said = full_walk(value)
    if _storable(value, 0, MAX_DEPTH):
        assert said is None
    try:
        check_json(value)
    except ValueError as error:
        assert str(error) == said
    else:
        assert said is None


def test_the_quick_walk_refuses_what_the_database_cannot_store() -> None:
    for bad in ("\x00", {"\x00": 1}, "\ud800", 2**64, float("nan"), nested(MAX_DEPTH + 1, 1)):
        assert not _storable(bad, 0, MAX_DEPTH)
        with pytest.raises(ValueError):
            check_json(bad)
