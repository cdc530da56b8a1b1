"""A saga orchestrator on RabbitMQ and PostgreSQL.

The public API is two modules, and only what their ``__all__`` names:

* ``orchestrator``: what a workflow is written with (this module), as the README's "Writing a
  workflow" shows it;
* ``orchestrator.testing``: ``WorkflowTestKit``, to test a workflow without a broker or a database.

Everything else (``orchestrator.core``, ``.service``, ``.adapters``, ``.entrypoints`` and the
bundled ``.examples``) is internal: it may change in any release without notice. The command
line (``orchestrator migrate | run | verify | check | dead-letters``), the REST API and the wire protocol
are the other interfaces, documented in the README and docs/.

Everything here is typed, so that a workflow module passes ``mypy --strict`` as it is.
"""

from orchestrator.core.definitions import (
    FAIL,
    IGNORE,
    PARK,
    CommandBuilder,
    DefinitionError,
    Policy,
    Retry,
    SagaView,
    Status,
    Undo,
    Workflow,
)
from orchestrator.core.messages import Command, Event, Message
from orchestrator.core.steps import Saga, step
from orchestrator.core.upcasting import upcaster

__all__ = [
    "FAIL",
    "IGNORE",
    "PARK",
    "Command",
    "CommandBuilder",
    "DefinitionError",
    "Event",
    "Message",
    "Policy",
    "Retry",
    "Saga",
    "SagaView",
    "Status",
    "Undo",
    "Workflow",
    "step",
    "upcaster",
]
