"""``python -m participants NAME``: settings from options first, then the environment, then defaults.

The environment is there for containers and CI, the options for a person at a terminal, which is
why an option always wins over its variable.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from types import FrameType
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from orchestrator.participant import (
    DEFAULT_AMQP_URL,
    DEFAULT_NAMESPACE,
    DEFAULT_QUEUE_TYPE,
    EXIT_DATABASE,
    FALSE_WORDS,
    QUEUE_TYPES,
    TRUE_WORDS,
    Participant,
    Settings,
    SettingsError,
    mask_url,
    run,
)
from participants.common import Options
from participants.services import SERVICES

__all__ = ["DEFAULT_AMQP_URL", "DEFAULT_DATABASE_URL", "main", "parse_args"]

#: the examples' one database, a schema per service (the kit itself has no default: a real
#: service names its own); the demo creates it under this name too
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/participants"
#: the kit's defaults, which a value given here must fall back to alike
DEFAULT_CONCURRENCY: int = Settings.concurrency
DEFAULT_MAX_ATTEMPTS: int = Settings.max_attempts
DEFAULT_SHUTDOWN_GRACE: float = Settings.shutdown_grace

EPILOG = f"""\
environment (an option given on the command line wins over its variable):
  ORCHESTRATOR_AMQP_URL      --amqp-url       (default {DEFAULT_AMQP_URL})
  ORCHESTRATOR_NAMESPACE     --namespace      (default {DEFAULT_NAMESPACE})
  ORCHESTRATOR_QUEUE_TYPE    --queue-type     ({" or ".join(QUEUE_TYPES)}, default {DEFAULT_QUEUE_TYPE})
  PARTICIPANT_DATABASE_URL   --database-url   (default {DEFAULT_DATABASE_URL},
                                               created when missing; each service has a schema of its own)
  PARTICIPANT_CONCURRENCY    --concurrency    (default {DEFAULT_CONCURRENCY})
  PARTICIPANT_MAX_ATTEMPTS   --max-attempts   (default {DEFAULT_MAX_ATTEMPTS})
  PARTICIPANT_SHUTDOWN_GRACE --shutdown-grace (default {DEFAULT_SHUTDOWN_GRACE:g})
  PARTICIPANT_NEVER_ANSWER   --never-answer   (1/true/yes/on or 0/false/no/off)
  PARTICIPANT_DELAY          --delay
  PARTICIPANT_FAIL_RATE      --fail-rate
  INVENTORY_OUT_OF_STOCK     --out-of-stock   (inventory only)
  PAYMENT_DECLINE_OVER       --decline-over   (payment and billing only)
  BUYER_REFUSE_OVER          --refuse-over    (buyer only)
  TRAVEL_SOLD_OUT            --sold-out       (flights, hotels and cars only)

failure replies chosen by --fail-rate:
  inventory.ReserveStock -> inventory.OutOfStock    payment.ChargePayment -> payment.PaymentDeclined
  shipping.ShipOrder     -> shipping.ShipmentFailed buyer.RequestSignature -> buyer.BuyerRefused
  bank.CollectFunds      -> bank.FundsDeclined      flights.BookFlight -> flights.FlightFull
  hotels.BookRoom        -> hotels.NoRoom           cars.RentCar -> cars.NoCar
  (seller and compensations never fail)

