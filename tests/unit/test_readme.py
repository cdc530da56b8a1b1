"""The README's Python code runs: its ```python blocks, read in order, are one program (each may
build on the ones before), executed here and type-checked with ``mypy --strict``, so the README
cannot drift from the code. A block that cannot run here is preceded by ``<!-- not run: why -->``;
there are none, and a new one must be counted below on purpose."""

from __future__ import annotations

import re
import sys
import types

import pytest

from tests.unit.readme_program import EXPECTED_NOT_RUN, README, blocks, program
from tests.unit.strict_typing import README_PROGRAM, StrictTyping


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


@pytest.mark.xdist_group("mypy")
def test_the_readme_program_passes_mypy_strict(strict_typing: StrictTyping) -> None:
    errors = strict_typing.errors_in(README_PROGRAM)
    assert errors == [], "\n".join(errors).replace(README_PROGRAM, "README.md")


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
