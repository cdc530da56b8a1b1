"""Type-check a user's file as a project of its own would: ``mypy --strict``, none of this
repository's configuration, the orchestrator found where it is installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orchestrator


def mypy_strict(path: Path, cache_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run mypy on ``path`` from its own directory, so that nothing of this repository but the
    installed ``orchestrator`` package is in sight."""
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
    root = Path(orchestrator.__file__).resolve().parent.parent
    if root.name != "site-packages":
        # An editable install is an import hook, which mypy does not run: point it at the source.
        # (mypy refuses site-packages in MYPYPATH; a wheel install is found there by itself.)
        env["MYPYPATH"] = str(root)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file=",
            "--cache-dir",
            str(cache_dir),
            path.name,
        ],
        cwd=path.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