exit codes: 0 stopped by SIGTERM/SIGINT (within --shutdown-grace, whatever the broker does),
  2 bad usage or RabbitMQ unreachable or refusing the topology at start,
  3 the shutdown overran its bound by 3 s and the watchdog ended it,
  4 the database unreachable or its tables not created at start,
  130/143 a second SIGINT/SIGTERM during the shutdown (128 + the signal's number).
The wire contract is in docs/protocol.md.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m participants",
        description="Run one example participant service that answers the saga orchestrator's commands.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "name", metavar="NAME", choices=sorted(SERVICES), help=f"one of {', '.join(SERVICES)}"
    )
    parser.add_argument("--amqp-url", metavar="URL", help="RabbitMQ URL (env ORCHESTRATOR_AMQP_URL)")
    parser.add_argument(
        "--namespace", metavar="NS", help="prefix of every exchange and queue (env ORCHESTRATOR_NAMESPACE)"
    )
    parser.add_argument(
        "--queue-type",
        metavar="TYPE",
        help=f"{' or '.join(QUEUE_TYPES)}: how the queues are declared, as the orchestrator declares them"
        f" (default {DEFAULT_QUEUE_TYPE}, env ORCHESTRATOR_QUEUE_TYPE)",
    )
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="the service's own PostgreSQL, created when missing (env PARTICIPANT_DATABASE_URL)",
    )
    parser.add_argument(
        "--concurrency",
        metavar="N",
        help="commands handled at once, a database connection each"
        f" (default {DEFAULT_CONCURRENCY}, env PARTICIPANT_CONCURRENCY)",
    )
    parser.add_argument(
        "--max-attempts",
        metavar="N",
        help="failed tries of a command before it is dead-lettered"
        f" (default {DEFAULT_MAX_ATTEMPTS}, env PARTICIPANT_MAX_ATTEMPTS)",
    )
    parser.add_argument(
        "--shutdown-grace",
        metavar="SECONDS",
        help="after SIGTERM/SIGINT, the one bound on finishing the commands in flight and closing,"
        f" broker or not (default {DEFAULT_SHUTDOWN_GRACE:g}, env PARTICIPANT_SHUTDOWN_GRACE)",
    )

    failures = parser.add_argument_group("failure injection, any service")
    failures.add_argument(
        "--never-answer",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ack every command and never reply, to exercise timeouts (env PARTICIPANT_NEVER_ANSWER)",
    )
    failures.add_argument(
        "--delay",
        metavar="SECONDS",
        help="wait this long before each reply, other commands go on meanwhile (env PARTICIPANT_DELAY)",
    )
    failures.add_argument(
        "--fail-rate",
        metavar="R",
        help="give the failure reply for a fraction R (0..1) of saga keys, chosen by a hash of the key"
        " so reruns agree (env PARTICIPANT_FAIL_RATE)",
    )

    business = parser.add_argument_group("failure injection, one service")
    business.add_argument(
        "--out-of-stock",
        metavar="SKU[,SKU...]",
        help="inventory: orders with a line of these SKUs get OutOfStock (env INVENTORY_OUT_OF_STOCK)",
    )
    business.add_argument(
        "--decline-over",
        metavar="CENTS",
        help="payment: decline charges above this amount; billing: refuse such invoices"
        " (env PAYMENT_DECLINE_OVER)",
    )
    business.add_argument(
        "--sold-out",
        metavar="CITY[,CITY...]",
        help="flights, hotels, cars: trips to these cities get FlightFull, NoRoom, NoCar"
        " (env TRAVEL_SOLD_OUT)",
    )
    business.add_argument(
        "--refuse-over",
        metavar="CENTS",
        help="buyer: refuse to sign escrows above this amount (env BUYER_REFUSE_OVER)",
    )
    return parser


