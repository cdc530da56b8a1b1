"""What a chaos run does: how many sagas, how fast, and the faults, drawn once from a seed.

The whole schedule is drawn before anything starts, so a seed names a run: the same seed gives
the same faults at the same moments against the same targets, and a finding can be chased by
running its seed again (timing on a loaded machine still varies; the schedule does not).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["HA_KINDS", "KINDS", "Fault", "Scenario", "schedule"]

#: the faults; a round of the schedule does each of them once, a replica kill twice
KINDS = (
    "kill_replica",  # SIGKILL one replica, start it again after `down`
    "restart_broker",  # stop_app on the private node, start_app after `down`
    "terminate_sessions",  # pg_terminate_backend of every orchestrator session
    "stop_participant_short",  # a service away for less than the step deadline
    "stop_participant_long",  # away for longer: its steps time out and compensate
)
ROUND = ("kill_replica", *KINDS)
#: with ``ha``: a database primary killed with its keeper (the standby is promoted; the old one
#: rejoins as a standby after ``down``) and the broker node the replicas are connected to stopped
#: (started again after ``down``), in place of the single node's restart
HA_KINDS = (
    "kill_replica",
    "kill_db_primary",
    "stop_broker_node",
    "terminate_sessions",
    "stop_participant_short",
    "stop_participant_long",
)
HA_ROUND = ("kill_replica", *HA_KINDS)


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
    #: ``kit``: the example services on the participant kit, whose business tables are checked;
    #: ``responder``: the benchmark responders, which keep nothing and never fail. The responders
    #: by default: at 40 starts a second on the two-core machine the kit's inventory falls more
    #: than a deadline behind at the first fault and never catches up (docs/chaos.md)
    participants: str = "responder"
    #: the kit's ``--fail-rate`` at every service: sagas that compensate by a business failure
    #: (out of stock, declined, shipment failed) besides those a stop makes time out
    fail_rate: float = 0.02
    #: the kit's ``--concurrency``: commands each service handles at once
    concurrency: int = 10
    #: the kit's ``--delay``: seconds between a participant's commit and its reply and ack. A kill
    #: there makes the broker deliver again a command already carried out, the case the inbox is
    #: for; without a delay that window is a few milliseconds and a kill seldom lands in it
    delay: float = 0.0
    #: the final statuses the faults may cause: a participant stopped past its deadline makes
    #: its sagas compensate; the workflow gives nothing a way to make a saga failed
    expected: frozenset[str] = field(default_factory=lambda: frozenset({"completed", "compensated"}))
    #: a 3-node broker cluster and a PostgreSQL primary with a synchronous standby
    #: (pg_auto_failover), every process given every node: ``HA_KINDS`` are the faults
    ha: bool = False

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

    Kinds are drawn in shuffled rounds rather than one by one, so that even a short run does
    every kind of fault, in an order the seed decides.

    Participant stops are measured against the deadline: "short" ends well before it (the step
    only waits), "long" lasts one and a half to two and a half deadlines (the step times out and
    the late reply has to be undone). A stop also costs the responder's restart, about a second,
    which "short" leaves room for; a kit participant takes longer to start (it imports more and
    opens its database first), so with the kit a "short" stop may make some steps time out too,
    which the checks accept as they accept any compensation."""
    rng = random.Random(scenario.seed)
    faults: list[Fault] = []
    bag: list[str] = []
    at = 2.0
    while True:
        at += rng.uniform(0.5, 1.5) * scenario.fault_every
        if at >= scenario.chaos_seconds:
            return faults
        if not bag:
            bag = list(HA_ROUND if scenario.ha else ROUND)
            rng.shuffle(bag)
            if scenario.ha:  # one failover first, the other halfway: a short run does both, and
                # the second seldom finds the first still in hand (the bag is popped from its end)
                failovers = [kind for kind in bag if kind in ("kill_db_primary", "stop_broker_node")]
                others = [kind for kind in bag if kind not in failovers]
                half = len(others) // 2
                bag = [*others[half:], failovers[1], *others[:half], failovers[0]]
        kind = bag.pop()
        if kind == "kill_db_primary":  # down: until the old primary's keeper starts again
            fault = Fault(at, kind, "", rng.uniform(2.0, 5.0))
        elif kind == "stop_broker_node":
            fault = Fault(at, kind, "", rng.uniform(1.0, 5.0))
        elif kind == "kill_replica":
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
