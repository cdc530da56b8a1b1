"""``python -m bench [--quick] [--only throughput,latency,...] [--sagas N] [--out FILE]``.

A benchmark, not a test: it exits non-zero only when a scenario could not run, never because a
figure missed its target. The targets are written next to the figures in the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.config import FULL, QUICK, SCENARIOS, Sizes, Stack, floor_from_env, floor_missing
from bench.infra import Broker, Database
from bench.processes import has_port_flag, migrate, spies
from bench.profile import read as read_profile
from bench.report import git_commit, load_average, machine, table
from bench.scenarios import SCENARIOS as RUNNERS
from bench.scenarios import Context
from orchestrator.settings import DEFAULT_AMQP_URL

ROOT = Path(__file__).resolve().parents[1]
#: seconds between two analyses standing in for autovacuum (its default naptime is a minute; a
#: scenario lasts less)
ANALYZE_EVERY = 10.0
DEFAULT_DATABASE = "postgresql+asyncpg://postgres@127.0.0.1:5432/orchestrator_bench"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    parser.add_argument(
        "--quick", action="store_true", help="a tiny run that only proves every scenario works"
    )
    parser.add_argument("--only", help=f"comma-separated scenarios out of {','.join(SCENARIOS)}")
    parser.add_argument("--sagas", type=int, help="sagas in the throughput burst")
    parser.add_argument("--repeats", type=int, help="throughput runs, alternating with the floor")
    parser.add_argument(
        "--peer-sagas", type=int, help="sagas of the peer's one burst after throughput (bench/peer_dbos.py)"
    )
    parser.add_argument("--no-peer", action="store_true", help="throughput without the peer (DBOS)")
    parser.add_argument(
        "--kit-sagas", type=int, help="sagas of the kit scenario's burst (the example services on the kit)"
    )
    parser.add_argument("--kit-concurrency", type=int, help="each kit service's PARTICIPANT_CONCURRENCY")
    parser.add_argument(
        "--rate", type=float, help="sagas/s for latency and deadlines (default: half the max)"
    )
    parser.add_argument("--latency-seconds", type=float, help="how long the open-loop load runs")
    parser.add_argument("--recovery-sagas", type=int, help="sagas parked when the orchestrator is killed")
    parser.add_argument("--deadline-sagas", type=int, help="deadlines falling due under load")
    parser.add_argument("--outage-seconds", type=float, help="how long the orchestrator is down")
    parser.add_argument(
        "--memory-parked", type=int, help="sagas written parked into the database for the memory scenario"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results.json", help="the JSON file")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE),
        help="a database of its own: it is emptied between scenarios (BENCH_DATABASE_URL)",
    )
    parser.add_argument("--amqp-url", default=os.environ.get("ORCHESTRATOR_AMQP_URL", DEFAULT_AMQP_URL))
    parser.add_argument(
        "--floor",
        type=Path,
        default=floor_from_env(),
        help="the floor script, pipeline.py (BENCH_FLOOR); without one the orchestrator is measured alone",
    )
    parser.add_argument(
        "--logs", type=Path, help="directory for the processes' logs (default: a temporary one)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy samples of every orchestrator into this directory, summed by stage in the JSON"
        " (bench/profile.py; needs py-spy)",
    )
    return parser.parse_args(argv)


def sizes_of(args: argparse.Namespace) -> Sizes:
    base = QUICK if args.quick else FULL
    overrides: dict[str, Any] = {
        "throughput_sagas": args.sagas,
        "throughput_repeats": args.repeats,
        "latency_rate": args.rate,
        "latency_seconds": args.latency_seconds,
        "recovery_sagas": args.recovery_sagas,
        "deadline_sagas": args.deadline_sagas,
        "outage_seconds": args.outage_seconds,
        "memory_parked": args.memory_parked,
        "peer_sagas": 0 if args.no_peer else args.peer_sagas,
        "kit_sagas": args.kit_sagas,
        "kit_concurrency": args.kit_concurrency,
    }
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


def chosen(args: argparse.Namespace) -> list[str]:
    if not args.only:
        return list(SCENARIOS)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {', '.join(unknown)}: choose from {', '.join(SCENARIOS)}")
    return [n for n in SCENARIOS if n in names]  # in the order that lets latency use throughput's max


def write(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(results, indent=2, default=str) + "\n")
    temporary.replace(path)


def profiled(directory: Path, before: set[Path]) -> dict[str, Any]:
    """The CPU samples of the scenario's orchestrators (the files py-spy wrote since ``before``),
    by stage; py-spy writes its file when its orchestrator has ended."""
    for spy in spies:
        with contextlib.suppress(subprocess.TimeoutExpired):
            spy.wait(30)
    spies.clear()
    files = sorted(set(directory.iterdir()) - before)
    return {"files": [str(f) for f in files], **read_profile(files).as_json()}


async def bench(args: argparse.Namespace) -> int:
    names = chosen(args)
    sizes = sizes_of(args)
    log_dir = args.logs or Path(tempfile.mkdtemp(prefix="orchestrator-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    stack = Stack.make(
        ROOT,
        python,
        args.database_url,
        args.amqp_url,
        log_dir,
        has_port_flag(python, ROOT),
        args.floor,
        args.profile,
    )
    no_floor = floor_missing(stack.floor)
    began = time.monotonic()
    print(f"orchestrator bench: {', '.join(names)}{' (quick)' if args.quick else ''}; logs in {log_dir}")
    print(no_floor or f"floor: {stack.floor}")
    scratch = f"bench-{secrets.token_hex(4)}"
    migrate(stack, scratch)
    db = await Database.connect(stack.dsn)
    broker = Broker(stack.amqp_url)
    await broker.connect()
    await broker.cleanup(scratch)
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "git_commit": git_commit(ROOT),
        "machine": machine(await db.server_version(), broker.server_version()),
        "sizes": dataclasses.asdict(sizes),
        "floor": None if no_floor else str(stack.floor),
        "floor_note": no_floor,
        "logs": str(log_dir),
        "scenarios": names,
    }
    failed = 0
    # A server without autovacuum (this machine's CI configuration) never refreshes the tables'
    # statistics, and the orchestrator's cached plans scan what they believe empty: the benchmark
    # analyzes as autovacuum would, so that its figures are those of a server as users run it.
    autovacuum = await db.autovacuum()
    results["autovacuum"] = "on" if autovacuum else f"off: the tables analyzed every {ANALYZE_EVERY:g} s"
    ctx = Context(stack, sizes, db, broker, analyze_every=None if autovacuum else ANALYZE_EVERY)
    try:
        for name in names:
            print(f"- {name} ...", flush=True)
            scenario_began = time.monotonic()
            load = load_average()
            sampled = set(args.profile.iterdir()) if args.profile is not None else set()
            try:
                results[name] = await RUNNERS[name](ctx)
            except Exception as error:
                failed += 1
                results[name] = {"error": f"{type(error).__name__}: {error}"}
                traceback.print_exc()
            results[name]["duration_s"] = round(time.monotonic() - scenario_began, 1)
            results[name]["load_average"] = {"before": load, "after": load_average()}
            if args.profile is not None:
                results[name]["profile"] = profiled(args.profile, sampled)
            results["duration_s"] = round(time.monotonic() - began, 1)
            write(args.out, results)
    finally:
        await db.reset()  # do not leave 100,000 parked sagas behind
        await db.close()
        await broker.close()
    print()
    print(table(results))
    if no_floor:
        print(f"\n{no_floor}")
    print(f"\n{args.out} written in {results['duration_s']:.0f} s")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    try:
        import uvloop
    except ImportError:
        sys.exit(asyncio.run(bench(args)))
    sys.exit(uvloop.run(bench(args)))


if __name__ == "__main__":
    main()
