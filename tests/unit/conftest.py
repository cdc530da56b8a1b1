"""What several unit test modules share, made once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit import user_workflow
from tests.unit.readme_program import README, program
from tests.unit.strict_typing import README_PROGRAM, USER_MODULE, StrictTyping, mypy_strict


@pytest.fixture(scope="session")
def strict_typing(tmp_path_factory: pytest.TempPathFactory) -> StrictTyping:
    """The README's program and the public API's user module, type-checked in one mypy run (its
    tests share the xdist group ``mypy``, so that one worker runs it once)."""
    directory = tmp_path_factory.mktemp("strict-typing")
    (directory / USER_MODULE).write_text(Path(user_workflow.__file__).read_text())
    (directory / README_PROGRAM).write_text(program(README.read_text()))
    return mypy_strict(directory, (USER_MODULE, README_PROGRAM), directory / ".mypy_cache")
