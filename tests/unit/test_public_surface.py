"""What users are shown imports only the public modules, and the public modules are whole.

The public API is three modules (the ``orchestrator`` package's docstring says so, in one place):
``orchestrator``, ``orchestrator.testing`` and ``orchestrator.participant``. A README or a doc
that imports another teaches users to depend on an internal module, and so do the example
participants, which people copy; a public method that hands back a type none of the three
exports forces them to. Each is caught here rather than by a user after a release. One exception:
the example participants may import the bundled example workflows' messages (``EXAMPLES``).
"""

from __future__ import annotations

import ast
import builtins
import importlib
import re
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PUBLIC = ("orchestrator", "orchestrator.testing", "orchestrator.participant")
#: the example participants answer the bundled example workflows, and share their message classes
#: as one team's services share a contracts package: example code using example code, not the API
EXAMPLES = "orchestrator.examples"
#: ``from orchestrator.x import a, b`` or ``import orchestrator.x`` anywhere in Markdown: in a
#: code block, an inline span or prose, since a reader copies any of them
MARKDOWN_FROM = re.compile(r"\bfrom[ \t]+(orchestrator(?:\.\w+)*)[ \t]+import\b")
MARKDOWN_IMPORT = re.compile(r"\bimport[ \t]+(orchestrator(?:\.\w+)*)")
PYTHON_BLOCK = re.compile(r"^([ \t]*)```python\n(.*?)\n\1```", re.S | re.M)


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def participant_files() -> list[Path]:
    return sorted(p for p in (ROOT / "participants").rglob("*.py") if "node_modules" not in p.parts)


def shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def python_imports(source: str) -> Iterator[tuple[int, str, str | None]]:
    """Each orchestrator import as (line, module, name imported from it or None)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "orchestrator":
                    yield node.lineno, alias.name, None
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and not node.level
            and node.module.split(".")[0] == "orchestrator"
        ):
            for alias in node.names:
                yield node.lineno, node.module, alias.name


def refused(module: str, name: str | None, allowed: tuple[str, ...] = PUBLIC) -> str | None:
    """Why importing ``name`` from ``module`` (or ``module`` itself) reaches past the public API;
    None when it does not. A name must be in the module's ``__all__``, or be a public module
    (``from orchestrator import testing``)."""
    if module.startswith(EXAMPLES) and EXAMPLES in allowed:
        return None
    if module not in PUBLIC:
        return f"{module} is not public"
    if name is None or name == "*" or f"{module}.{name}" in PUBLIC:
        return None
    if name not in importlib.import_module(module).__all__:
        return f"{module}.{name} is not in {module}.__all__"
    return None


def markdown_problems(path: Path) -> list[str]:
    text = path.read_text()
    found = []
    for pattern in (MARKDOWN_FROM, MARKDOWN_IMPORT):
        for match in pattern.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            if (why := refused(match[1], None)) is not None:
                found.append(f"{shown(path)}:{line}: {why}")
    for block in PYTHON_BLOCK.finditer(text):
        first = text.count("\n", 0, block.start(2))
        indent = len(block[1])
        code = "\n".join(row[indent:] for row in block[2].split("\n"))
        try:
            imports = list(python_imports(code))
        except SyntaxError:
            continue  # a fragment; its import lines, if any, were read above
        for line, module, name in imports:
            if name is not None and (why := refused(module, name)) is not None:
                found.append(f"{shown(path)}:{first + line}: {why}")
    return found


def participant_problems(path: Path) -> list[str]:
    return [
        f"{shown(path)}:{line}: {why}"
        for line, module, name in python_imports(path.read_text())
        if (why := refused(module, name, (*PUBLIC, EXAMPLES))) is not None
    ]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_docs_import_only_the_public_modules(path: Path) -> None:
    assert markdown_problems(path) == []


@pytest.mark.parametrize("path", participant_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_example_participants_import_only_the_public_modules(path: Path) -> None:
    assert participant_problems(path) == []


def test_the_checks_see_a_bad_import(tmp_path: Path) -> None:
    """Each check finds what it is for: a test that can never fail holds nothing."""
    doc = tmp_path / "README.md"
    doc.write_text(
        "Use `from orchestrator.adapters import tracing`.\n\n"
        "```python\nfrom orchestrator.testing import (\n    WorkflowTestKit,\n    FakeBroker,\n)\n```\n"
    )
    participant = tmp_path / "wallet.py"
    participant.write_text(
        "import orchestrator.core.engine\n"
        "from orchestrator.participant import Participant\n"
        "from orchestrator.participant.worker import EXIT_DATABASE\n"
        "from orchestrator import adapters\n"
    )
    assert [p.split(": ", 1)[1] for p in markdown_problems(doc)] == [
        "orchestrator.adapters is not public",
        "orchestrator.testing.FakeBroker is not in orchestrator.testing.__all__",
    ]
    assert [p.split(": ", 1)[1] for p in participant_problems(participant)] == [
        "orchestrator.core.engine is not public",
        "orchestrator.participant.worker is not public",
        "orchestrator.adapters is not in orchestrator.__all__",
    ]


# -- the public modules are whole -------------------------------------------------------------------


def exported() -> set[int]:
    return {
        id(getattr(module, name))
        for module in map(importlib.import_module, PUBLIC)
        for name in module.__all__
    }


def orchestrator_classes(hint: object) -> Iterator[type]:
    """The package's own classes a type hint names, however deep in it."""
    if isinstance(hint, type) and hint.__module__.split(".")[0] == "orchestrator":
        yield hint
    for argument in typing.get_args(hint):
        yield from orchestrator_classes(argument)


