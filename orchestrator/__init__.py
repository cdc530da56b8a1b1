"""A saga orchestrator on RabbitMQ and PostgreSQL.

The public API is three modules, and only what their ``__all__`` names; this is the one place
that says so (the README and docs/ point here):

* ``orchestrator``: what a workflow is written with (this module), as the README's "Writing a
  workflow" shows it;
* ``orchestrator.testing``: ``WorkflowTestKit``, to test a workflow without a broker or a
  database, and the types its methods hand back;
* ``orchestrator.participant``: the participant kit, to write a participant service (the README's
  "Writing a participant"), with its settings, its tracing setup and ``CommandProcessor`` for
  testing a handler.

Each exports everything a user's code touches through it, so that such code never imports
anything else of the package. Everything else (``orchestrator.core``, ``.service``,
``.adapters``, ``.entrypoints``, ``.settings``, the bundled ``.examples`` and the participant
kit's own modules) is internal: it may change in any release without notice. The command line
(``orchestrator migrate | run | verify | check | dead-letters``), the REST API and the wire
protocol are the other interfaces, documented in the README and docs/.
``tests/unit/test_public_surface.py`` fails when the README, docs/ or the example participants
import anything but these three.

Everything here is typed, so that a workflow module passes ``mypy --strict`` as it is.
"""

from orchestrator.core.children import ChildCompensated, ChildCompleted, ChildFailed
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
from orchestrator.core.steps import Saga, child, parallel, step, wait, wait_for
from orchestrator.core.upcasting import upcaster

__all__ = [
    "FAIL",
    "IGNORE",
    "PARK",
    "ChildCompensated",
    "ChildCompleted",
    "ChildFailed",
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
    "child",
    "parallel",
    "step",
    "upcaster",
    "wait",
    "wait_for",
]
