"""``python -m bench.chaos [--sagas N] [--replicas N] [--seed N] [--out FILE] ...``.

Exits 1 when any check fails, 2 when the run itself could not be done; every option also has a
``CHAOS_*`` variable, which is how ``make chaos CHAOS_SAGAS=N`` reaches it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import tempfile
import traceback
from pathlib import Path

from bench.chaos import checker, report, runner
from bench.chaos.scenario import Scenario
from orchestrator.adapters.amqp.reconnect_noise import quiet_reconnects

#: start events per second of a --ha run when none is given: its participants are the kit's, which
#: fall behind at 40 on the two-core machine (most sagas then compensate by their deadlines)
HA_RATE = 20.0

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "bench-results" / "chaos.json"  # bench-results/ is gitignored
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def parse(argv: list[str] | None) -> argparse.Namespace:
    d = Scenario()
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sagas", type=int, default=int(_env("CHAOS_SAGAS", str(d.sagas))))
    parser.add_argument("--replicas", type=int, default=int(_env("CHAOS_REPLICAS", str(d.replicas))))
    parser.add_argument("--seed", type=int, default=int(_env("CHAOS_SEED", str(d.seed))))
    parser.add_argument(
        "--rate",
        type=float,
        default=float(_env("CHAOS_RATE", "0")) or None,
        help=f"start events per second ({d.rate:g}; with --ha {HA_RATE:g})",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=float(_env("CHAOS_DEADLINE", str(d.deadline))),
        help="the reserve and charge steps' deadline, seconds",
    )
    parser.add_argument(
        "--fault-every",
        type=float,
        default=float(_env("CHAOS_FAULT_EVERY", str(d.fault_every))),
        help="mean seconds between faults",
    )
    parser.add_argument(
        "--settle-timeout", type=float, default=float(_env("CHAOS_SETTLE_TIMEOUT", str(d.settle_timeout)))
    )
    parser.add_argument("--out", type=Path, default=Path(_env("CHAOS_OUT", str(DEFAULT_OUT))))
    parser.add_argument("--logs", type=Path, help="the processes' logs (default: a temporary directory)")
    parser.add_argument(
        "--admin-dsn",
        default=_env("CHAOS_ADMIN_DSN", ADMIN_DSN),
        help="a PostgreSQL database to create the run's own database from",
    )
    parser.add_argument("--keep-database", action="store_true", help="do not drop the run's database")
    parser.add_argument(
        "--participants",
        choices=("kit", "responder"),
        default=_env("CHAOS_PARTICIPANTS", d.participants),
        help="kit: the example services on the participant kit, their business tables checked;"
        " responder: the benchmark responders, which keep nothing",
    )
    parser.add_argument(
        "--fail-rate",
        type=float,
        default=float(_env("CHAOS_FAIL_RATE", str(d.fail_rate))),
        help="kit only: the services' --fail-rate, sagas that compensate by a business failure",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=int(_env("CHAOS_CONCURRENCY", str(d.concurrency))),
        help="kit only: the services' --concurrency",
    )
    parser.add_argument(
        "--participant-delay",
        type=float,
        default=float(_env("CHAOS_PARTICIPANT_DELAY", str(d.delay))),
        help="kit only: the services' --delay, seconds between commit and ack, where a kill"
        " makes a command come again after it was carried out",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=int(_env("CHAOS_PARTITIONS", _env("ORCHESTRATOR_PARTITIONS", "6"))),
        help="ORCHESTRATOR_PARTITIONS of the replicas (docs/scaling.md); 1: one shared queue",
    )
    parser.add_argument(
        "--ha",
        action=argparse.BooleanOptionalAction,
        default=_env("CHAOS_HA", "0") not in ("", "0", "false", "no"),
        help="a 3-node broker cluster and a PostgreSQL primary with a synchronous standby"
        " (pg_auto_failover): primaries killed and the replicas' broker node stopped; the"
        " participants are the kit's, whatever --participants says",
    )
    return parser.parse_args(argv)


def scenario_of(args: argparse.Namespace) -> Scenario:
    participants = "kit" if args.ha else args.participants  # the responders follow no failover
    return Scenario(
        ha=args.ha,
        sagas=args.sagas,
        replicas=args.replicas,
        seed=args.seed,
        rate=args.rate if args.rate is not None else (HA_RATE if args.ha else Scenario().rate),
        deadline=args.deadline,
        fault_every=args.fault_every,
        settle_timeout=args.settle_timeout,
        participants=participants,
        fail_rate=args.fail_rate if participants == "kit" else 0.0,
        concurrency=args.concurrency,
        delay=args.participant_delay if participants == "kit" else 0.0,
    )


async def chaos(args: argparse.Namespace) -> int:
    scenario = scenario_of(args)
    quiet_reconnects()  # the suite's own pools and connections ride out the faults it makes
    # the replicas, `migrate` and `verify` take the caller's environment: the partitions go there
    os.environ["ORCHESTRATOR_PARTITIONS"] = str(args.partitions)
    print(f"chaos: replicas on {args.partitions} partition queues", flush=True)
    logs = args.logs or Path(tempfile.mkdtemp(prefix="orchestrator-chaos-"))
    try:
        outcome = await runner.run(scenario, args.admin_dsn, logs, args.keep_database)
    except Exception:
        traceback.print_exc()
        print(f"the run could not be done; logs in {logs}", file=sys.stderr)
        return 2
    checks = checker.check(outcome.evidence)
    data = report.results(scenario, outcome, checks, ROOT)
    report.write(args.out, data)
    print()
    print(report.table(data))
    print(f"\n{args.out} written; logs in {logs}")
    return 0 if data["ok"] else 1


def main(argv: list[str] | None = None) -> None:
    # The tap's and the publisher's reconnections during a broker restart are meant: not news.
    for name in ("aio_pika", "aiormq"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # SIGTERM as Ctrl-C: the run's cleanup (processes, broker node, database) runs either way.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(asyncio.run(chaos(parse(argv))))


if __name__ == "__main__":
    main()
