"""The broker's topology (docs/protocol.md, section 2), declared by everyone who uses it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel

__all__ = ["Topology", "declare"]


@dataclass(frozen=True)
class Topology:
    """Exchange and queue names, all under one namespace so tests and tenants stay apart."""

    namespace: str = "saga"

    @property
    def commands(self) -> str:
        return f"{self.namespace}.commands"

    @property
    def events(self) -> str:
        return f"{self.namespace}.events"

    @property
    def dead(self) -> str:
        return f"{self.namespace}.dead"

    @property
    def orchestrator_queue(self) -> str:
        return f"{self.namespace}.orchestrator"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.namespace}.dead-letter"

    def participant_queue(self, service: str) -> str:
        return f"{self.namespace}.{service}"

    @property
    def queue_arguments(self) -> dict[str, Any]:
        return {"x-dead-letter-exchange": self.dead}


async def declare(channel: AbstractChannel, topology: Topology, services: Iterable[str]) -> None:
    """Declare everything (idempotent). Participant queues too, so commands wait while a
    participant is down, or has never started."""
    events = await channel.declare_exchange(topology.events, aio_pika.ExchangeType.TOPIC, durable=True)
    commands = await channel.declare_exchange(topology.commands, aio_pika.ExchangeType.TOPIC, durable=True)
    dead = await channel.declare_exchange(topology.dead, aio_pika.ExchangeType.FANOUT, durable=True)
    dead_queue = await channel.declare_queue(topology.dead_letter_queue, durable=True)
    await dead_queue.bind(dead)
    queue = await channel.declare_queue(
        topology.orchestrator_queue, durable=True, arguments=topology.queue_arguments
    )
    await queue.bind(events, routing_key="#")
    for service in sorted(set(services)):
        participant = await channel.declare_queue(
            topology.participant_queue(service), durable=True, arguments=topology.queue_arguments
        )
        await participant.bind(commands, routing_key=f"{service}.#")
