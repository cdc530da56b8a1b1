"""The README's Python code runs: its ```python blocks, read in order, are one program (each may
build on the ones before), executed here and type-checked with ``mypy --strict``, so the README
cannot drift from the code. A block that cannot run here is preceded by ``<!-- not run: why -->``;
there are none, and a new one must be counted below on purpose."""

from __future__ import annotations

import re
import sys
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path

from tests.unit.strict_typing import mypy_strict

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


def test_the_readme_has_its_python_blocks_and_marks_few_as_not_run() -> None:
    found = blocks(README.read_text())
    assert len(found) >= 8
    assert sorted(b.not_run for b in found if b.not_run is not None) == sorted(EXPECTED_NOT_RUN)
    text = README.read_text()
    assert text.count("```python") == len(found), "a python block the extraction missed"


def test_the_readme_program_runs() -> None:
    module = types.ModuleType("readme_program")
    module.__file__ = str(README)
    sys.modules[module.__name__] = module
    try:
        exec(compile(program(README.read_text()), str(README), "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    assert {"OrderSaga", "PatientOrderSaga", "escrow", "kit"} <= set(vars(module))


def test_the_readme_program_passes_mypy_strict(tmp_path: Path) -> None:
    source = tmp_path / "readme_program.py"
    source.write_text(program(README.read_text()))
    result = mypy_strict(source, tmp_path / ".mypy_cache")
    assert result.returncode == 0, result.stdout.replace("readme_program.py", "README.md") + result.stderr


def test_every_curl_that_sends_a_body_says_it_is_json() -> None:
    """FastAPI reads a body sent as curl's default form encoding as no JSON at all: 422."""
    docs = [README, *sorted((README.parent / "docs").glob("*.md"))]
    commands = [
        (path.name, command)
        for path in docs
        for command in path.read_text().replace("\\\n", " ").splitlines()
        if command.lstrip().startswith("curl ")
    ]
    posting = [(name, c) for name, c in commands if re.search(r"\s(-d|--data\S*)\s", c)]
    assert len(posting) >= 2
    assert [(name, c) for name, c in posting if "content-type: application/json" not in c.lower()] == []
