"""``orchestrator sagas list | show | history | cancel | retry | resume | skip | fire-deadline |
migrate``: the shell as one more way in, beside the REST API and the console.

Reads are the REST API's own (:mod:`orchestrator.entrypoints.api.sagas` over
:class:`~orchestrator.adapters.postgres.queries.Queries`), so the two cannot disagree; ``--json``
prints exactly what the API answers. Actions and migrations go through the service's message bus
(:class:`orchestrator.service.bus.MessageBus`, built by ``bootstrap.build_shell``), with the API's
checks and a journal entry naming the actor; this process then sends what they committed
(:func:`_act`). The arguments are
:mod:`cli_sagas_args` (which the main parser loads for every verb: this module is loaded only to
run one of these), the printing :mod:`cli_sagas_output`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from pydantic import ValidationError

from orchestrator.adapters.amqp.broker import Broker
from orchestrator.adapters.metrics import Metrics
from orchestrator.adapters.postgres.faults import from_database
from orchestrator.adapters.postgres.queries import BadCursor, Queries
from orchestrator.adapters.postgres.store import PostgresStore
from orchestrator.core.engine import saga_id_for
from orchestrator.core.routing import Registry
from orchestrator.entrypoints import cli_sagas_output as out
from orchestrator.entrypoints.api import models as m
from orchestrator.entrypoints.api.context import ApiContext
from orchestrator.entrypoints.api.sagas import (
    detail,
    history_page,
    saga_filter,
    saga_page,
    timers_set_by,
    written,
)
from orchestrator.entrypoints.bootstrap import Shell, build_shell, registry_of
from orchestrator.entrypoints.cli import Unreachable, ensure_database_reachable
from orchestrator.entrypoints.cli_dead_letters import CommandError, _user
from orchestrator.entrypoints.cli_sagas_args import (
    ACTIONS,
    CONFIRM_SECONDS,
    DATABASE_DOWN,
    DONE,
    NOT_FOUND,
    NOT_SENT,
    REFUSED,
)
from orchestrator.entrypoints.settings import Settings, mask_url
from orchestrator.service.operations import (
    ActionRefused,
    Applied,
    BadRequest,
    OperatorAction,
    SagaNotFound,
)

__all__ = ["run"]

log = logging.getLogger("orchestrator.entrypoints.cli_sagas")


class _NotConfirmed(Exception):
    """The action committed, but not all its commands were confirmed by the broker."""

    def __init__(self, applied: Applied, unsent: int, why: str) -> None:
        super().__init__(why)
        self.applied, self.unsent = applied, unsent


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """The command ``args`` names; its exit status."""
    if args.sagas_command == "migrate":
        return await _migrate(args, settings)
    saga_id = _chosen_saga(args) if args.sagas_command != "list" else ""

    async with _wired(settings) as wired:
        try:
            if args.sagas_command == "list":
                return await _list(wired, args)
            if args.sagas_command == "show":
                return await _show(wired, saga_id, args.json)
            if args.sagas_command == "history":
                return await _history(wired, saga_id, args)
            return await _action(wired, saga_id, args)
        except (BadRequest, BadCursor) as error:
            raise CommandError(str(error)) from None
        except HTTPException as error:  # the REST API's own check of a list's filter: its 422
            raise CommandError(str(error.detail)) from None
        except SagaNotFound as error:
            raise CommandError(str(error), NOT_FOUND) from None
        except ActionRefused as error:
            raise CommandError(_refusal(str(error), settings), REFUSED) from None
        except Exception as error:
            if from_database(error) is None:
                raise
            said = out.one_line(str(error).splitlines()[0] if str(error) else type(error).__name__)
            raise CommandError(
                f"PostgreSQL at {mask_url(settings.database_url)} failed: {said}"
                + (out.UNKNOWN_OUTCOME if args.sagas_command in ACTIONS else ""),
                DATABASE_DOWN,
            ) from None


def _chosen_saga(args: argparse.Namespace) -> str:
    """SAGA, or the saga ``--workflow`` and ``--key`` name (its id follows from them)."""
    pair = (args.workflow, args.key)
    if args.saga is not None and pair != (None, None):
        raise CommandError(f"{args.sagas_command}: give SAGA, or --workflow and --key, not both")
    if args.saga is not None:
        return str(args.saga)
    if None in pair:
        raise CommandError(f"{args.sagas_command}: give SAGA (a saga id), or --workflow and --key")
    return saga_id_for(args.workflow, args.key)


def _refusal(reason: str, settings: Settings) -> str:
    if "not load" in reason:  # the shell loads what --workflows names, not what the service runs
        return f"{reason} (this command loads {settings.workflows!r}: --workflows names others)"
    return reason


@dataclass
class Wired:
    shell: Shell
    #: the REST API's context over the same store and bus: its reads and its answers' shapes
    api: ApiContext

    @property
    def registry(self) -> Registry:
        return self.shell.registry

    @property
    def store(self) -> PostgresStore:
        return self.shell.store

    @property
    def broker(self) -> Broker:
        return self.shell.broker


@contextlib.asynccontextmanager
async def _wired(settings: Settings) -> AsyncIterator[Wired]:
    """The shell's parts from the bootstrap (:func:`~orchestrator.entrypoints.bootstrap.build_shell`),
    and the REST API's context over them, closed at the end."""
    for noisy in ("aio_pika", "aiormq"):  # a broker away is said in one line of ours, not theirs
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    registry = registry_of(settings)
    try:
        await ensure_database_reachable(settings.database_url)
    except Unreachable as error:
        raise CommandError(str(error), DATABASE_DOWN) from None
    shell = build_shell(settings, registry)
    store = shell.store
    api = ApiContext(registry, store, Queries(store.engine), settings, Metrics(process=False), bus=shell.bus)
    try:
        registry.use_id_key(await store.id_key())  # before the bus decides: ids keyed as the service's
        yield Wired(shell, api)
    finally:
        await shell.broker.close(timeout=2)
        await store.close()


