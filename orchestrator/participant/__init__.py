"""The participant kit: write a participant service as handlers, get exactly-once effects.

::

    payment = Participant("payment")

    @payment.handles(ChargePayment)
    async def charge(command: ChargePayment, context: Context) -> PaymentCharged:
        await context.session.execute(insert(charges).values(order_id=command.order_id, ...))
        return PaymentCharged(command.order_id, charge_id=...)

    raise SystemExit(run(payment))  # settings from PARTICIPANT_DATABASE_URL, ORCHESTRATOR_AMQP_URL, ...

Each command runs in one transaction of the participant's own PostgreSQL, together with the record
of its message id and reply: a command delivered again, after any crash, gets the recorded reply
and its handler does not run again. See the README, "Writing a participant".

A public module (see :mod:`orchestrator`), whole: what a participant's code touches is named
here, so that it never reaches into the kit's modules. ``run`` serves; ``Worker`` does the same
inside an event loop of yours, traced when given ``setup_tracing(service)``'s tracer (None unless
the ``OTEL_*`` variables ask for traces); ``CommandProcessor`` runs a handler against its real
database without a broker, for tests (its ``Outcome``, ``DeadLetter`` and ``TryAgain``);
``Settings`` and the defaults it shares with the orchestrator (``DEFAULT_AMQP_URL``,
``QUEUE_TYPES``, the words a switch takes, ...) and ``mask_url``, for a command line of one's
own; the ``EXIT_*`` codes ``run`` returns.
"""

from orchestrator.adapters.tracing import OtelTracer
from orchestrator.adapters.tracing import setup as setup_tracing
from orchestrator.participant.handlers import (
    Context,
    Defer,
    InvalidCommand,
    Participant,
    Reply,
    reply_message_id,
)
from orchestrator.participant.inbox import Recorded
from orchestrator.participant.processing import CommandProcessor, DeadLetter, Outcome, TryAgain
from orchestrator.participant.settings import Settings, SettingsError
from orchestrator.participant.worker import EXIT_BROKER, EXIT_DATABASE, EXIT_HUNG, Worker, run
from orchestrator.settings import (
    DEFAULT_AMQP_URL,
    DEFAULT_NAMESPACE,
    DEFAULT_QUEUE_TYPE,
    FALSE_WORDS,
    QUEUE_TYPES,
    TRUE_WORDS,
    mask_url,
)

__all__ = [
    "DEFAULT_AMQP_URL",
    "DEFAULT_NAMESPACE",
    "DEFAULT_QUEUE_TYPE",
    "EXIT_BROKER",
    "EXIT_DATABASE",
    "EXIT_HUNG",
    "FALSE_WORDS",
    "QUEUE_TYPES",
    "TRUE_WORDS",
    "CommandProcessor",
    "Context",
    "DeadLetter",
    "Defer",
    "InvalidCommand",
    "OtelTracer",
    "Outcome",
    "Participant",
    "Recorded",
    "Reply",
    "Settings",
    "SettingsError",
    "TryAgain",
    "Worker",
    "mask_url",
    "reply_message_id",
    "run",
    "setup_tracing",
]
