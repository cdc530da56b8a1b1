"""Where the orchestrator's CPU goes: py-spy samples of each orchestrator the benchmark starts,
summed by stage of the step (docs/benchmark.md, "Where a step's CPU goes").

``python -m bench --profile DIR`` attaches ``py-spy record`` to every orchestrator process it
starts (the benchmark runs as their parent, so the attach needs no extra privilege) and writes
one file of collapsed stacks per process into DIR, named after the scenario's log. Only samples
on the CPU are taken (no ``--idle``): the figure is where the CPU time goes, not where the
process waits. ``python -m bench.profile DIR/*.txt`` prints the stages and the hottest
functions; the benchmark puts the same into its JSON under ``profile``.

A sample is given to the first stage that one of its frames names, from the innermost frame
outwards: time in asyncpg called from the store counts as the database's, time in the store's
own Python as the commit's preparation, and time in the engine as the decision's.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["IMPORTS", "OTHER", "STAGES", "Profile", "attach", "read", "stage_of"]

#: (stage, what a frame's file or function contains), tried frame by frame from the innermost:
#: the first match names the sample's stage
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("logging", ("logging/__init__.py", "logging/handlers.py")),
    ("metrics and tracing", ("adapters/metrics.py", "service/counts.py", "tracing.py", "opentelemetry")),
    ("database driver (asyncpg)", ("asyncpg/",)),
    ("broker driver (aiormq, pamqp)", ("aiormq/", "pamqp/")),
    ("publish and confirm (relay)", ("service/relay.py", "aio_pika/exchange.py", "aio_pika/channel.py")),
    ("decode and ingress checks", ("amqp/decoding.py", "core/ingress.py", "core/routing.py", "_parse (")),
    ("decide (engine, machine)", ("core/engine.py", "core/machine.py", "transitions/", "core/branches.py")),
    ("record (journal rows, changes)", ("service/store.py", "core/journal.py")),
    ("commit (the store's statements)", ("adapters/postgres/",)),
    ("consume and ack", ("amqp/broker.py", "aio_pika/", "service/intake.py")),
    ("the batch's own work", ("service/batch.py", "service/bus.py")),
    ("deadlines (alarm, sweep)", ("service/deadlines.py", "apscheduler/", "adapters/scheduler.py")),
    ("event loop", ("asyncio/", "uvloop/")),
)
#: a sample with an import anywhere on its stack is start-up, whatever the import runs
IMPORTS = "start-up (imports)"
_IMPORT_MARKS = ("<frozen importlib._bootstrap", "importlib/__init__.py")
OTHER = "other"
_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")


def stage_of(frames: list[str]) -> str:
    """The stage of one sample, its frames listed outermost first (as py-spy writes them)."""
    if any(mark in frame for frame in frames for mark in _IMPORT_MARKS):
        return IMPORTS
    for frame in reversed(frames):
        for stage, marks in STAGES:
            if any(mark in frame for mark in marks):
                return stage
    return OTHER


@dataclass
class Profile:
    samples: int
    stages: Counter[str]
    #: the innermost frame of each sample: where the CPU is spent, function by function
    leaves: Counter[str]

    def as_json(self, top: int = 25) -> dict[str, object]:
        total = max(self.samples, 1)
        return {
            "samples": self.samples,
            "stages_pct": {s: round(100 * n / total, 1) for s, n in self.stages.most_common()},
            "top_functions_pct": {f: round(100 * n / total, 1) for f, n in self.leaves.most_common(top)},
        }


def read(paths: Iterable[Path]) -> Profile:
    """The samples of py-spy's raw (collapsed) files, summed."""
    stages: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    samples = 0
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            match = _LINE.match(line.strip())
            if match is None:
                continue
            count = int(match["count"])
            frames = [f for f in match["stack"].split(";") if f]
            if frames and frames[0].startswith(("process ", "thread ")):
                frames = frames[1:]
            samples += count
            stages[stage_of(frames)] += count
            if frames:
                leaves[_short(frames[-1])] += count
    return Profile(samples, stages, leaves)


def _short(frame: str) -> str:
    """``function (path/to/module.py:line)`` with the path cut to its package."""
    match = re.match(r"^(?P<function>.*) \((?P<path>.*?):(?P<line>\d+)\)$", frame)
    if match is None:
        return frame
    path = match["path"]
    for root in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if root in path:
            path = path.split(root, 1)[1]
    return f"{match['function']} ({path})"


def attach(pid: int, out: Path, rate: int = 100) -> subprocess.Popen[bytes] | None:
    """``py-spy record`` on ``pid`` until it exits, into ``out``; None where py-spy is not
    installed (``pip install py-spy``). ``rate``: samples per second, py-spy's default; the
    sampler's own CPU is taken from the same two cores as the run's."""
    beside = Path(sys.executable).parent / "py-spy"  # the virtualenv's, where it is not on PATH
    spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if spy is None:
        return None
    argv = [spy, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--nonblocking"]
    argv += ["--output", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "files", nargs="+", type=Path, help="py-spy raw files (python -m bench --profile DIR)"
    )
    parser.add_argument("--top", type=int, default=25, help="how many functions to list")
    args = parser.parse_args(argv)
    profile = read(args.files)
    total = max(profile.samples, 1)
    print(f"{profile.samples} samples on the CPU")
    for stage, count in profile.stages.most_common():
        print(f"{100 * count / total:6.1f}%  {stage}")
    print()
    for function, count in profile.leaves.most_common(args.top):
        print(f"{100 * count / total:6.1f}%  {function}")


if __name__ == "__main__":
    main()
