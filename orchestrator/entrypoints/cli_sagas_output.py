"""How ``orchestrator sagas`` prints what the REST API would answer: tables and fields for a
person, the API's own JSON for a script.

Everything a saga carries came from outside (keys, data, reasons, actors): it is printed through
:func:`~orchestrator.core.ingress.printable`, so that no escape sequence reaches the terminal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from pydantic import BaseModel

from orchestrator.core.engine import OutgoingCommand
from orchestrator.core.ingress import clip, printable
from orchestrator.entrypoints.api import models as m

#: said when the database failed during an action: it may have committed before it did
UNKNOWN_OUTCOME = "; if the action came to its commit, `orchestrator sagas history` shows it journaled"
#: the running service's deadline alarm looks for timers it was not told of this often (seconds)
SAFETY_SWEEP_SECONDS = 15
#: the running service's outbox sweep sends unsent rows older than this, this often (seconds)
OUTBOX_SWEEP_SECONDS = 5


def one_line(value: object) -> str:
    return printable(str(value))


def said(error: BaseException) -> str:
    return clip(printable(str(error) or type(error).__name__), 300)


def when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if moment is not None else "-"


def print_json(model: BaseModel) -> None:
    """The REST API's answer for the same request, as FastAPI serializes its response model."""
    print(json.dumps(model.model_dump(mode="json"), indent=2, ensure_ascii=False))


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell; the last one is not, it may be long."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    return [
        "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip()
        for row in [header, *rows]
    ]


def print_page(page: m.SagaPage) -> None:
    rows = [
        (
            s.id,
            one_line(s.workflow),
            clip(one_line(s.key), 40),
            one_line(s.state),
            str(s.status),
            when(s.updated_at),
        )
        for s in page.items
    ]
    for line in table(("ID", "WORKFLOW", "KEY", "STATE", "STATUS", "UPDATED (UTC)"), rows):
        print(line)
    more = f"; next page: --cursor {page.next_cursor}" if page.next_cursor else ""
    print(f"{len(rows)} saga{'s' * (len(rows) != 1)}{more}")


def _commands(commands: Sequence[m.Command]) -> str:
    return ", ".join(f"{one_line(c.type)} ({c.message_id})" for c in commands) or "-"


def _timers(timers: Sequence[m.Timer] | None) -> list[str]:
    if timers is None:
        return ["(could not be read: `orchestrator sagas show` shows them)"]
    return [f"{t.kind} in {one_line(t.state)}, due {when(t.due_at)} UTC" for t in timers] or ["-"]


def print_saga(saga: m.SagaDetail) -> None:
    """A saga's fields, then its data: what it waits for (events, commands, timers) first, as that
    is what the operator of a saga that does not move asks."""
    fields = [
        ("id", saga.id),
        ("workflow", f"{one_line(saga.workflow)} (release {one_line(saga.release)})"),
        ("key", one_line(saga.key)),
        ("state", f"{one_line(saga.state)} ({saga.status})"),
        ("version", str(saga.version)),
        ("created", f"{when(saga.created_at)} UTC"),
        ("updated", f"{when(saga.updated_at)} UTC"),
        ("last error", one_line(saga.last_error or "-")),
        ("waiting for", ", ".join(one_line(t) for t in saga.waiting_for) or "-"),
        ("awaiting", _commands(saga.awaiting)),
        ("attempt", str(saga.attempt)),
        ("timed out", ", ".join(one_line(s) for s in saga.timed_out) or "-"),
        (
            "branches",
            "; ".join(
                f"{one_line(b.name)} ({b.phase or ('given up' if b.given_up else 'waiting')}):"
                f" {_commands(b.awaiting)}"
                for b in saga.branches
            )
            or "-",
        ),
        ("parked", _commands([m.Command(type=p.type, message_id=p.message_id) for p in saga.parked])),
    ]
    if saga.parent is not None:
        fields.append(("parent", saga.parent))
    if saga.children:
        said = "; ".join(
            f"{c.saga_id} ({one_line(c.workflow)}, step {one_line(c.step)})" for c in saga.children
        )
        fields.append(("children", said))
    timer_lines = _timers(saga.timers)
    fields.append(("timers", timer_lines[0]))
    for name, value in fields:
        print(f"{name + ':':<13}{value}")
    for line in timer_lines[1:]:
        print(f"{'':<13}{line}")
    print("data:")
    for line in json.dumps(saga.data, indent=2, ensure_ascii=False, sort_keys=True).split("\n"):
        print(f"  {printable(line)}")


def print_history(page: m.HistoryPage) -> None:
    rows = []
    for e in page.items:
        moved = (
            f"{e.from_state or '-'} -> {e.to_state or '-'}"
            if e.to_state != e.from_state
            else e.to_state or "-"
        )
        sent = ", ".join(c.type for c in e.commands)
        tail = "; ".join(
            x for x in (f"sent {sent}" if sent else "", f"reason: {e.reason}" if e.reason else "") if x
        )
        rows.append(
            (
                str(e.seq),
                when(e.recorded_at),
                e.kind,
                one_line(e.actor or "-"),
                one_line(e.message.type),
                one_line(e.outcome or "-"),
                one_line(f"{moved} ({e.status})" if e.status else moved),
                clip(one_line(tail), 200),
            )
        )
    header = ("SEQ", "RECORDED (UTC)", "KIND", "ACTOR", "MESSAGE", "OUTCOME", "STATE", "SENT, REASON")
    for line in table(header, rows):
        print(line)
    more = f"; more: --after {page.next_after}" if page.next_after is not None else ""
    print(f"{len(rows)} journal entr{'ies' if len(rows) != 1 else 'y'}{more}")


def print_acted(
    action: str,
    actor: str,
    saga: m.SagaWritten,
    commands: Sequence[OutgoingCommand],
    unsent: int,
    timers_set: Sequence[m.Timer],
) -> None:
    """What the action did, what it sent, and when the timers it set will be looked at: the shell
    cannot tell the running service's alarm, which finds them at its next safety sweep."""
    print(
        f"{action}: saga {saga.id} ({one_line(saga.workflow)} {one_line(saga.key)}) is now in"
        f" {one_line(saga.state)} ({saga.status}), version {saga.version}; journaled as {one_line(actor)}"
    )
    if commands:
        count = f"{len(commands)} command{'s' * (len(commands) != 1)}"
        state = f"{unsent} not confirmed by the broker" if unsent else "confirmed by the broker"
        print(f"commands: {count} ({', '.join(c.type for c in commands)}), {state}")
    else:
        print("commands: none")
    if timers_set:
        print(
            "timers set: " + "; ".join(_timers(timers_set)) + ": the running service's deadline alarm"
            f" takes them up at its next safety sweep (within {SAFETY_SWEEP_SECONDS} s)"
        )


def print_unsent(unsent: int, total: int, why: str, broker: str) -> None:
    print(
        f"orchestrator: the action is done and journaled, but {unsent} of its {total}"
        f" command{'s' * (total != 1)} {'was' if unsent == 1 else 'were'} not confirmed by RabbitMQ at"
        f" {broker}: {why}. The outbox keeps {'it' if unsent == 1 else 'them'}: the running service's"
        f" outbox sweep sends {'it' if unsent == 1 else 'them'} (every {OUTBOX_SWEEP_SECONDS} s);"
        " do not repeat the action",
        file=sys.stderr,
    )
