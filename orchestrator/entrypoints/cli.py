"""``orchestrator migrate | run | verify | check [--journals] | contract | dead-letters | archive |
prune | sagas``: the command line, with one-line errors, not tracebacks."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.core.ids import IdKeyAbsent
from orchestrator.entrypoints.settings import Settings, mask_url

if TYPE_CHECKING:  # imported where used, so that each verb loads only what it needs
    from orchestrator.core.definitions import Workflow
    from orchestrator.core.dry_run import DefinitionFor
    from orchestrator.core.routing import Registry

__all__ = ["main"]


class Unreachable(Exception):
    """A service the orchestrator needs cannot be reached; the message says which and why."""


def _large_buffers_back_to_the_os() -> None:
    """glibc's malloc serves a block of 128 KiB or more with its own mmap, unmapped when freed;
    but each such block freed raises that threshold to its size (up to 32 MiB), so that after the
    first, message bodies of up to ORCHESTRATOR_MAX_MESSAGE_BYTES come from its heaps, which keep
    the pages of what was freed in between others. Setting the threshold fixes it where it was.
    Nothing elsewhere (musl, macOS), nor when MALLOC_MMAP_THRESHOLD_ says otherwise."""
    import ctypes
    import os

    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD, at its default


def _run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def migrations_path() -> Path:
    """The Alembic scripts: ``_migrations`` inside the package when it has one, else the top-level
    ``migrations/`` of the source tree the package is imported from.

    The migrations live at the top of the repository, where Alembic and people look for them; a
    wheel cannot reach that folder once installed, so the build maps it into the package as
    ``orchestrator/_migrations`` (pyproject.toml). An installed wheel therefore has the packaged
    copy; a clone or an editable install has no such folder and uses the repository's own, so
    a migration written there runs without a rebuild."""
    import orchestrator

    package = Path(orchestrator.__file__).resolve().parent
    packaged = package / "_migrations"
    return packaged if packaged.is_dir() else package.parent / "migrations"


def migrations_head() -> str | None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(migrations_path()))
    return ScriptDirectory.from_config(config).get_current_head()


async def ensure_database(url: str) -> None:
    """Create the database the URL names, if it is absent."""
    import asyncpg
    from sqlalchemy.engine import make_url

    from orchestrator.adapters.postgres.store import driver_dsn

    target = make_url(url)
    admin = driver_dsn(target.set(database="postgres").render_as_string(hide_password=False))
    try:
        connection = await asyncpg.connect(admin, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        raise Unreachable(f"cannot reach PostgreSQL at {mask_url(url)}: {error}") from None
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", target.database)
        if not exists:
            await connection.execute(f'CREATE DATABASE "{target.database}"')
    finally:
        await connection.close()


def migrate(url: str) -> None:
    from alembic import command
    from alembic.config import Config

    _run(ensure_database(url))
    config = Config()
    config.set_main_option("script_location", str(migrations_path()))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(config, "head")
    _run(_ensure_id_key(url))


async def _ensure_id_key(url: str) -> None:
    """The database's id key (migration 0009 makes one): a new one where the row is missing."""
    import secrets

    import asyncpg

    from orchestrator.adapters.postgres.store import driver_dsn

    connection = await asyncpg.connect(driver_dsn(url), timeout=10)
    try:
        await connection.execute(
            "INSERT INTO id_keys (name, secret) VALUES ('ids', $1) ON CONFLICT (name) DO NOTHING",
            secrets.token_bytes(32),
            timeout=10,
        )
    finally:
        await connection.close()


