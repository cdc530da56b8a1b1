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
"""

from orchestrator.participant.handlers import (
    Context,
    Defer,
    InvalidCommand,
    Participant,
    Reply,
    reply_message_id,
)
from orchestrator.participant.settings import Settings, SettingsError
from orchestrator.participant.worker import Worker, run

__all__ = [
    "Context",
    "Defer",
    "InvalidCommand",
    "Participant",
    "Reply",
    "Settings",
    "SettingsError",
    "Worker",
    "reply_message_id",
    "run",
]
