"""The layers hold (docs/architecture.md): the core imports nothing of the service layer, the
adapters or the entry points, and no I/O library; the service layer imports no adapter and no
driver, only its own ports; the adapters import of the service only its ports; neither imports an
entry point; the participant kit imports none either, and reads its settings through
``orchestrator.settings``, which imports nothing of the package. And parts are wired by their
constructors: nothing sets an attribute on an object outside that object's own class."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
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


#: what the service layer may never import: adapters, and the drivers and clocks they wrap
SERVICE_NEVER = ("orchestrator.adapters", "sqlalchemy", "asyncpg", "aio_pika", "aiormq", "apscheduler")
#: the service layer's modules an adapter may import: its ports and the kinds they speak in
PORTS = {
    "orchestrator.service.ports",
    "orchestrator.service.store",
    "orchestrator.service.faults",
    "orchestrator.service.counts",
    "orchestrator.service.tracing",
}


@pytest.mark.parametrize("path", modules("service"), ids=lambda p: p.name)
def test_the_service_layer_imports_no_adapter_and_no_driver(path: Path) -> None:
    found = imports(path)
    assert sorted(m for m in found if m == SERVICE_NEVER[0] or m.startswith(SERVICE_NEVER)) == []


@pytest.mark.parametrize("path", modules("adapters"), ids=lambda p: p.name)
def test_an_adapter_imports_of_the_service_only_its_ports(path: Path) -> None:
    found = {m for m in imports(path) if m.startswith("orchestrator.service")}
    beyond = sorted(m for m in found if m not in PORTS and m.rsplit(".", 1)[0] not in PORTS)
    assert beyond == []


def test_the_layer_rules_catch_what_they_forbid(tmp_path: Path) -> None:
    """The checks above read what they should: a forbidden import is found."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import asyncpg\nfrom orchestrator.adapters.metrics import Metrics\n"
        "def f():\n    from sqlalchemy import select\n"
    )
    assert {"asyncpg", "orchestrator.adapters.metrics", "sqlalchemy"} <= imports(bad)
    assert [o.target for o in foreign_assignments(bad)] == []
    bad.write_text("class A:\n    def f(self, b):\n        self.relay.metrics = 1\n        b.x += 1\n")
    assert [o.target for o in foreign_assignments(bad)] == ["self.relay.metrics", "b.x"]


# Wiring by constructor ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Assignment:
    path: str
    line: int
    target: str


def _built_here(function: ast.AST) -> set[str]:
    """Names a function binds to an object it builds (``result = BatchResult()``): its own to fill."""
    built: set[str] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Call):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            built.update(t.id for t in targets if isinstance(t, ast.Name))
    return built


def foreign_assignments(path: Path) -> list[Assignment]:
    """Every assignment to an attribute of an object other than ``self`` (or ``cls``) and other
    than one an enclosing function built itself."""
    tree = ast.parse(path.read_text())
    parents: dict[int, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[id(child)] = node
    name = str(path.relative_to(PACKAGE.parent)) if path.is_relative_to(PACKAGE.parent) else path.name
    found: list[Assignment] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        built: set[str] = set()
        up = parents.get(id(node))
        while up is not None:
            if isinstance(up, ast.FunctionDef | ast.AsyncFunctionDef):
                built |= _built_here(up)
            up = parents.get(id(up))
        for target in targets:
            for sub in ast.walk(target):
                if not (isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store)):
                    continue
                base = sub.value
                if isinstance(base, ast.Name) and (base.id in ("self", "cls") or base.id in built):
                    continue
                found.append(Assignment(name, sub.lineno, ast.unparse(sub)))
    return found