async def _act(wired: Wired, saga_id: str, action: OperatorAction) -> Applied:
    """Apply the action through the bus, as ``POST /sagas/{id}/<action>`` does, then send the
    commands it committed and wait for the broker's confirms, as the running service's relay does.
    :class:`_NotConfirmed` if some were not confirmed within :data:`CONFIRM_SECONDS` (the outbox
    keeps them for the service's sweep)."""
    async with asyncio.timeout(CONFIRM_SECONDS):  # the database's clock, as the service decides by
        await wired.shell.clock.sync()
    applied = await wired.shell.bus.act(saga_id, action)
    commands = wired.shell.outbox.take()
    if not commands:
        return applied
    try:
        async with asyncio.timeout(CONFIRM_SECONDS):
            await wired.broker.connect_publisher("orchestrator-cli")
            sent = await asyncio.gather(
                *(wired.broker.publish_command(c) for c in commands), return_exceptions=True
            )
    except Exception as error:  # unreachable, or no confirm in time: none is known to be sent
        why = (
            f"no confirm within {CONFIRM_SECONDS:g} s" if isinstance(error, TimeoutError) else out.said(error)
        )
        raise _NotConfirmed(applied, len(commands), why) from None
    confirmed = [c.message_id for c, outcome in zip(commands, sent, strict=True) if outcome is None]
    try:
        await wired.store.mark_sent(confirmed)
    except Exception as error:  # the sweep sends them again: participants dedupe
        log.warning("sent, but not marked sent (the outbox sweep sends them again): %s", error)
    failed = [outcome for outcome in sent if isinstance(outcome, BaseException)]
    if failed:
        raise _NotConfirmed(applied, len(failed), out.said(failed[0]))
    return applied


