"""The one wiring point: settings in, a ready orchestrator (or its parts) out."""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import re
import socket
import sys
from typing import Any

from orchestrator.adapters import tracing
from orchestrator.adapters.metrics import Metrics
from orchestrator.adapters.postgres.store import PostgresStore
from orchestrator.core.definitions import Workflow
from orchestrator.core.routing import Registry
from orchestrator.entrypoints.runtime import Orchestrator
from orchestrator.entrypoints.settings import ConfigurationError, Settings

__all__ = ["BootstrapError", "build", "configure_logging", "load_workflows"]


class BootstrapError(ConfigurationError):
    """The service cannot be put together from what it was given (no such workflow module, no
    workflows in it); the message says which."""


#: Extras a log line about a message or a saga carries (``log.info(..., extra={...})``).
CONTEXT_FIELDS = ("saga_id", "message_id", "actor")


def load_workflows(module_names: str) -> list[Workflow]:
    """Every workflow a module (or comma-separated modules) defines: ``Workflow`` objects at top
    level, and ``Saga`` subclasses (they carry ``workflow``)."""
    found: list[Workflow] = []
    for name in [n.strip() for n in module_names.split(",") if n.strip()]:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name and (name == error.name or name.startswith(error.name + ".")):
                raise BootstrapError(
                    f"no workflow module {name!r}: it must be importable, installed in"
                    " this environment or on PYTHONPATH (PYTHONPATH=. for the current directory)"
                ) from None
            raise
        candidates: list[Any] = list(getattr(module, "WORKFLOWS", [])) or list(vars(module).values())
        for value in candidates:
            compiled = getattr(value, "workflow", None)
            if inspect.isclass(value) and isinstance(compiled, Workflow):
                value = compiled
            if isinstance(value, Workflow) and all(value is not w for w in found):
                found.append(value)
    if not found:
        raise BootstrapError(f"no workflows found in {module_names!r}")
    return found


def build(settings: Settings, api_socket: socket.socket | None = None) -> Orchestrator:
    """The orchestrator, and its REST API on ``api_socket`` when one is given."""
    registry = Registry(load_workflows(settings.workflows), settings.max_parked)
    store = PostgresStore.from_url(settings.database_url)
    metrics = Metrics()
    tracer = tracing.setup("orchestrator")  # None unless the OTEL_* variables ask for traces
    tracing.install(tracer)
    orchestrator = Orchestrator(settings, registry, store, metrics, tracer)
    if api_socket is not None:
        from orchestrator.adapters.postgres.queries import Queries
        from orchestrator.entrypoints.api.app import ApiContext, create_app
        from orchestrator.entrypoints.server import ApiServer

        context = ApiContext(
            registry,
            store,
            Queries(store.engine),
            settings,
            metrics,
            dispatch=orchestrator.dispatch,
            checks=orchestrator.broker_checks,
            republish=orchestrator.broker.republish,
            clock=orchestrator.clock.now,
        )
        orchestrator.api = ApiServer(create_app(context), api_socket, settings.shutdown_seconds)
    return orchestrator


#: The longest message a log line carries, and the longest context field; past it the line says
#: how much was cut. A message may quote its input (a key, a type, a reason): it stays bounded.
MAX_MESSAGE = 2000
MAX_FIELD = 256

#: Control characters and line breaks as visible escapes: a text line stays one line, whatever a
#: REST key or an AMQP property carried (a newline in one could otherwise forge a line of its own).
_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, 0x85]} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}
_CONTROL = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")


def _clip(text: str, limit: int) -> str:
    """``text`` cut at ``limit`` characters, saying how many more there were."""
    return text if len(text) <= limit else f"{text[:limit]}…({len(text) - limit} more)"


def _one_line(text: str, limit: int) -> str:
    """``text`` with its control characters escaped, cut at ``limit`` characters (escapes
    counted as they print, never split); the note says how many characters of ``text`` were cut."""
    if _CONTROL.search(text, 0, limit) is None:
        return _clip(text, limit)
    shown: list[str] = []
    used = 0
    for index, char in enumerate(text):
        piece = _ESCAPES.get(ord(char), char)
        if used + len(piece) > limit:
            return "".join(shown) + f"…({len(text) - index} more)"
        shown.append(piece)
        used += len(piece)
    return "".join(shown)


def _context(record: logging.LogRecord) -> dict[str, str]:
    return {name: str(value) for name in CONTEXT_FIELDS if (value := getattr(record, name, None)) is not None}


class _JsonFormatter(logging.Formatter):
    """One JSON object per line; a line about a message or saga carries their ids as fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": _clip(record.getMessage(), MAX_MESSAGE),
            **{name: _clip(value, MAX_FIELD) for name, value in _context(record).items()},
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)  # escapes every control character and U+2028/9


class _TextFormatter(logging.Formatter):
    """The plain line, then ``saga_id=… message_id=…`` when the line is about a message or saga.

    The line is one line: control characters in the message and the context fields print as
    escapes (``\\n``, ``\\x1b``), and a long message is cut. A traceback follows on lines of its
    own, as Python prints it: it is ours, not input."""

    def format(self, record: logging.LogRecord) -> str:
        message = _one_line(record.getMessage(), MAX_MESSAGE)
        context = "".join(f" {k}={_one_line(v, MAX_FIELD)}" for k, v in _context(record).items())
        line = f"{self.formatTime(record)} {record.levelname} {record.name}: {message}{context}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if settings.log_json else _TextFormatter())
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # reading the migrations' head at start
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # a line per alarm set: the log is ours
    logging.getLogger("transitions").setLevel(logging.WARNING)  # a line per callback of every transition
    for name in ("uvicorn", "uvicorn.error"):  # uvicorn's own handlers would print past the formatter
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
