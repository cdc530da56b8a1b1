"""The one wiring point: settings in, a ready orchestrator (or its parts) out."""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import socket
import sys
from typing import Any

from orchestrator.app import Orchestrator
from orchestrator.definitions import Workflow
from orchestrator.metrics import Metrics
from orchestrator.routing import Registry
from orchestrator.settings import Settings
from orchestrator.store_postgres import PostgresStore

__all__ = ["build", "configure_logging", "load_workflows"]

#: Extras a log line about a message or a saga carries (``log.info(..., extra={...})``).
CONTEXT_FIELDS = ("saga_id", "message_id", "actor")


def load_workflows(module_names: str) -> list[Workflow]:
    """Every workflow a module (or comma-separated modules) defines: ``Workflow`` objects at top
    level, and classes that ``@saga`` compiled (they carry ``workflow``)."""
    found: list[Workflow] = []
    for name in [n.strip() for n in module_names.split(",") if n.strip()]:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name and (name == error.name or name.startswith(error.name + ".")):
                raise SystemExit(f"orchestrator: no workflow module {name!r}") from None
            raise
        candidates: list[Any] = list(getattr(module, "WORKFLOWS", [])) or list(vars(module).values())
        for value in candidates:
            compiled = getattr(value, "workflow", None)
            if inspect.isclass(value) and isinstance(compiled, Workflow):
                value = compiled
            if isinstance(value, Workflow) and all(value is not w for w in found):
                found.append(value)
    if not found:
        raise SystemExit(f"orchestrator: no workflows found in {module_names!r}")
    return found


def build(settings: Settings, api_socket: socket.socket | None = None) -> Orchestrator:
    """The orchestrator, and its REST API on ``api_socket`` when one is given."""
    registry = Registry(load_workflows(settings.workflows))
    store = PostgresStore.from_url(settings.database_url)
    metrics = Metrics()
    orchestrator = Orchestrator(settings, registry, store, metrics)
    if api_socket is not None:
        from orchestrator.api import ApiContext, create_app
        from orchestrator.queries import Queries
        from orchestrator.server import ApiServer

        context = ApiContext(
            registry,
            store,
            Queries(store.engine),
            settings,
            metrics,
            dispatch=orchestrator.dispatch,
            checks=orchestrator.broker_checks,
        )
        orchestrator.api = ApiServer(create_app(context), api_socket, settings.shutdown_seconds)
    return orchestrator


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {name: value for name in CONTEXT_FIELDS if (value := getattr(record, name, None)) is not None}


class _JsonFormatter(logging.Formatter):
    """One JSON object per line; a line about a message or saga carries their ids as fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_context(record),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _TextFormatter(logging.Formatter):
    """The plain line, then ``saga_id=… message_id=…`` when the line is about a message or saga."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # the line, before any traceback
        line = super().formatMessage(record)
        context = _context(record)
        return line + "".join(f" {k}={v}" for k, v in context.items())


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