async def _action(wired: Wired, saga_id: str, args: argparse.Namespace) -> int:
    name = args.sagas_command
    fields: dict[str, Any] = {"reason": args.reason}
    try:  # the REST bodies' own checks: lengths, text PostgreSQL can store
        branch = getattr(args, "branch", None)
        if name == "skip":
            body: m.ActionRequest = m.SkipRequest(
                **fields, outcome=args.outcome, data=args.data, branch=branch
            )
        elif name == "resume":
            body = m.ResumeRequest(**fields, step=args.step, new_attempt=args.new_attempt)
        elif name == "retry":
            body = m.RetryRequest(**fields, new_attempt=args.new_attempt, branch=branch)
        elif name == "fire-deadline":
            body = m.BranchRequest(**fields, branch=branch)
        else:
            body = m.ActionRequest(**fields)
    except ValidationError as error:
        said = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise BadRequest(said) from None
    action = OperatorAction(
        name,
        args.actor or _user(),
        body.reason,
        step=getattr(body, "step", None),
        outcome=getattr(body, "outcome", None),
        data=getattr(body, "data", {}),
        new_attempt=getattr(body, "new_attempt", False),
        branch=getattr(body, "branch", None),
    )
    try:
        applied, unsent, why = await _act(wired, saga_id, action), 0, ""
    except _NotConfirmed as problem:
        applied, unsent, why = problem.applied, problem.unsent, str(problem)
    answer = await written(wired.api, applied)
    if args.json:
        out.print_json(answer)
    else:
        out.print_acted(action.name, action.actor, answer, applied.commands, unsent, timers_set_by(applied))
    if unsent:
        out.print_unsent(unsent, len(applied.commands), why, mask_url(wired.broker.url))
        return NOT_SENT
    return DONE


async def _list(wired: Wired, args: argparse.Namespace) -> int:
    status = m.Status(args.status) if args.status else None
    found = saga_filter(
        wired.api, workflow=args.workflow, status=status, state=args.state, key=args.key, stuck=args.stuck
    )
    page = await saga_page(wired.api, found, args.limit, args.cursor)
    if args.json:
        out.print_json(page)
    else:
        out.print_page(page)
    return DONE


async def _show(wired: Wired, saga_id: str, as_json: bool) -> int:
    saga = await wired.store.get_saga(saga_id)
    if saga is None:
        raise SagaNotFound(f"no saga {saga_id}")
    shown = await detail(wired.api, saga)
    if as_json:
        out.print_json(shown)
    else:
        out.print_saga(shown)
    return DONE


async def _history(wired: Wired, saga_id: str, args: argparse.Namespace) -> int:
    page = await history_page(wired.api, saga_id, args.after, args.limit)
    if page is None:
        raise SagaNotFound(f"no saga {saga_id}")
    if args.json:
        out.print_json(page)
    else:
        out.print_history(page)
    return DONE


#: sagas a migration moves (or plans) per page
MIGRATION_PAGE = 1000


async def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    """Print each saga's move (or why it cannot move), then a summary; exit 1 if any cannot."""
    registry = registry_of(settings)
    await ensure_database_reachable(settings.database_url)
    shell = build_shell(settings, registry)
    moved = refused = 0
    after: str | None = None
    try:
        async with asyncio.timeout(CONFIRM_SECONDS):
            await shell.clock.sync()
            registry.use_id_key(await shell.store.id_key())
        while True:  # a page at a time: each printed as it comes, none held
            report = await shell.bus.migrate(
                args.workflow,
                args.from_release,
                args.to_release,
                dict(args.states),
                actor=args.actor,
                apply=args.apply,
                saga_ids=args.sagas,
                after=after,
                limit=None if args.sagas else MIGRATION_PAGE,
            )
            for saga in report.sagas:
                if saga.refused is None:
                    print(f"{saga.saga_id} {saga.key}: {saga.from_state} -> {saga.to_state} ({saga.status})")
                else:
                    print(f"{saga.saga_id} {saga.key}: {saga.from_state or '-'}: cannot move: {saga.refused}")
            moved, refused = moved + report.moved, refused + report.refused
            if report.next_after is None:
                break
            after = report.next_after
    except BadRequest as error:
        raise CommandError(str(error)) from None
    finally:
        await shell.store.close()
    verb = "moved" if args.apply else "would move"
    tail = "" if args.apply else "; a dry run: nothing written (--apply to write it)"
    print(
        f"{verb} {moved} sagas of {args.workflow} from release {args.from_release} to"
        f" {args.to_release}, {refused} cannot move{tail}"
    )
    return 1 if refused else 0