def parse_args(
    argv: Sequence[str] | None, environ: Mapping[str, str]
) -> tuple[Participant, Settings, Options]:
    """Options, else environment, else defaults; exits with status 2 on a bad value, as argparse does."""
    parser = _parser()
    args = parser.parse_args(argv)

    for option, owners in (
        ("out_of_stock", ("inventory",)),
        ("decline_over", ("payment", "billing")),
        ("refuse_over", ("buyer",)),
    ):
        if getattr(args, option) is not None and args.name not in owners:
            said = " and ".join(owners)
            parser.error(
                f"--{option.replace('_', '-')} applies to the {said} service{'s' * (len(owners) > 1)} only"
            )

    def pick(option: str | None, flag: str, variable: str) -> tuple[str | None, str]:
        """The value to use and where it came from, for error messages."""
        if option is not None:
            return option, flag
        return environ.get(variable), variable

    def number(value: str | None, source: str, *, low: float, high: float = math.inf) -> float | None:
        if value is None or value.strip() == "":
            return None
        try:
            parsed = float(value)
        except ValueError:
            parsed = math.nan
        if not (math.isfinite(parsed) and low <= parsed <= high):
            bounds = f"between {low:g} and {high:g}" if high < math.inf else f"at least {low:g}"
            parser.error(f"{source} must be a number {bounds}, got {value!r}")
        return parsed

    def cents(value: str | None, source: str) -> int | None:
        if value is None or value.strip() == "":
            return None
        try:
            parsed = int(value)
        except ValueError:
            parser.error(f"{source} must be a whole number of cents, got {value!r}")
        if parsed < 0:
            parser.error(f"{source} must not be negative, got {value!r}")
        return parsed

    never_answer: bool | None = args.never_answer
    if never_answer is None:  # strict, unlike a flag of the kit's: a typo in a fault must not pass unseen
        raw = environ.get("PARTICIPANT_NEVER_ANSWER", "").strip().lower()
        if raw not in TRUE_WORDS | FALSE_WORDS:
            parser.error(f"PARTICIPANT_NEVER_ANSWER must be 1/true/yes/on or 0/false/no/off, got {raw!r}")
        never_answer = raw in TRUE_WORDS

    def whole(value: str | None, source: str, *, low: int, high: int, default: int) -> int:
        if value is None or value.strip() == "":
            return default
        try:
            parsed = int(value)
        except ValueError:
            parsed = low - 1
        if not low <= parsed <= high:
            parser.error(f"{source} must be a whole number between {low} and {high}, got {value!r}")
        return parsed

    namespace = args.namespace if args.namespace is not None else environ.get("ORCHESTRATOR_NAMESPACE")
    namespace = namespace or DEFAULT_NAMESPACE
    queue_type_raw, queue_type_source = pick(args.queue_type, "--queue-type", "ORCHESTRATOR_QUEUE_TYPE")
    queue_type = (queue_type_raw or DEFAULT_QUEUE_TYPE).strip().lower()
    if queue_type not in QUEUE_TYPES:
        parser.error(f"{queue_type_source} must be one of {', '.join(QUEUE_TYPES)}, got {queue_type_raw!r}")
    amqp_url = args.amqp_url if args.amqp_url is not None else environ.get("ORCHESTRATOR_AMQP_URL")
    amqp_url = amqp_url or DEFAULT_AMQP_URL

    out_of_stock_raw = (
        args.out_of_stock if args.out_of_stock is not None else environ.get("INVENTORY_OUT_OF_STOCK", "")
    )
    options = Options(
        fail_rate=number(*pick(args.fail_rate, "--fail-rate", "PARTICIPANT_FAIL_RATE"), low=0.0, high=1.0)
        or 0.0,
        out_of_stock=(
            frozenset(sku.strip() for sku in out_of_stock_raw.split(",") if sku.strip())
            if args.name == "inventory"
            else frozenset()
        ),
        decline_over=cents(*pick(args.decline_over, "--decline-over", "PAYMENT_DECLINE_OVER"))
        if args.name in ("payment", "billing")
        else None,
        refuse_over=cents(*pick(args.refuse_over, "--refuse-over", "BUYER_REFUSE_OVER"))
        if args.name == "buyer"
        else None,
        sold_out=frozenset(
            city.strip()
            for city in (
                args.sold_out if args.sold_out is not None else environ.get("TRAVEL_SOLD_OUT", "")
            ).split(",")
            if city.strip() and args.name in ("flights", "hotels", "cars")
        ),
    )
    database_url = (
        args.database_url if args.database_url is not None else environ.get("PARTICIPANT_DATABASE_URL")
    )
    try:
        settings = Settings(
            database_url=database_url or DEFAULT_DATABASE_URL,
            amqp_url=amqp_url,
            namespace=namespace,
            queue_type=queue_type,
            concurrency=whole(
                *pick(args.concurrency, "--concurrency", "PARTICIPANT_CONCURRENCY"),
                low=1,
                high=1000,
                default=DEFAULT_CONCURRENCY,
            ),
            max_attempts=whole(
                *pick(args.max_attempts, "--max-attempts", "PARTICIPANT_MAX_ATTEMPTS"),
                low=1,
                high=1000,
                default=DEFAULT_MAX_ATTEMPTS,
            ),
            reply_delay=number(*pick(args.delay, "--delay", "PARTICIPANT_DELAY"), low=0.0) or 0.0,
            never_answer=never_answer,
            shutdown_grace=_default(
                number(*pick(args.shutdown_grace, "--shutdown-grace", "PARTICIPANT_SHUTDOWN_GRACE"), low=0.0),
                DEFAULT_SHUTDOWN_GRACE,
            ),
        )
    except SettingsError as error:
        parser.error(str(error))
    return SERVICES[args.name](options), settings, options


