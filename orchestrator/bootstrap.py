"""The one wiring point: settings in, a ready orchestrator (or its parts) out."""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import sys
from typing import Any

from orchestrator.app import Orchestrator
from orchestrator.definitions import Workflow
from orchestrator.routing import Registry
from orchestrator.settings import Settings
from orchestrator.store_postgres import PostgresStore

__all__ = ["build", "configure_logging", "load_workflows"]


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


def build(settings: Settings) -> Orchestrator:
    registry = Registry(load_workflows(settings.workflows))
    store = PostgresStore.from_url(settings.database_url)
    return Orchestrator(settings, registry, store)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    logging.getLogger("aiormq").setLevel(logging.WARNING)
