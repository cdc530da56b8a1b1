"""What a batch does with messages for archived sagas (``orchestrator archive``).

An archived saga's row and journal are gone; its tombstone is left. A start event whose every
saga is archived is a late duplicate: acked, counted as a duplicate, and nothing starts, so the
business is not done twice. A reply to an archived saga is still dead-lettered ``unknown_saga``
(nothing can take it), but its detail says the saga was archived, which is what an operator needs
to know. Kept apart from :mod:`orchestrator.service.batch` so that the batch only asks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from orchestrator.core.ingress import Reason, Refused
from orchestrator.core.routing import Target
from orchestrator.service.store import Tombstone

__all__ = ["archived_refusal", "live_starts"]


def live_starts(keyed: Sequence[Target], archived: Mapping[str, Tombstone]) -> list[Target] | None:
    """The targets of a message that remain once the archived sagas it would start are left out;
    None when it starts nothing else (a duplicate of an archived saga's start). Targets that do not
    start a saga are kept: a reply to an archived saga is refused by the routing, as before."""
    if not archived or not keyed:
        return list(keyed)
    left = [t for t in keyed if not (t.starts and t.saga_id in archived)]
    return left or None


def archived_refusal(
    refused: Refused,
    correlation_id: str | None,
    keyed: Sequence[Target],
    archived: Mapping[str, Tombstone],
) -> Refused:
    """``refused`` with its detail saying the saga it names was archived, when it was."""
    if refused.reason is not Reason.UNKNOWN_SAGA or not archived:
        return refused
    ids = [correlation_id] if correlation_id else [t.saga_id for t in keyed]
    gone = next((archived[i] for i in ids if i is not None and i in archived), None)
    if gone is None:
        return refused
    return Refused(
        Reason.UNKNOWN_SAGA,
        f"{refused.detail}: {gone.workflow} saga {gone.saga_id} (key {gone.key!r}) finished {gone.status}"
        f" and was archived at {gone.archived_at.isoformat()}",
    )