class _Scope(dict[str, object]):
    """A module's globals where a name imported only for type checking (the kit's SQLAlchemy
    types) reads as ``object``: not ours, so nothing to find."""

    def __missing__(self, name: str) -> object:
        if name.startswith("__"):  # a frame's own lookups (pytest's __tracebackhide__), not a hint
            raise KeyError(name)
        return getattr(builtins, name, object)


#: what a user's code drives (the rest of the public classes are values it is handed or builds):
#: whatever these take and give must be importable from a public module
DRIVEN = (
    ("orchestrator.testing", "WorkflowTestKit"),
    ("orchestrator.participant", "Participant"),
    ("orchestrator.participant", "Worker"),
    ("orchestrator.participant", "CommandProcessor"),
    ("orchestrator.participant", "Settings"),
    ("orchestrator.participant", "run"),
    ("orchestrator.participant", "setup_tracing"),
)


def driven_callables() -> Iterator[tuple[str, object, dict[str, object]]]:
    """Each driven function, and each public method of a driven class, with its module's names."""
    for module_name, name in DRIVEN:
        item = getattr(importlib.import_module(module_name), name)
        scope = _Scope(vars(importlib.import_module(item.__module__)))
        if isinstance(item, type):
            for attribute, member in vars(item).items():
                if callable(member) and (not attribute.startswith("_") or attribute == "__init__"):
                    yield f"{module_name}.{name}.{attribute}", member, scope
        else:
            yield f"{module_name}.{name}", item, scope


def test_every_public_module_has_what_it_names() -> None:
    for module in map(importlib.import_module, PUBLIC):
        assert [name for name in module.__all__ if not hasattr(module, name)] == []


def test_what_the_public_callables_take_and_give_is_exported() -> None:
    """A type in a public signature that no public module exports would send users to an
    internal module to annotate their own code (``kit.publish(...)`` gives a BatchResult)."""
    public = exported()
    missing = set()
    for where, item, scope in driven_callables():
        hints = typing.get_type_hints(item, localns=scope)
        for cls in (c for hint in hints.values() for c in orchestrator_classes(hint)):
            if id(cls) not in public:
                missing.add(f"{where}: {cls.__module__}.{cls.__qualname__}")
    assert sorted(missing) == []
