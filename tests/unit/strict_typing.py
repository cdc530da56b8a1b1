"""Type-check a user's files as a project of its own would: ``mypy --strict``, none of this
repository's configuration, the orchestrator found where it is installed.

The files the unit tier checks (the README's program, the public API's user module) are checked
in one mypy run per test session (``strict_typing`` in ``tests/unit/conftest.py``): each run
analyses the orchestrator package from a cold cache, which is most of its time."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import orchestrator

#: the user files the unit tier type-checks, by the name mypy reports them under
USER_MODULE = "my_workflows.py"
README_PROGRAM = "readme_program.py"


@dataclass(frozen=True)
class StrictTyping:
    """One mypy run over several files, read per file."""

    result: subprocess.CompletedProcess[str]
    files: tuple[str, ...]

    def errors_in(self, name: str) -> list[str]:
        """mypy's lines about ``name``; empty when it passed. A run that did not check every
        file (a crash, a missing file) is an error of each."""
        checked = f"in {len(self.files)} source files" in self.result.stdout or (
            f"(checked {len(self.files)} source files)" in self.result.stdout
        )
        if not checked or self.result.returncode not in (0, 1):
            return [f"mypy did not check {self.files}: {self.result.stdout}{self.result.stderr}"]
        return [line for line in self.result.stdout.splitlines() if line.startswith(f"{name}:")]


def mypy_strict(directory: Path, names: tuple[str, ...], cache_dir: Path) -> StrictTyping:
    """Run mypy on ``names`` in ``directory``, from there, so that nothing of this repository but
    the installed ``orchestrator`` package is in sight."""
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
    root = Path(orchestrator.__file__).resolve().parent.parent
    if root.name != "site-packages":
        # An editable install is an import hook, which mypy does not run: point it at the source.
        # (mypy refuses site-packages in MYPYPATH; a wheel install is found there by itself.)
        env["MYPYPATH"] = str(root)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file=",
            "--cache-dir",
            str(cache_dir),
            *names,
        ],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return StrictTyping(result, names)