async def migrate_broker(settings: Settings) -> list[str]:
    """Bring the namespace's topology up to this version's (``adapters.amqp.topology``): what was
    done."""
    from orchestrator.adapters.amqp.broker import services_of
    from orchestrator.adapters.amqp.topology import Topology, TopologyError, migrate_topology
    from orchestrator.entrypoints.bootstrap import registry_of

    registry = registry_of(settings)
    services = services_of(registry.command_types())
    topology = Topology(settings.namespace, partitions=settings.partitions, queue_type=settings.queue_type)
    await _check_amqp(settings.amqp_url)
    try:
        return await migrate_topology(settings.amqp_url, topology, services, registry.start_types())
    except TopologyError as error:
        raise Unreachable(f"cannot migrate the topology of namespace {settings.namespace}: {error}") from None


async def _check_topology(settings: Settings) -> None:
    """Refuse to run on a topology an earlier version left: this one would not consume from it."""
    from orchestrator.adapters.amqp.broker import services_of
    from orchestrator.adapters.amqp.topology import (
        Topology,
        TopologyError,
        pending_migrations,
        require_partitioning,
    )
    from orchestrator.entrypoints.bootstrap import registry_of

    services = services_of(registry_of(settings).command_types())
    topology = Topology(settings.namespace, partitions=settings.partitions, queue_type=settings.queue_type)
    try:
        await require_partitioning(settings.amqp_url, topology)
    except TopologyError as error:
        raise Unreachable(str(error)) from None
    pending = await pending_migrations(settings.amqp_url, topology, services)
    if pending:
        raise Unreachable(
            f"the topology of namespace {settings.namespace} needs migrating ({'; '.join(pending)}):"
            " run 'orchestrator migrate'"
        )


async def _check_amqp(url: str) -> None:
    import logging

    import aio_pika

    from orchestrator.adapters.amqp import nodes

    noisy = logging.getLogger("aiormq.connection")
    level = noisy.level
    noisy.setLevel(logging.CRITICAL)  # the one-line error below says it better
    try:
        connection = await asyncio.wait_for(nodes.connect(url), 10)
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as error:
        raise Unreachable(
            f"cannot reach RabbitMQ at {mask_url(url)}: {error or type(error).__name__}"
        ) from None
    finally:
        noisy.setLevel(level)
    await connection.close()


def _check_api(settings: Settings) -> None:
    """Refuse to serve operator actions to anyone who can reach the port, unless told to."""
    if not 0 <= settings.api_port <= 65535:
        raise Unreachable(f"--port must be between 0 and 65535, not {settings.api_port}")
    if not settings.api_protected and not settings.api_insecure:
        raise Unreachable(
            "no API token is set (ORCHESTRATOR_API_TOKEN, ORCHESTRATOR_API_TOKENS or"
            " ORCHESTRATOR_API_TOKENS_FILE): set one to protect the REST API's actions,"
            " or pass --insecure to serve them without a token"
        )


async def _serve(settings: Settings, *, accept_changed: bool = False, fail_dropped: bool = False) -> int:
    from orchestrator.entrypoints.bootstrap import admit_releases_of, build
    from orchestrator.entrypoints.server import CannotListen, listen

    await ensure_database_reachable(settings.database_url)
    await _check_amqp(settings.amqp_url)
    await _check_topology(settings)
    try:
        sock = listen(settings.api_host, settings.api_port)
    except CannotListen as error:
        raise Unreachable(str(error)) from None
    if not settings.api_protected:
        import logging

        logging.getLogger("orchestrator").warning("the REST API runs --insecure: its actions need no token")
    elif settings.api_open_reads:
        import logging

        logging.getLogger("orchestrator").warning(
            "ORCHESTRATOR_API_OPEN_READS: sagas, dead letters and metrics are readable without a token"
        )
    orchestrator = build(settings, sock)
    try:
        await admit_releases_of(orchestrator, accept_changed=accept_changed, fail_dropped=fail_dropped)
    except BaseException as error:
        sock.close()
        await orchestrator.store.close()
        from orchestrator.adapters.postgres.faults import from_database
        from orchestrator.service.faults import Fault

        if isinstance(error, Exception) and from_database(error) is Fault.UNAVAILABLE:
            # gone between the check above and the release gate (a failover mid-start): one
            # line, as when it was not there at all; whatever restarts the process tries again
            said = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise Unreachable(f"cannot use PostgreSQL at {mask_url(settings.database_url)}: {said}") from None
        raise
    return await orchestrator.run_until_signalled()