#: (module, target): objects of other libraries, set as those libraries document, and function
#: objects the definition builders label; each with why
ALLOWED = {
    # pamqp taught to read any bytes (adapters/amqp/decoding.py says why): a patch of its functions
    ("decoding.py", "pamqp_decode.short_str"),
    ("decoding.py", "pamqp_decode.field_table"),
    ("decoding.py", "pamqp_decode._orchestrator_tolerant"),
    ("decoding.py", "header.ContentHeader.unmarshal"),
    ("decoding.py", "pamqp_encode._string"),
    ("decoding.py", "pamqp_encode.field_table"),
    ("decoding.py", "properties.error"),
    ("decoding.py", "properties.raw"),
    # SQLAlchemy's handle_error event: is_disconnect is set as its documentation says, to have a
    # read-only session (a demoted primary) discarded like a lost one (issue 29)
    ("read_only.py", "context.is_disconnect"),
    # aiormq's properties of a message being migrated: its headers, as aiormq has them set
    ("topology.py", "properties.headers"),
    # the definition builders (core/steps.py, core/definitions.py) label the functions they make
    ("steps.py", "build.__qualname__"),
    ("steps.py", "build.message_type"),
    ("steps.py", "build.message_class"),
    ("steps.py", "start.__qualname__"),
    ("steps.py", "start.message_type"),
    ("steps.py", "start.child"),
    ("steps.py", "start.child_key"),
    ("steps.py", "cancel.__qualname__"),
    ("steps.py", "cancel.message_type"),
    ("steps.py", "instance.saga_id"),
    ("steps.py", "instance.key"),
    ("steps.py", "instance.data"),
    ("definitions.py", "build.__qualname__"),
    ("definitions.py", "build.message_type"),
    ("definitions.py", "build.message_class"),
    # transitions' model object: the machine's callbacks fill it as transitions calls them
    ("machine.py", "model.sends"),
    ("machine.py", "model.entered"),
    # FastAPI's and Starlette's documented ways: the OpenAPI hook, a response's status, the state
    ("app.py", "app.openapi"),
    ("app.py", "app.openapi_schema"),
    ("app.py", "response.status_code"),
    ("sagas.py", "response.status_code"),
    ("auth.py", "request.state.caller"),
    # uvicorn's documented way to stop a server it runs
    ("server.py", "self.server.should_exit"),
    ("server.py", "self.server.force_exit"),
    # the standard library's: a daemon thread, a logger's propagation, a record's cached traceback
    ("runtime.py", "timer.daemon"),
    ("bootstrap.py", "logging.getLogger(name).propagate"),
    ("bootstrap.py", "record.exc_text"),
    # a logging filter's documented way to change the record it passes on
    ("reconnect_noise.py", "record.levelno"),
    ("reconnect_noise.py", "record.levelname"),
    ("reconnect_noise.py", "record.exc_info"),
    ("reconnect_noise.py", "record.exc_text"),
    ("reconnect_noise.py", "record.stack_info"),
}


def test_nothing_sets_an_attribute_on_another_object() -> None:
    """Parts get what they need through their constructors (or a method of their own), never by
    a caller reaching into them after they are built: ``relay.metrics = ...`` hides a dependency
    from the constructor that should say it."""
    found = [a for path in sorted(PACKAGE.rglob("*.py")) for a in foreign_assignments(path)]
    offending = [
        f"{a.path}:{a.line}: {a.target}" for a in found if (Path(a.path).name, a.target) not in ALLOWED
    ]
    assert offending == []


def test_no_code_outside_the_adapters_asks_which_store_it_has() -> None:
    """The bootstrap decides which adapter plugs into a port; no other code branches on it."""
    asked = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(PACKAGE / "adapters"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "isinstance"
            ):
                kinds = ast.unparse(node.args[1]) if len(node.args) > 1 else ""
                if "Store" in kinds:
                    asked.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node)}")
    assert asked == []


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


def test_the_architecture_pages_tree_names_every_module() -> None:
    """docs/architecture.md is the reference a newcomer reads first: its tree names every module
    (by file name, in the line of its folder or one of its own), and no module that is gone."""
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    tree = page.split("```\norchestrator/\n", 1)[1].split("```", 1)[0]
    named = set(re.findall(r"\b(\w+\.py)\b", tree))
    modules = {p.name for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent == PACKAGE}
    assert sorted(modules - named) == []
    assert sorted(n for n in named - modules if not (PACKAGE.parent / n).exists()) == []
