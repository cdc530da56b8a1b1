"""Which saga an incoming event is for, or why it is for none (and so is dead-lettered).

Pure: it reads the message and the registered workflows, never the database. Saga ids follow
from (workflow, key), so finding a saga by the key in its payload needs no lookup; whether the
saga exists is for the service layer to check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.core.children import CancelChild
from orchestrator.core.definitions import DefinitionError, Workflow
from orchestrator.core.engine import SagaSnapshot, saga_id_for
from orchestrator.core.ingress import Reason, Refused
from orchestrator.core.machine import DEFAULT_MAX_PARKED, CompiledWorkflow
from orchestrator.core.messages import InvalidPayload, load
from orchestrator.core.upcasting import upcast

__all__ = ["Registry", "Rejected", "Target"]


#: the name this module used before the ingress rules gave every refusal a reason code
Rejected = Refused


@dataclass(frozen=True)
class Target:
    """One saga a message is for. ``starts`` says it may create the saga."""

    workflow: CompiledWorkflow
    saga_id: str | None  # from the workflow's key in the payload; None where the payload has none
    starts: bool
    #: the payload as this workflow's event class reads it (upcast to its schema version)
    payload: Mapping[str, Any]


class Registry:
    """The workflows a service runs, indexed by the event types they take. ``max_parked``: how
    many events one saga may keep parked (``ORCHESTRATOR_MAX_PARKED``).

    Several releases of one workflow may be loaded side by side: each saga is decided by the one
    it is pinned to (:meth:`for_saga`), and a new saga starts on the workflow's current release
    (:attr:`workflows`): the only one loaded, or else the one marked ``current=True``."""

    def __init__(self, workflows: Iterable[Workflow], max_parked: int = DEFAULT_MAX_PARKED) -> None:
        #: (workflow, release) -> its definition, compiled
        self.releases: dict[tuple[str, str], CompiledWorkflow] = {}
        named: dict[str, list[Workflow]] = {}
        for workflow in workflows:
            if (workflow.name, workflow.release) in self.releases:
                raise DefinitionError(
                    f"two workflows are called {workflow.name!r} with release {workflow.release!r}"
                )
            self.releases[(workflow.name, workflow.release)] = CompiledWorkflow(workflow, max_parked)
            named.setdefault(workflow.name, []).append(workflow)
        #: workflow name -> its current release: where new sagas start
        self.workflows: dict[str, CompiledWorkflow] = {}
        for name, loaded in named.items():
            marked = [w for w in loaded if w.current] if len(loaded) > 1 else loaded
            if len(marked) != 1:
                releases = ", ".join(sorted(w.release for w in loaded))
                raise DefinitionError(
                    f"{name}: releases {releases} are loaded and {len(marked)} of them marked"
                    " current=True: mark exactly one, the release new sagas start on"
                )
            self.workflows[name] = self.releases[(name, marked[0].release)]
        self.by_type: dict[str, list[CompiledWorkflow]] = {}
        for compiled in self.workflows.values():
            for type_name in compiled.workflow.events:
                self.by_type.setdefault(type_name, []).append(compiled)
        for compiled in self.releases.values():  # a type only an older release still takes
            for type_name in compiled.workflow.events:
                takers = self.by_type.setdefault(type_name, [])
                if all(c.workflow.name != compiled.workflow.name for c in takers):
                    takers.append(compiled)
        for compiled in self.releases.values():  # a child's start would be dead-lettered every time
            missing = sorted(set(compiled.workflow.children.values()) - self.workflows.keys())
            if missing:
                raise DefinitionError(
                    f"{compiled.workflow.name} starts {', '.join(missing)} sagas as its children, and no"
                    " such workflow is loaded: load its module beside this one (--workflows)"
                )
        # any saga may be a child: each workflow takes its parent's cancel (orchestrator.core.children)
        self.by_type[CancelChild.TYPE] = list(self.workflows.values())

    def use_id_key(self, key: bytes) -> None:
        """Key the ids of the commands and timers every loaded release decides from now on with
        ``key`` (:mod:`orchestrator.core.ids`): the service's, read from its database at start,
        before anything is decided."""
        if len(key) < 16:
            raise ValueError("an id key has at least 16 bytes")
        for compiled in self.releases.values():
            compiled.use_id_key(key)

    def for_saga(self, saga: SagaSnapshot) -> CompiledWorkflow | None:
        """The definition a saga is decided by: the release it is pinned to, if loaded here."""
        return self.releases.get((saga.workflow, saga.release))

    def releases_of(self, workflow: str) -> Callable[[str], CompiledWorkflow | None]:
        """Each loaded release of ``workflow`` by its name, for replay to follow a migration."""
        return lambda release: self.releases.get((workflow, release))

    def loaded(self) -> list[tuple[str, str]]:
        """Every (workflow, release) loaded here: the sagas whose timers this process fires."""
        return list(self.releases)

    def start_types(self) -> set[str]:
        """Every event type that starts a saga of some loaded release: with partitions, these
        go to the queue any replica takes from, and the rest by saga (docs/scaling.md)."""
        return {compiled.workflow.starts_on.TYPE for compiled in self.releases.values()}

    def command_types(self) -> set[str]:
        """Every command type some workflow may send, to declare its participant's queue."""
        types: set[str] = set()
        for compiled in self.releases.values():
            spec_sends = [b for s in compiled.workflow.states.values() for b in s.on_enter]
            rule_sends = [b for r in compiled.workflow.rules for b in r.send]
            group_sends = [b for _, b in compiled.workflow.group_sends()]
            for build in spec_sends + rule_sends + group_sends:
                message_type = getattr(build, "message_type", None)
                if getattr(build, "child", None) or message_type == CancelChild.TYPE:
                    continue  # to a child saga, through the orchestrator's own queue
                if message_type:
                    types.add(message_type)
        return types

    def route(
        self,
        type_name: str,
        payload: Any,
        *,
        saga_workflow: str | None = None,
        workflow_header: str | None = None,
        schema: int = 1,
    ) -> list[Target]:
        """The sagas a message is for. ``saga_workflow`` is set when the message's correlation id
        named an existing saga; ``workflow_header`` when the sender named a workflow; ``schema``
        is the schema version the payload was written in (x-schema-version): it is upcast to
        each workflow's event class before it is validated and its key read."""
        if not isinstance(payload, dict):
            raise Refused(Reason.NOT_AN_OBJECT, "body is not a JSON object")
        if workflow_header is not None and workflow_header not in self.workflows:
            raise Refused(Reason.UNKNOWN_WORKFLOW, f"unknown workflow {workflow_header!r}")
        candidates = self.by_type.get(type_name)
        if not candidates:
            raise Refused(Reason.UNKNOWN_TYPE, f"no workflow takes messages of type {type_name!r}")
        if saga_workflow is not None:
            candidates = [c for c in candidates if c.workflow.name == saga_workflow]
            if not candidates:
                raise Refused(Reason.UNKNOWN_WORKFLOW, f"workflow {saga_workflow!r} takes no {type_name!r}")
        if workflow_header is not None:
            candidates = [c for c in candidates if c.workflow.name == workflow_header]
            if not candidates:
                raise Refused(Reason.UNKNOWN_WORKFLOW, f"workflow {workflow_header!r} takes no {type_name!r}")
        targets = []
        for compiled in candidates:
            workflow = compiled.workflow
            cls = workflow.events.get(type_name) or CancelChild  # only CancelChild is in no workflow's
            current = upcast(cls, payload, schema)  # Refused: schema_version, upcast_failed
            try:
                load(cls, current)
            except InvalidPayload as error:
                raise Refused(Reason.SCHEMA, str(error)) from None
            starts = type_name == workflow.starts_on.TYPE
            key = current.get(workflow.key)
            saga_id = saga_id_for(workflow.name, str(key)) if key not in (None, "") else None
            targets.append(Target(compiled, saga_id, starts, current))
        return targets
