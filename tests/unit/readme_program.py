"""The README's Python code as one program: its ```python blocks, read in order (each may build on
the ones before). A block that cannot run is preceded by ``<!-- not run: why -->``."""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
#: a fence, indented as in a list item, and the line before it (for the not-run marker)
FENCE = re.compile(r"(?P<before>[^\n]*)\n\n?(?P<indent>[ \t]*)```python\n(?P<body>.*?)\n(?P=indent)```", re.S)
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<why>[^>]+?)\s*-->")
#: the blocks the README marks as not run, by their reason: kept deliberately few
EXPECTED_NOT_RUN: list[str] = []


@dataclass(frozen=True)
class Block:
    line: int
    code: str
    not_run: str | None


def blocks(text: str) -> list[Block]:
    found = []
    for match in FENCE.finditer(text):
        marker = NOT_RUN.search(match["before"])
        line = text.count("\n", 0, match.start("body")) + 1
        indent = len(match["indent"])
        body = textwrap.dedent("\n".join(row[indent:] for row in match["body"].split("\n")))
        found.append(Block(line, body, marker["why"] if marker else None))
    return found


def program(text: str) -> str:
    """The blocks that run, as one module; each starts at its own line of the README (blank lines
    before it), so that a traceback or a mypy error names the README's line."""
    lines: list[str] = []
    for block in blocks(text):
        if block.not_run is None:
            lines.extend([""] * (block.line - 1 - len(lines)))
            lines.extend(block.code.split("\n"))
    return "\n".join(lines) + "\n"
