"""Nothing in the repository points outside it: a clone is all a user has.

The docs, the Makefile and the benchmark once sent readers to a sibling folder of the clone (the
design notes, the floor script) that only the authors' machines have. CHANGELOG.md is left out:
it records what was, in the words of its time.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: spelled in parts, so that this file does not find itself
OUTSIDE = ("/".join(("..", "shared")), "/".join(("shared", "limit")), "/".join(("shared", "DESIGN")))
SKIPPED_DIRS = {
    ".git",
    ".venv",
    "build",
    "dist",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
}
SKIPPED_FILES = {"CHANGELOG.md"}
TEXT = {".py", ".md", ".toml", ".cfg", ".ini", ".mako", ".yml", ".yaml", ".txt", ".json", ""}


def texts() -> list[Path]:
    found = []
    for path in ROOT.rglob("*"):
        relative = path.relative_to(ROOT)
        if any(part in SKIPPED_DIRS or part.endswith(".egg-info") for part in relative.parts):
            continue
        if path.is_file() and path.suffix in TEXT and path.name not in SKIPPED_FILES:
            found.append(path)
    return found


def test_no_file_points_outside_the_repository() -> None:
    files = texts()
    assert ROOT / "Makefile" in files and ROOT / "docs" / "benchmark.md" in files
    pointers = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if any(outside in line for outside in OUTSIDE)
    ]
    assert not pointers, "\n".join(pointers)
