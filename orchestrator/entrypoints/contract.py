"""The wire contract of docs/protocol.md as an AsyncAPI 3.0.0 document, built from the loaded workflows.

Generated, not written by hand: the commands a participant must handle and the replies it may give
are whatever the loaded workflows send and wait for, and their bodies are whatever their message
classes validate (:func:`orchestrator.core.messages.body_schema`, as the REST API's OpenAPI says
what ``POST /sagas`` takes). A hand-kept document would drift from both. The names and queue
arguments come from :class:`~orchestrator.adapters.amqp.topology.Topology`, which declares them,
so the document says what the broker really holds.

Served at ``GET /asyncapi.json`` and printed by ``orchestrator contract``; it needs no database and
no broker, only the workflows and the settings. The output is sorted, so that it can be committed
and diffed: a change of contract shows as a change of the file.

The shape (docs/protocol.md, "Machine-readable contract"):

* a channel per command type on ``{ns}.commands`` and per event type on ``{ns}.events`` (address:
  the routing key, the type), and one per participant queue ``{ns}.S``;
* for each participant service ``S``: it ``receive``\\s each of its commands from its queue, with
  the replies that answer it as the operation's ``reply`` where the workflows say which (see
  :func:`_replies`), and it ``send``\\s each of its replies;
* for the orchestrator: it ``send``\\s every command and ``receive``\\s every event a workflow
  takes, start events included.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from orchestrator.adapters.amqp.topology import Topology
from orchestrator.core.children import CHILD_OUTCOMES, INTERNAL, CancelChild
from orchestrator.core.definitions import DefinitionError, Workflow, builder_for
from orchestrator.core.messages import Message, body_schema, schema_of, service_of
from orchestrator.core.routing import Registry
from orchestrator.entrypoints.settings import Settings
from orchestrator.settings import broker_nodes

__all__ = ["ASYNCAPI_VERSION", "asyncapi_document"]

ASYNCAPI_VERSION = "3.0.0"
#: the AMQP bindings' version (github.com/asyncapi/bindings, amqp): the one AsyncAPI 3.0.0 knows
AMQP_BINDING = "0.3.0"
PROTOCOL_DOC = "docs/protocol.md"
#: the name of the orchestrator's side in operation ids; no participant service may use it, since a
#: participant's queue would then be the orchestrator's (``{ns}.orchestrator``, its old queue)
ORCHESTRATOR = "orchestrator"


@dataclass
class _Kind:
    """One message type as the loaded workflows use it."""

    name: str
    command: bool
    #: the classes that read or write it (one, unless releases or workflows disagree)
    classes: list[type[Message]] = field(default_factory=list)
    #: workflows that send it (a command) or take it (an event)
    workflows: set[str] = field(default_factory=set)
    #: workflow -> its key field, for each workflow it starts (an event)
    starts: dict[str, str] = field(default_factory=dict)
    #: a message between sagas (orchestrator.core.children): the orchestrator's own, through its
    #: queue; no participant sends or receives it
    internal: bool = False

    def add(self, cls: type[Message] | None, workflow: str) -> None:
        if cls is not None and all(cls is not known for known in self.classes):
            self.classes.append(cls)
        self.workflows.add(workflow)


def _package_version() -> str:
    try:
        return importlib.metadata.version("saga-orchestrator")
    except importlib.metadata.PackageNotFoundError:  # run from a tree that was never installed
        return "0.0.0"


def _server(amqp_url: str) -> tuple[dict[str, Any], str]:
    """The broker as a server object, and its virtual host. Only the scheme, host, port and path
    of the URL are read: a user name, a password or a query (certificate paths) never reach the
    document, which is served to anyone allowed to read the API."""
    parts = urlsplit(broker_nodes(amqp_url)[0])  # a cluster's first node names it
    host = parts.hostname or "localhost"
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    path = parts.path or "/"
    vhost = unquote(path[1:]) if len(path) > 1 else "/"
    server = {
        "host": host,
        "pathname": path,
        "protocol": parts.scheme or "amqp",
        "protocolVersion": "0-9-1",
        "description": f"RabbitMQ, virtual host {vhost!r}. Credentials are not part of the contract.",
    }
    return server, vhost


def _builder_message(builder: Any) -> tuple[str | None, type[Message] | None]:
    message_type = getattr(builder, "message_type", None)
    cls = getattr(builder, "message_class", None)
    if not (isinstance(cls, type) and issubclass(cls, Message)):
        cls = None
    return (message_type if isinstance(message_type, str) and message_type else None), cls


def _sends(workflow: Workflow) -> list[tuple[str | None, Any]]:
    """Every command builder of a workflow, with the state the saga waits in once it is sent."""
    found: list[tuple[str | None, Any]] = [
        (state.name, builder) for state in workflow.states.values() for builder in state.on_enter
    ]
    found += [(rule.dest, builder) for rule in workflow.rules for builder in rule.send]
    found += [(None, builder) for _, undo in workflow.late_success.values() for builder in undo]
    found += [(state, builder) for state, builder in workflow.group_sends()]
    # a child saga's start and cancel go to the orchestrator itself, not to a participant
    return [(state, b) for state, b in found if not _internal(b)]


def _internal(builder: Any) -> bool:
    return bool(getattr(builder, "child", None)) or getattr(builder, "message_type", None) == CancelChild.TYPE


def _replies(workflow: Workflow) -> dict[str, set[str]]:
    """Command type -> the reply types that answer it in ``workflow``.

    A command is sent on entering a state (or by a move into it); its replies are the events of
    its own service (the part of the type before the dot) that the workflow takes in that state,
    moving on or parking. That is exact for step sagas (a step's done and failed events, a
    compensation's done and failed) and for ``Undo``; for a free state machine it is what the
    rules say, and a command sent into a final state has none: nobody waits for its reply
    (docs/protocol.md, section 8)."""
    taken: dict[str, set[str]] = {}
    for rule in workflow.rules:
        if rule.event in workflow.events and rule.event != workflow.starts_on.TYPE:
            taken.setdefault(rule.source, set()).add(rule.event)
    replies: dict[str, set[str]] = {}
    for state, builder in _sends(workflow):
        message_type, _ = _builder_message(builder)
        if message_type is None:
            continue
        service = service_of(message_type)
        answers = {e for e in taken.get(state or "", set()) if service_of(e) == service}
        replies.setdefault(message_type, set()).update(answers)
    for group in workflow.groups.values():  # a branch's replies are its own, told by reply id
        for branch in group.branches:
            pairs = [(branch.send, (branch.done, branch.failed))]
            if branch.undo is not None:
                pairs.append((builder_for(branch.undo.send), (branch.undo.done, branch.undo.failed)))
            for builder, events in pairs:
                message_type, _ = _builder_message(builder)
                if message_type is not None:
                    replies.setdefault(message_type, set()).update(e.TYPE for e in events if e is not None)
    return replies


def _schemas(kind: _Kind, schemas: dict[str, Any]) -> dict[str, Any]:
    """The payload of a message type; nested types go into ``schemas`` (components/schemas) under
    the type's name, so two classes that both call a nested type ``Line`` never collide. Where
    two loaded classes differ (two workflows take one event type, or releases of a workflow send
    a command in two shapes), an event must fit each class the orchestrator validates it with
    (``allOf``) and a command is one of the shapes it may send (``anyOf``)."""
    if not kind.classes:
        return {"type": "object", "description": "its message class is not declared: any JSON object"}
    payloads = []
    for index, cls in enumerate(kind.classes):
        prefix = kind.name if len(kind.classes) == 1 else f"{kind.name}.{index + 1}"
        payload = body_schema(
            cls, ref_template=f"#/components/schemas/{prefix}.{{model}}", sends=kind.command
        )
        for name, definition in payload.pop("$defs", {}).items():
            schemas[f"{prefix}.{name}"] = definition
        payloads.append(payload)
    if len(payloads) == 1:
        return payloads[0]
    return {"anyOf": payloads} if kind.command else {"allOf": payloads}


#: the W3C trace context (docs/tracing.md): optional on every message, passed on from a command
#: to its reply
_TRACE_HEADERS = {
    "traceparent": {
        "type": "string",
        "description": "W3C trace context; a reply copies it from its command (or sets its own span's,"
        " a child of it); ignored when malformed",
    },
    "tracestate": {"type": "string", "description": "W3C trace state; passed on with traceparent"},
}


def _headers(kind: _Kind) -> dict[str, Any]:
    workflow = {"type": "string", "enum": sorted(kind.workflows)}
    if kind.command:
        return {
            "type": "object",
            "required": ["x-saga-id", "x-workflow"],
            "properties": {
                "x-saga-id": {"type": "string", "description": "the saga id, the same as correlation_id"},
                "x-workflow": {**workflow, "description": "the workflow of the saga that sends it"},
                **_TRACE_HEADERS,
            },
        }
    versions = sorted({schema_of(cls) for cls in kind.classes}) or [1]
    return {
        "type": "object",
        "properties": {
            "x-saga-id": {
                "type": "string",
                "description": "a reply copies it from its command; a start event has none",
            },
            "x-workflow": {
                **workflow,
                "description": "a reply copies it from its command; on a start event it restricts the"
                " event to that workflow",
            },
            "x-schema-version": {
                "type": "integer",
                "minimum": 1,
                "maximum": min(versions),
                "description": "the schema version of the body, an AMQP integer; absent means 1. Older"
                " versions are upcast (docs/protocol.md, section 5)",
            },
            **_TRACE_HEADERS,
        },
    }


def _message(kind: _Kind, payload: dict[str, Any]) -> dict[str, Any]:
    service = service_of(kind.name)
    if kind.internal:
        summary = "Between sagas: published by the orchestrator into its own queue, for itself."
    elif kind.command:
        summary = f"A command to the {service} service."
    elif kind.starts:
        keys = ", ".join(f"{key} for {w}" for w, key in sorted(kind.starts.items()))
        summary = f"A start event: the saga is found or made by its key field ({keys})."
    else:
        summary = f"A reply of the {service} service."
    correlation = (
        "the AMQP property correlation_id: the saga id"
        if not kind.starts
        else "the AMQP property correlation_id: not read on a start event"
    )
    return {
        "name": kind.name,
        "title": kind.classes[0].__name__ if kind.classes else kind.name,
        "summary": summary,
        "description": (
            f"AMQP properties: type `{kind.name}` (required), message_id (required, unique; the same"
            " message sent again keeps it), correlation_id, content_type `application/json`,"
            f" delivery_mode 2. Body: one JSON object. See {PROTOCOL_DOC}, sections 4 to 6 and 8."
        ),
        "contentType": "application/json",
        "headers": _headers(kind),
        "payload": payload,
        "correlationId": {"location": "$message.header#/correlation_id", "description": correlation},
        "bindings": {"amqp": {"messageType": kind.name, "bindingVersion": AMQP_BINDING}},
    }


def _ref(*path: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in path)}


@dataclass
class _Loaded:
    """The message types of the loaded workflows, and which replies answer which command."""

    kinds: dict[str, _Kind] = field(default_factory=dict)
    #: command type -> the reply types that answer it
    replies: dict[str, set[str]] = field(default_factory=dict)
    #: command builders that declare no message type: they cannot be documented
    unnamed: set[str] = field(default_factory=set)
    #: the start event types a parent sends its child saga, through the orchestrator's queue
    child_starts: set[str] = field(default_factory=set)

    @property
    def commands(self) -> list[str]:
        return sorted(t for t, k in self.kinds.items() if k.command and not k.internal)

    @property
    def events(self) -> list[str]:
        return sorted(t for t, k in self.kinds.items() if not k.command and not k.internal)

    @property
    def internal(self) -> list[str]:
        return sorted(t for t, k in self.kinds.items() if k.internal)

    @property
    def services(self) -> list[str]:
        return sorted({service_of(t) for t in self.commands})

    def answers(self, command: str) -> list[str]:
        return sorted(self.replies.get(command, ()))


def _load(registry: Registry) -> _Loaded:
    loaded = _Loaded()
    for _, compiled in sorted(registry.releases.items()):  # every release: old sagas still send
        workflow = compiled.workflow
        children = set(workflow.children.values())
        loaded.child_starts.update(
            c.workflow.starts_on.TYPE for c in registry.releases.values() if c.workflow.name in children
        )
        for _, builder in _sends(workflow):
            message_type, cls = _builder_message(builder)
            if message_type is None:
                loaded.unnamed.add(str(getattr(builder, "__qualname__", builder)))
                continue
            kind = loaded.kinds.setdefault(message_type, _Kind(message_type, command=True))
            kind.add(cls, workflow.name)
        for command, answering in _replies(workflow).items():
            loaded.replies.setdefault(command, set()).update(answering)
    # An event is validated against the class of each workflow that takes it, as the registry
    # routes it (its current release's, or an older one's for a type only that release takes).
    for type_name, takers in sorted(registry.by_type.items()):
        if service_of(type_name) == INTERNAL:  # between sagas: the orchestrator's own
            continue
        if type_name in loaded.kinds:
            raise DefinitionError(f"{type_name} is both a command and an event: a type names one message")
        kind = loaded.kinds[type_name] = _Kind(type_name, command=False)
        for compiled in sorted(takers, key=lambda c: c.workflow.name):
            kind.add(compiled.workflow.events[type_name], compiled.workflow.name)
            if type_name == compiled.workflow.starts_on.TYPE:
                kind.starts[compiled.workflow.name] = compiled.workflow.key
    parents = [c.workflow.name for c in registry.releases.values() if c.workflow.children]
    if parents:  # what parents and children send each other, through the orchestrator's queue
        for cls in (*CHILD_OUTCOMES.values(), CancelChild):
            kind = loaded.kinds.setdefault(cls.TYPE, _Kind(cls.TYPE, command=False, internal=True))
            for name in parents:
                kind.add(cls, name)
    if ORCHESTRATOR in loaded.services:
        raise DefinitionError(f"a participant service cannot be called {ORCHESTRATOR!r}")
    return loaded


def _default_exchange_binding(vhost: str) -> dict[str, Any]:
    exchange = {"name": "", "type": "direct", "durable": True, "autoDelete": False, "vhost": vhost}
    return {"amqp": {"is": "routingKey", "exchange": exchange, "bindingVersion": AMQP_BINDING}}


def _exchange_binding(name: str, vhost: str) -> dict[str, Any]:
    exchange = {"name": name, "type": "topic", "durable": True, "autoDelete": False, "vhost": vhost}
    return {"amqp": {"is": "routingKey", "exchange": exchange, "bindingVersion": AMQP_BINDING}}


def _queue_binding(topology: Topology, service: str, vhost: str) -> dict[str, Any]:
    """The AMQP binding has no field for queue arguments, and a participant that declares its
    queue with other arguments is refused by RabbitMQ: they go in ``x-arguments``, exactly as
    :attr:`Topology.queue_arguments` declares them."""
    queue = {
        "name": topology.participant_queue(service),
        "durable": True,
        "exclusive": False,
        "autoDelete": False,
        "vhost": vhost,
        "x-arguments": dict(sorted(topology.queue_arguments.items())),
        "x-binding-key": f"{service}.#",
    }
    return {"amqp": {"is": "queue", "queue": queue, "bindingVersion": AMQP_BINDING}}


def _channels(loaded: _Loaded, topology: Topology, vhost: str) -> dict[str, Any]:
    def messages(types: list[str]) -> dict[str, Any]:
        return {t: _ref("components", "messages", t) for t in types}

    channels: dict[str, Any] = {}
    for command in loaded.commands:
        channels[f"command.{command}"] = {
            "address": command,
            "title": f"{command} on {topology.commands}",
            "description": f"Published to the topic exchange {topology.commands} with routing key"
            f" {command}; it reaches the queue {topology.participant_queue(service_of(command))}.",
            "messages": messages([command]),
            "bindings": _exchange_binding(topology.commands, vhost),
        }
    for event in loaded.events:
        channels[f"event.{event}"] = {
            "address": event,
            "title": f"{event} on {topology.events}",
            "description": f"Published to the topic exchange {topology.events} with routing key {event}.",
            "messages": messages([event]),
            "bindings": _exchange_binding(topology.events, vhost),
        }
    for service in loaded.services:
        queue = topology.participant_queue(service)
        channels[f"queue.{service}"] = {
            "address": queue,
            "title": f"the queue {queue}",
            "description": f"The {service} service's queue, bound to {topology.commands} with {service}.#;"
            " declared by the orchestrator and by the participant with exactly the arguments in"
            f" x-arguments (ORCHESTRATOR_QUEUE_TYPE={topology.queue_type}), and dead-lettering to"
            f" {topology.dead} ({PROTOCOL_DOC}, section 2).",
            "messages": messages([c for c in loaded.commands if service_of(c) == service]),
            "bindings": _queue_binding(topology, service, vhost),
        }
    if loaded.internal:
        starts = sorted(loaded.child_starts & set(loaded.kinds))
        channels["internal"] = {
            "address": topology.orchestrator_queue,
            "title": f"the orchestrator's own queue {topology.orchestrator_queue}",
            "description": "Messages between sagas, published by the orchestrator through the default"
            " exchange straight into its queue: a child saga's start (its workflow's start event, with"
            " x-workflow and x-parent-saga), its outcome (with the section 6 reply id of the command it"
            " answers) and its parent's cancel. No participant sends or receives them; a saga.* message"
            f" published to {topology.events} is dead-lettered sender ({PROTOCOL_DOC}, section 6).",
            "messages": messages([*loaded.internal, *starts]),
            "bindings": _default_exchange_binding(vhost),
        }
    for command in loaded.commands:
        answers = loaded.answers(command)
        if answers:  # one channel for all of them: an operation's reply names one channel
            channels[f"replies.{command}"] = {
                "address": "{reply}",
                "title": f"the replies to {command}",
                "description": f"A reply to {command} is published to {topology.events} with its own"
                " type as the routing key.",
                "parameters": {
                    "reply": {"enum": answers, "description": "the reply's type, which is its routing key"}
                },
                "messages": messages(answers),
                "bindings": _exchange_binding(topology.events, vhost),
            }
    return channels


PUBLISH = {"amqp": {"deliveryMode": 2, "bindingVersion": AMQP_BINDING}}
CONSUME = {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING}}


def _participant_operations(loaded: _Loaded) -> dict[str, Any]:
    operations: dict[str, Any] = {}
    for service in loaded.services:
        sent: set[str] = set()
        for command in (c for c in loaded.commands if service_of(c) == service):
            answers = loaded.answers(command)
            sent.update(answers)
            operation: dict[str, Any] = {
                "action": "receive",
                "channel": _ref("channels", f"queue.{service}"),
                "title": f"{service} handles {command}",
                "summary": "Reject it without requeue if it does not parse; answer it with one reply,"
                f" published with publisher confirms, then ack ({PROTOCOL_DOC}, section 6).",
                "messages": [_ref("channels", f"queue.{service}", "messages", command)],
                "bindings": CONSUME,
                "x-service": service,
            }
            if answers:
                operation["reply"] = {
                    "channel": _ref("channels", f"replies.{command}"),
                    "messages": [_ref("channels", f"replies.{command}", "messages", t) for t in answers],
                }
            else:
                operation["description"] = (
                    "Nobody waits for its reply: what the service answers to it (with its section 6"
                    f" reply id) is taken and journaled as ignored ({PROTOCOL_DOC}, section 8)."
                )
            operations[f"{service}.receive.{command}"] = operation
        # and the events of its own that a workflow takes unasked, if any
        sent.update(t for t in loaded.events if service_of(t) == service and not loaded.kinds[t].starts)
        for reply in sorted(sent):
            operations[f"{service}.send.{reply}"] = {
                "action": "send",
                "channel": _ref("channels", f"event.{reply}"),
                "title": f"{service} sends {reply}",
                "summary": "message_id: uuid5(NAMESPACE_OID, '<command message_id>:<reply type>'), or"
                " the reply is dead-lettered not_awaited; routing key: its type, or it is dead-lettered"
                " routing_key; correlation_id, x-saga-id, x-workflow, traceparent and tracestate"
                " copied from the command; user_id: the service's broker user where the orchestrator"
                " checks senders (ORCHESTRATOR_SENDERS).",
                "messages": [_ref("channels", f"event.{reply}", "messages", reply)],
                "bindings": PUBLISH,
                "x-service": service,
            }
    return operations


def _orchestrator_operations(loaded: _Loaded, topology: Topology) -> dict[str, Any]:
    operations: dict[str, Any] = {}
    for command in loaded.commands:
        operations[f"{ORCHESTRATOR}.send.{command}"] = {
            "action": "send",
            "channel": _ref("channels", f"command.{command}"),
            "title": f"the orchestrator sends {command}",
            "summary": "correlation_id and x-saga-id: the saga id; re-sent with the same message_id.",
            "messages": [_ref("channels", f"command.{command}", "messages", command)],
            "bindings": PUBLISH,
            "x-service": ORCHESTRATOR,
        }
    if topology.partitions > 1:
        queues = (
            f"{topology.orchestrator_queue} (start events) and, by correlation_id, from"
            f" {topology.partition_queue(0)} to {topology.partition_queue(topology.partitions - 1)}"
        )
    else:
        queues = f"{topology.orchestrator_queue} (bound to {topology.events} with #)"
    if loaded.internal:
        between = [_ref("channels", "internal", "messages", t) for t in sorted(_internal_of(loaded))]
        for action in ("send", "receive"):
            operations[f"{ORCHESTRATOR}.{action}.internal"] = {
                "action": action,
                "channel": _ref("channels", "internal"),
                "title": f"the orchestrator {action}s what sagas send each other",
                "summary": "A child saga's start and outcome, and its parent's cancel (docs/architecture.md,"
                " Child sagas).",
                "messages": between,
                "bindings": PUBLISH if action == "send" else CONSUME,
                "x-service": ORCHESTRATOR,
            }
    for event in loaded.events:
        starts = sorted(loaded.kinds[event].starts)
        operations[f"{ORCHESTRATOR}.receive.{event}"] = {
            "action": "receive",
            "channel": _ref("channels", f"event.{event}"),
            "title": f"the orchestrator takes {event}",
            "summary": (
                f"Starts a saga of {', '.join(starts)}; published by whoever starts the business process."
                if starts
                else "A reply: it goes to the saga its correlation_id names."
            ),
            "description": f"Consumed from {queues}; what it cannot take is dead-lettered"
            f" ({PROTOCOL_DOC}, section 9).",
            "messages": [_ref("channels", f"event.{event}", "messages", event)],
            "bindings": CONSUME,
            "x-service": ORCHESTRATOR,
        }
    return operations


def _internal_of(loaded: _Loaded) -> set[str]:
    return {*loaded.internal, *(loaded.child_starts & set(loaded.kinds))}


def asyncapi_document(registry: Registry, settings: Settings) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of every loaded workflow (all releases), for ``settings``'
    namespace, queue type, partitions and broker."""
    topology = Topology(settings.namespace, partitions=settings.partitions, queue_type=settings.queue_type)
    server, vhost = _server(settings.amqp_url)
    loaded = _load(registry)
    schemas: dict[str, Any] = {}
    messages = {t: _message(kind, _schemas(kind, schemas)) for t, kind in sorted(loaded.kinds.items())}
    operations = {**_participant_operations(loaded), **_orchestrator_operations(loaded, topology)}
    info: dict[str, Any] = {
        "title": "Saga orchestrator: the wire protocol",
        "version": _package_version(),
        "description": (
            f"Generated from the workflows loaded ({', '.join(sorted(registry.workflows))}) for the"
            f" namespace {settings.namespace!r} and ORCHESTRATOR_QUEUE_TYPE={settings.queue_type}."
            f" The prose contract is {PROTOCOL_DOC}: message properties, idempotency, dead letters."
        ),
        "license": {"name": "Apache-2.0"},
    }
    if loaded.unnamed:
        info["x-commands-without-type"] = sorted(loaded.unnamed)
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": f"urn:saga-orchestrator:{settings.namespace}",
        "info": info,
        "defaultContentType": "application/json",
        "servers": {"rabbitmq": server},
        "channels": _channels(loaded, topology, vhost),
        "operations": dict(sorted(operations.items())),
        "components": {"messages": messages, "schemas": dict(sorted(schemas.items()))},
    }
