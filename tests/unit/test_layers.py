"""The layers hold (docs/architecture.md): the core imports nothing of the service layer, the
adapters or the entry points, and no I/O library; the service layer and the adapters import no
entry point; the participant kit imports none either, and reads its settings through
``orchestrator.settings``, which imports nothing of the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "orchestrator"
IO_LIBRARIES = {"asyncio", "asyncpg", "sqlalchemy", "aio_pika", "aiormq", "fastapi", "uvicorn", "apscheduler"}


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def modules(layer: str) -> list[Path]:
    return sorted((PACKAGE / layer).rglob("*.py"))


@pytest.mark.parametrize("path", modules("core"), ids=lambda p: p.name)
def test_the_core_imports_no_other_layer_and_no_io(path: Path) -> None:
    found = imports(path)
    outward = sorted(
        m
        for m in found
        if m.startswith(("orchestrator.service", "orchestrator.adapters", "orchestrator.entrypoints"))
    )
    io = sorted(m for m in found if m.split(".")[0] in IO_LIBRARIES)
    assert outward == [] and io == []


@pytest.mark.parametrize("path", modules("service") + modules("adapters"), ids=lambda p: p.name)
def test_the_service_layer_and_the_adapters_import_no_entry_point(path: Path) -> None:
    assert sorted(m for m in imports(path) if m.startswith("orchestrator.entrypoints")) == []


def test_every_layer_has_its_modules() -> None:
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == {
        "core",
        "service",
        "adapters",
        "entrypoints",
        "examples",
        "participant",
    }


@pytest.mark.parametrize("path", modules("participant"), ids=lambda p: p.name)
def test_the_participant_kit_stands_apart_from_the_orchestrators_service(path: Path) -> None:
    """The kit runs in participant processes: it shares the wire (messages, topology) and the
    settings' rules with the orchestrator (``orchestrator.settings``, the one reader both use),
    never its service layer or its wiring."""
    found = imports(path)
    assert (
        sorted(
            m
            for m in found
            if m.startswith(
                ("orchestrator.service", "orchestrator.adapters.postgres", "orchestrator.entrypoints")
            )
        )
        == []
    )


@pytest.mark.parametrize("path", [PACKAGE / "settings.py"], ids=lambda p: p.name)
def test_the_settings_reader_imports_nothing_of_the_package(path: Path) -> None:
    """Every layer and the participant kit read their settings through it: it must not pull in
    any of them."""
    assert sorted(m for m in imports(path) if m.split(".")[0] == "orchestrator") == []