async def ensure_database_reachable(url: str) -> None:
    from sqlalchemy import text

    from orchestrator.adapters.postgres.store import make_engine

    engine = make_engine(url, pool_size=1)
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1 FROM sagas LIMIT 1"))
            revision = (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        head = migrations_head()
        if revision != head:
            raise Unreachable(
                f"the database at {mask_url(url)} is at revision {revision}, not {head}:"
                " run 'orchestrator migrate'"
            )
    except Unreachable:
        raise
    except OSError as error:
        raise Unreachable(f"cannot reach PostgreSQL at {mask_url(url)}: {error}") from None
    except Exception as error:
        text_ = str(error).splitlines()[0]
        if "sagas" in text_ and "does not exist" in text_:
            raise Unreachable(
                f"the database at {mask_url(url)} is not migrated: run 'orchestrator migrate'"
            ) from None
        raise Unreachable(f"cannot use PostgreSQL at {mask_url(url)}: {text_}") from None
    finally:
        await engine.dispose()


async def _verify(settings: Settings, saga_id: str | None) -> int:
    """Replay each saga's journal and compare the row, its pending timers, the commands each entry
    records and its unsent outbox with what the journal implies. Exit 1 if any saga differs; else
    3 if some could not be verified (their workflow is not among ``settings.workflows``, as ``run``
    loads them); else 0."""
    from orchestrator.core.replay import verify
    from orchestrator.entrypoints.bootstrap import registry_of, store_of

    await ensure_database_reachable(settings.database_url)
    registry = registry_of(settings)
    store = store_of(settings)
    bad = checked = 0
    unloaded: dict[str, int] = {}
    try:
        registry.use_id_key(await store.id_key())
        ids = [saga_id] if saga_id else await store.saga_ids()
        for sid in ids:
            records = await store.records(sid)
            row = records.saga
            if row is None:
                print(f"{sid}: no such saga")
                bad += 1
                continue
            compiled = registry.for_saga(row)
            if compiled is None:
                loaded = row.workflow in registry.workflows
                shown = f"release {row.release} of {row.workflow}" if loaded else f"workflow {row.workflow!r}"
                print(f"{sid}: not verified: {shown} is not loaded")
                what = f"{row.workflow} release {row.release}" if loaded else row.workflow
                unloaded[what] = unloaded.get(what, 0) + 1
                continue
            found = verify(compiled, records, registry.releases_of(row.workflow))
            if found and found[0].startswith("journal not replayed"):
                print(f"{sid}: not verified: {found[0].removeprefix('journal not replayed: ')}")
                what = f"{row.workflow} (an earlier release)"
                unloaded[what] = unloaded.get(what, 0) + 1
                continue
            checked += 1
            if found:
                bad += 1
                print(f"{sid} ({row.workflow} {row.key}):")
                for line in found:
                    print(f"  {line}")
    finally:
        await store.close()
    print(f"verified {checked} sagas: {bad} differ from their journal")
    if unloaded:
        names = ", ".join(f"{name} ({count})" for name, count in sorted(unloaded.items()))
        print(
            f"not verified {sum(unloaded.values())} sagas whose workflow is not loaded: {names};"
            f" load it with --workflows or ORCHESTRATOR_WORKFLOWS (now {settings.workflows!r})"
        )
    return 1 if bad else 3 if unloaded else 0


def _check(settings: Settings, journals: bool = False, finished_sample: int = 0, jobs: int = 1) -> int:
    """Check the definitions of the workflows ``settings.workflows`` names, as ``run`` loads them
    (no database, no broker): print the findings, errors first, then a summary line. With
    ``journals``, then replay the journals of the sagas in flight, and of the ``finished_sample``
    most recently finished ones, through those definitions, in ``jobs`` processes
    (:func:`_dry_run`). Exit 1 if there is an error (a definition's, or a saga in flight that
    would break), else 0 (warnings alone pass)."""
    from orchestrator.core.checks import Severity, check_all
    from orchestrator.core.definitions import DefinitionError
    from orchestrator.entrypoints.bootstrap import load_workflows

    try:
        workflows = load_workflows(settings.workflows)
    except DefinitionError as error:  # raised while the module declared its workflows
        print(f"error: {settings.workflows}: the definition is refused: {error} [refused]")
        print("checked 0 workflows: 1 error, 0 warnings")
        return 1
    findings = check_all(workflows)
    for finding in findings:
        print(finding.line())
    errors = sum(1 for f in findings if f.severity is Severity.ERROR)
    warnings = len(findings) - errors
    names = ", ".join(w.name for w in workflows)
    print(
        f"checked {len(workflows)} workflow{'s' * (len(workflows) != 1)} ({names}):"
        f" {errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"
    )
    if not journals:
        return 1 if errors else 0
    try:
        registry = _compiled(workflows)
    except ValueError as error:  # refused by the compiler, or two of one name: reported above
        print(f"journals not replayed: the workflows cannot be compiled: {error}")
        return 1
    sys.stdout.flush()  # before the processes fork: what is printed is printed once
    breaking = _dry_run(settings, registry, finished_sample, jobs)
    return 1 if errors or breaking else 0


def _compiled(workflows: list[Workflow]) -> Registry:
    from orchestrator.core.routing import Registry

    return Registry(workflows)


def _definitions(registry: Registry) -> DefinitionFor:
    """The definition the loaded module would decide a saga of ``(workflow, release)`` by, None
    when it has none (the release is dropped): the dry run's one view of the new definitions."""
    from orchestrator.core.machine import CompiledWorkflow

    def definition_for(workflow: str, release: str) -> CompiledWorkflow | None:
        return registry.releases.get((workflow, release))

    return definition_for


async def _id_key(settings: Settings) -> bytes:
    from orchestrator.entrypoints.bootstrap import store_of

    store = store_of(settings, pool_size=1)
    try:
        return await store.id_key()
    finally:
        await store.close()


def _dry_run(settings: Settings, registry: Registry, finished_sample: int, jobs: int) -> int:
    """Replay the journals of the sagas in flight (running, compensating, failed) and of the
    ``finished_sample`` most recently finished ones through ``definition_for``, read in streamed
    queries (``adapters.postgres.journals``) by ``jobs`` processes (``entrypoints.dry_run``);
    print one line per saga that would go otherwise, errors (in flight) first, in saga id order,
    then the summary. How many in flight would break."""
    from orchestrator.entrypoints import dry_run

    _run(ensure_database_reachable(settings.database_url))
    registry.use_id_key(_run(_id_key(settings)))  # the journal's keyed entries are decided with it
    try:
        done = dry_run.run(settings.database_url, _definitions(registry), finished_sample, jobs)
    except dry_run.JournalsUnreadable as error:
        raise Unreachable(str(error)) from None
    for report in done.reported():
        print(report.line())
    for line in done.summary():
        print(line)
    return done.breaking


def _contract(settings: Settings) -> int:
    """Print the AsyncAPI 3 document of the workflows ``settings.workflows`` names, as ``run``
    loads them, for its namespace, queue type and broker: what ``GET /asyncapi.json`` serves,
    without a running service, a database or a broker (to commit it, or hand it to a team that
    writes a participant)."""
    import json
    import os

    from orchestrator.entrypoints.bootstrap import registry_of
    from orchestrator.entrypoints.contract import asyncapi_document

    registry = registry_of(settings)
    text = json.dumps(asyncapi_document(registry, settings), indent=2, ensure_ascii=False) + "\n"
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `orchestrator contract | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit either
        return 141
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="orchestrator", description="A saga orchestrator on RabbitMQ and PostgreSQL."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    migration = sub.add_parser(
        "migrate", help="create the database if absent, apply its migrations, then the broker topology's"
    )
    migration.add_argument("--workflows", help="module(s) defining the workflows, whose queues it declares")
    migration.add_argument("--namespace", help="prefix of exchanges and queues (ORCHESTRATOR_NAMESPACE)")
    run = sub.add_parser("run", help="run the service until SIGTERM or SIGINT")
    run.add_argument("--workflows", help="module(s) defining the workflows (default: the bundled examples)")
    run.add_argument("--namespace", help="prefix of exchanges and queues (ORCHESTRATOR_NAMESPACE)")
    run.add_argument("--host", help="address the REST API listens on (ORCHESTRATOR_API_HOST, 127.0.0.1)")
    run.add_argument(
        "--port", type=int, help="port of the REST API, 0 for any free one (ORCHESTRATOR_API_PORT, 8000)"
    )
    run.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="serve the REST API without ORCHESTRATOR_API_TOKEN: anyone who reaches it may act on sagas",
    )
    run.add_argument(
        "--accept-changed-releases",
        action="store_true",
        help="run a release whose definition changed since it first ran, keeping its new fingerprint"
        " (only for a change that cannot alter what its sagas in flight do)",
    )
    run.add_argument(
        "--fail-dropped-releases",
        action="store_true",
        help="fail the sagas in flight on a release the workflows no longer include (journaled,"
        " with the reason), instead of refusing to start",
    )
    verify = sub.add_parser(
        "verify",
        help="replay journals; report sagas whose row, timers, sent or unsent commands differ from them",
    )
    verify.add_argument("--saga", help="verify only this saga id")
    verify.add_argument(
        "--archive", type=Path, metavar="FILE", help="verify the sagas of this archive instead (no database)"
    )
    verify.add_argument(
        "--workflows",
        help="module(s) defining the workflows, as for run"
        " (ORCHESTRATOR_WORKFLOWS; default: the bundled examples)",
    )
    checking = sub.add_parser(
        "check",
        help="check the workflows' definitions (no database): states a saga could never leave or"
        " never reach, events handled nowhere, steps not undone, replies nobody waits for; with"
        " --journals, what they would change for the sagas in flight (the dry run before a deploy)",
    )
    checking.add_argument(
        "--workflows",
        help="module(s) defining the workflows, as for run"
        " (ORCHESTRATOR_WORKFLOWS; default: the bundled examples)",
    )
    checking.add_argument(
        "--journals",
        action="store_true",
        help="also replay the journals of the sagas in flight (running, compensating, failed) through"
        " these definitions, read from ORCHESTRATOR_DATABASE_URL: exit 1 if one would break",
    )
    checking.add_argument(
        "--finished-sample",
        type=int,
        default=0,
        metavar="N",
        help="with --journals, replay the N most recently finished sagas too: their changes are warnings",
    )
    checking.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="with --journals, processes that replay them (default: one per CPU, at most 4)",
    )
    contract = sub.add_parser(
        "contract",
        help="print the wire protocol of the workflows as an AsyncAPI 3.0.0 document (JSON; no"
        " database, no broker): what GET /asyncapi.json serves",
    )
    contract.add_argument(
        "--workflows",
        help="module(s) defining the workflows, as for run"
        " (ORCHESTRATOR_WORKFLOWS; default: the bundled examples)",
    )
    contract.add_argument("--namespace", help="prefix of exchanges and queues (ORCHESTRATOR_NAMESPACE)")
    from orchestrator.entrypoints import cli_dead_letters

    cli_dead_letters.add_parser(sub)
    from orchestrator.entrypoints import cli_sagas_args

    cli_sagas_args.add_parser(sub)
    from orchestrator.entrypoints import cli_retention

    cli_retention.add_parser(sub)
    from orchestrator.entrypoints import cli_reconcile

    cli_reconcile.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "check" and args.finished_sample and not args.journals:
        parser.error("check: --finished-sample needs --journals")
    if args.command == "check" and args.finished_sample < 0:
        parser.error(f"check: --finished-sample must be 0 or more, not {args.finished_sample}")
    if args.command == "check" and args.jobs is not None and (args.jobs < 1 or not args.journals):
        parser.error("check: --jobs needs --journals, and 1 or more")
    from orchestrator.entrypoints.settings import ConfigurationError  # a setting, or a workflow module

    try:
        settings = Settings.from_env(
            workflows=getattr(args, "workflows", None),
            namespace=getattr(args, "namespace", None),
            api_host=getattr(args, "host", None),
            api_port=getattr(args, "port", None),
            api_insecure=getattr(args, "insecure", None),
        )
        if args.command == "migrate":
            migrate(settings.database_url)
            print(f"migrated {mask_url(settings.database_url)}")
            done = _run(migrate_broker(settings))
            for line in done:
                print(f"topology of namespace {settings.namespace}: {line}")
            if not done:
                print(f"topology of namespace {settings.namespace} is up to date")
        elif args.command == "run":
            from orchestrator.entrypoints.bootstrap import configure_logging

            _check_api(settings)
            configure_logging(settings)
            _large_buffers_back_to_the_os()
            sys.exit(
                _run(
                    _serve(
                        settings,
                        accept_changed=args.accept_changed_releases,
                        fail_dropped=args.fail_dropped_releases,
                    )
                )
            )
        elif args.command == "verify" and args.archive is not None:
            if args.saga:
                raise cli_dead_letters.CommandError("verify: --saga and --archive do not go together")
            sys.exit(cli_retention.verify_archive(settings, args.archive))
        elif args.command == "verify":
            sys.exit(_run(_verify(settings, args.saga)))
        elif args.command == "check":
            from orchestrator.entrypoints.dry_run import default_jobs

            jobs = args.jobs if args.jobs is not None else default_jobs()
            sys.exit(_check(settings, args.journals, args.finished_sample, jobs))
        elif args.command == "contract":
            sys.exit(_contract(settings))
        elif args.command == "dead-letters":
            sys.exit(_run(cli_dead_letters.run(args, settings)))
        elif args.command == "sagas":
            from orchestrator.entrypoints import cli_sagas  # the REST API's reads: loaded for these only

            sys.exit(_run(cli_sagas.run(args, settings)))
        elif args.command in ("archive", "prune"):
            sys.exit(_run(cli_retention.run(args, settings)))
        elif args.command == "reconcile":
            sys.exit(_run(cli_reconcile.run(args, settings)))
    except ConfigurationError as error:  # what it was given cannot be used: exit 1, as ever
        print(f"orchestrator: {error}", file=sys.stderr)
        sys.exit(2 if args.command == "check" else 1)  # check's 1 means: the definitions have errors
    except ValueError as error:
        from orchestrator.core.definitions import DefinitionError  # not imported for every verb

        if not isinstance(error, DefinitionError):
            raise
        # a workflow module that contradicts itself (imported or compiled): one line, not a
        # traceback; `orchestrator check` says the same as a finding
        print(f"orchestrator: the workflow definition is refused: {error}", file=sys.stderr)
        sys.exit(1)
    except Unreachable as error:
        print(f"orchestrator: {error}", file=sys.stderr)
        sys.exit(2)
    except IdKeyAbsent as error:
        print(f"orchestrator: {error}", file=sys.stderr)
        sys.exit(1)
    except cli_dead_letters.CommandError as error:
        print(f"orchestrator: {error}", file=sys.stderr)
        sys.exit(error.code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
