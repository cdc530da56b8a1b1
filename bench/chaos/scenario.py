"""What a chaos run does: how many sagas, how fast, and the faults, drawn once from a seed.

The whole schedule is drawn before anything starts, so a seed names a run: the same seed gives
the same faults at the same moments against the same targets, and a finding can be chased by
running its seed again (timing on a loaded machine still varies; the schedule does not).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["KINDS", "Fault", "Scenario", "schedule"]

#: the faults, each with its weight in the draw
KINDS: dict[str, float] = {
    "kill_replica": 3.0,  # SIGKILL one replica, start it again after `down`
    "restart_broker": 1.0,  # stop_app on the private node, start_app after `down`
    "terminate_sessions": 2.0,  # pg_terminate_backend of every orchestrator session
    "stop_participant_short": 1.5,  # a service away for less than the step deadline
    "stop_participant_long": 1.5,  # away for longer: its steps time out and compensate
}


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the first start was published
    kind: str
    target: str  # replica index, service name, or "" for the broker and the database
    down: float  # seconds the target stays away (0 for terminate_sessions)

    def label(self) -> str:
        target = f" {self.target}" if self.target else ""
        return f"{self.kind}{target} for {self.down:.1f}s" if self.down else f"{self.kind}{target}"


@dataclass(frozen=True)
class Scenario:
    sagas: int = 10_000
    replicas: int = 3
    seed: int = 1
    #: start events per second; the faults run for as long as they are published
    rate: float = 40.0
    #: reserve's and charge's deadline (the workflow's CHAOS_DEADLINE_SECONDS)
    deadline: float = 5.0
    #: mean seconds between two faults
    fault_every: float = 6.0
    #: how long the system may take to settle once the faults stop
    settle_timeout: float = 600.0
    #: seconds without any new journal entry or message on the wire that count as settled
    quiet: float = 10.0
    services: tuple[str, ...] = ("inventory", "payment", "shipping")
    #: the final statuses the faults may cause: a participant stopped past its deadline makes
    #: its sagas compensate; the workflow gives nothing a way to make a saga failed
    expected: frozenset[str] = field(default_factory=lambda: frozenset({"completed", "compensated"}))

    @property
    def chaos_seconds(self) -> float:
        return self.sagas / self.rate

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["expected"] = sorted(self.expected)
        data["services"] = list(self.services)
        return data


def schedule(scenario: Scenario) -> list[Fault]:
    """The faults of a run, in time order, from its seed alone.

    Participant stops are measured against the deadline: "short" ends well before it (the step
    only waits), "long" lasts one and a half to two and a half deadlines (the step times out and
    the late reply has to be undone). A stop also costs the responder's restart, about a second,
    which "short" leaves room for."""
    rng = random.Random(scenario.seed)
    kinds = list(KINDS)
    weights = [KINDS[k] for k in kinds]
    faults: list[Fault] = []
    at = 2.0
    while True:
        at += rng.uniform(0.5, 1.5) * scenario.fault_every
        if at >= scenario.chaos_seconds:
            return faults
        kind = rng.choices(kinds, weights)[0]
        if kind == "kill_replica":
            fault = Fault(at, kind, str(rng.randrange(scenario.replicas)), rng.uniform(0.5, 3.0))
        elif kind == "restart_broker":
            fault = Fault(at, kind, "", rng.uniform(1.0, 5.0))
        elif kind == "terminate_sessions":
            fault = Fault(at, kind, "", 0.0)
        elif kind == "stop_participant_short":
            fault = Fault(at, kind, rng.choice(scenario.services), rng.uniform(0.1, 0.4) * scenario.deadline)
        else:
            fault = Fault(at, kind, rng.choice(scenario.services), rng.uniform(1.5, 2.5) * scenario.deadline)
        faults.append(fault)