def _default(value: float | None, default: float) -> float:
    """``value or default`` would turn an explicit 0 into the default."""
    return default if value is None else value


async def ensure_database(url: str) -> None:
    """Create the examples' database when it is missing, so ``make demo`` needs no step by hand; a
    real service's database is made by whoever runs it, so the kit itself never creates one."""
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    if not name:
        return
    try:
        connection = await asyncpg.connect(dsn, timeout=10)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await connection.close()
        return
    admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")), timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
        pass  # another service of the demo, starting at the same time, made it
    finally:
        await admin.close()


#: how long a start waits for a database that no host serves yet (a failover takes seconds)
START_WAIT_SECONDS = 30.0


async def _when_reachable(url: str, log: logging.Logger) -> None:
    """:func:`ensure_database`, tried again while the database cannot be reached, up to
    :data:`START_WAIT_SECONDS`; said once as a WARNING. Then the last error is raised."""
    deadline = asyncio.get_running_loop().time() + START_WAIT_SECONDS
    warned = False
    while True:
        try:
            await ensure_database(url)
            return
        except (OSError, asyncpg.TargetServerAttributeNotMatched, asyncpg.CannotConnectNowError) as error:
            if asyncio.get_running_loop().time() >= deadline:
                raise
            if not warned:
                log.warning("the database at %s cannot be reached yet (%s): waiting", mask_url(url), error)
                warned = True
            await asyncio.sleep(0.5)


def main(argv: Sequence[str] | None = None) -> int:
    participant, settings, _ = parse_args(argv, os.environ)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aio-pika reports reconnects itself (with the password masked); aiormq would say each failure
    # a second time, and their debug chatter would drown the one line per command.
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)
    log = logging.getLogger(f"participant.{participant.service}")
    # Until the worker takes the signals over, a SIGTERM or SIGINT stops the start cleanly.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop_before_start)
    try:
        asyncio.run(_when_reachable(settings.database_url, log))
    except (OSError, asyncpg.PostgresError, asyncpg.TargetServerAttributeNotMatched) as error:
        log.error("cannot reach the database at %s: %s", mask_url(settings.database_url), error)
        return EXIT_DATABASE
    except _StoppedBeforeStart:
        log.info("stopped before reaching the database")
        return 0
    try:
        return run(participant, settings)
    except _StoppedBeforeStart:  # in the moment before the worker's own handlers
        log.info("stopped while starting")
        return 0


class _StoppedBeforeStart(Exception):
    """A signal arrived before the worker installed its own handlers."""


def _stop_before_start(signum: int, frame: FrameType | None) -> None:
    raise _StoppedBeforeStart
