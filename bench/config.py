"""How big each scenario is, and where the services are: all of it chosen once, at the start."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

__all__ = [
    "FULL",
    "QUICK",
    "SCENARIOS",
    "TARGET_KIT_TO_ORCHESTRATOR",
    "TARGET_TO_PEER",
    "Sizes",
    "Stack",
    "floor_from_env",
    "floor_missing",
]

SCENARIOS = ("throughput", "kit", "latency", "recovery", "deadlines", "memory")
#: the orchestrator's CPU per step at full batches as docs/benchmark.md records it ("Where issue
#: 30 stands (2026-12-08)", the median of two runs): ``make bench`` prints it beside this run's,
#: so that a change that puts cost back shows (tests/unit/test_bench_report.py keeps the two in step)
RECORDED_CPU_MS_PER_STEP = 0.53
#: issue 30's goal for the same figure
TARGET_CPU_MS_PER_STEP = 0.30
#: how many times the steps/s of the peer, the same saga written with DBOS (bench/peer_dbos.py),
#: the orchestrator's must be (docs/benchmark.md, "The peer (DBOS)")
TARGET_TO_PEER = 15.0
#: the share of the orchestrator's steps/s the example services on the participant kit must carry
#: out (issue 30: then they become ``make chaos``'s participants)
TARGET_KIT_TO_ORCHESTRATOR = 0.5


@dataclass(frozen=True)
class Sizes:
    """The full run answers the issue's questions in about a quarter of an hour; ``QUICK`` only
    proves that every scenario runs to the end."""

    throughput_sagas: int = 4000
    throughput_repeats: int = 2
    latency_seconds: float = 30.0
    latency_rate: float | None = None  # None: half the orchestrator's measured maximum
    default_rate: float = 100.0  # when throughput was not run and no rate was given
    recovery_sagas: int = 100_000
    #: of those, parked through the broker by a running orchestrator; the rest written straight
    #: into the database first (bench/parking.py)
    recovery_through_broker: int = 10_000
    deadline_sagas: int = 10_000
    deadline_spread_seconds: float = 60.0
    deadline_seconds: float = 10.0
    outage_sagas: int = 2000
    outage_seconds: float = 30.0
    outage_deadline_seconds: float = 10.0
    #: sagas written parked straight into the database, then ``memory_replies`` of them answered
    memory_parked: int = 1_000_000
    memory_replies: int = 1000
    wait_seconds: float = 600.0  # give up waiting for sagas after this long
    #: sagas of the peer's one burst (bench/peer_dbos.py), after the throughput runs: fewer than
    #: the orchestrator's, as it takes some 20 times as long per saga; 0 runs no peer (``--no-peer``)
    peer_sagas: int = 1000
    #: sagas of the kit scenario's burst, answered by the example services on the participant kit
    kit_sagas: int = 2000
    #: each kit service's PARTICIPANT_CONCURRENCY (the kit's default; fewer connections in a test)
    kit_concurrency: int = 10


FULL = Sizes()
QUICK = Sizes(
    throughput_sagas=200,
    throughput_repeats=1,
    latency_seconds=2.0,
    default_rate=50.0,
    recovery_sagas=200,
    recovery_through_broker=100,
    deadline_sagas=200,
    deadline_spread_seconds=2.0,
    deadline_seconds=1.0,
    outage_sagas=200,
    outage_seconds=2.0,
    outage_deadline_seconds=1.0,
    memory_parked=2000,
    memory_replies=100,
    wait_seconds=60.0,
    peer_sagas=50,
    kit_sagas=50,
    kit_concurrency=2,
)


def floor_from_env() -> Path | None:
    """``BENCH_FLOOR``, the one setting that names the floor: the floor script is not part of this
    repository, so there is no default to fall back on (docs/benchmark.md says what it must do)."""
    value = os.environ.get("BENCH_FLOOR", "").strip()
    return Path(value).expanduser() if value else None


def floor_missing(floor: Path | None) -> str | None:
    """Why this run has no floor, in words for the output and the JSON; None when it has one.

    Said once at the start and again under the table: without a floor the ratios are null, and a
    reader of the figures must not have to guess why."""
    if floor is None:
        return (
            "no floor: BENCH_FLOOR is not set, so the orchestrator is measured alone"
            " (the floor's figures and the ratios to it are null)"
        )
    if not floor.is_file():
        return (
            f"no floor: BENCH_FLOOR names {floor}, which is not a file"
            " (the floor's figures and the ratios to it are null)"
        )
    return None


@dataclass(frozen=True)
class Stack:
    """The services and files every scenario uses."""

    root: Path
    python: str
    database_url: str  # the SQLAlchemy form the orchestrator takes: postgresql+asyncpg://...
    amqp_url: str
    log_dir: Path
    floor: Path | None = None  # the floor script, pipeline.py (BENCH_FLOOR); None: the run has none
    api_port_flag: bool = False  # `orchestrator run` takes --port (the REST API is built in)
    #: where py-spy's samples of each orchestrator go (``--profile``, bench/profile.py); None: not profiled
    profile: Path | None = None

    @property
    def dsn(self) -> str:
        """The same database in the form asyncpg and pipeline.py take."""
        return self.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)

    @property
    def peer_dsn(self) -> str:
        """The peer's database (bench/peer_dbos.py): on the same server, named after the
        benchmark's with ``_dbos`` after it, so that the two never share tables and a test's
        benchmark database brings its own peer's."""
        url = make_url(self.dsn)
        return url.set(database=f"{url.database}_dbos").render_as_string(hide_password=False)

    @property
    def kit_dsn(self) -> str:
        """The database of the example services on the participant kit (the kit scenario): named
        after the benchmark's with ``_kit`` after it, dropped before each run."""
        url = make_url(self.dsn)
        return url.set(database=f"{url.database}_kit").render_as_string(hide_password=False)

    @classmethod
    def make(
        cls,
        root: Path,
        python: str,
        database_url: str,
        amqp_url: str,
        log_dir: Path,
        api_port_flag: bool,
        floor: Path | None = None,
        profile: Path | None = None,
    ) -> Stack:
        return cls(root, python, database_url, amqp_url, log_dir, floor, api_port_flag, profile)
