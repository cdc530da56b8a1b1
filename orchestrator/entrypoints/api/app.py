"""The REST API: sagas and workflows to read, sagas to start and act on, health and metrics.

It runs inside ``orchestrator run``, in the service's own event loop (see
:mod:`orchestrator.entrypoints.runtime`), so an action's commands go straight to the running
relay. Once a token is set, every route needs one (reads the read role) but the health checks;
``/docs`` is served only when asked for, since its scripts come from a CDN.
Bad input is a 4xx whose ``detail`` says what was wrong, never a 500: every string that reaches
the database is checked first.
"""

import asyncio
import copy
import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Annotated, Any

import asyncpg
from fastapi import FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.params import Depends as DependsParam
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from orchestrator.adapters.metrics import CONTENT_TYPE
from orchestrator.adapters.postgres.faults import from_database
from orchestrator.adapters.postgres.queries import BadCursor
from orchestrator.core.diagrams import WorkflowView
from orchestrator.core.messages import body_schema
from orchestrator.core.routing import Registry
from orchestrator.entrypoints.api import models as m
from orchestrator.entrypoints.api.auth import Guard, me_router
from orchestrator.entrypoints.api.body_limit import BodyLimit
from orchestrator.entrypoints.api.console import mount_console
from orchestrator.entrypoints.api.context import RETRY_AFTER, UNAVAILABLE_DETAIL, ApiContext, answers
from orchestrator.entrypoints.api.dead_letters import dead_letters_router
from orchestrator.entrypoints.api.migrations import migrations_router
from orchestrator.entrypoints.api.sagas import sagas_router
from orchestrator.entrypoints.api.same_origin import SameOrigin, local_names
from orchestrator.service.faults import Fault
from orchestrator.service.operations import ActionRefused, BadRequest, SagaNotFound

__all__ = ["ApiContext", "create_app"]

log = logging.getLogger("orchestrator.entrypoints.api.app")


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="Saga orchestrator",
        version="0.1.0",
        description=(
            "Inspect and operate sagas. Every route but /healthz and /readyz needs"
            " `Authorization: Bearer <token>` (reads the read role; ORCHESTRATOR_API_OPEN_READS opens"
            " them). A named token (ORCHESTRATOR_API_TOKENS,"
            " ORCHESTRATOR_API_TOKENS_FILE) has a role: read, operate (starts, actions, replays) or admin"
            " (purges, migrations), and its owner is the actor the journal keeps with each action. The"
            " unnamed ORCHESTRATOR_API_TOKEN is an admin token whose caller names itself in `X-Actor`."
        ),
        responses=answers(503),  # any route that reads or writes may find the database away
        # served below, under the same rule as every read; the UI only when asked for
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    _install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=ctx.settings.api_max_body_bytes)
    guard = Guard(ctx.settings)
    if guard.open:  # no token a browser would have to add: a cross-site form post could act
        app.add_middleware(SameOrigin)
        # and a page whose name was rebound to 127.0.0.1 (DNS rebinding) is of the same origin as
        # itself: only the names this address is known by are served
        hosts = local_names(ctx.settings.api_host)
        if hosts is not None:
            app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)
    app.include_router(me_router(guard))
    app.include_router(sagas_router(ctx, guard))
    app.include_router(dead_letters_router(ctx, guard))
    _health_routes(app, ctx, guard)
    _workflow_routes(app, ctx, guard)
    _contract_route(app, ctx, guard)
    _schema_routes(app, ctx, guard)
    app.include_router(migrations_router(ctx, guard))
    _document_starts(app, ctx.registry)
    mount_console(app)
    return app


def _document_starts(app: FastAPI, registry: Registry) -> None:
    """Say in the schema which data each workflow's start takes: its starting event's fields.

    The request model can only say "an object"; the schema says, per workflow, exactly what
    ``POST /sagas`` accepts, so that clients (and the fuzzer) can build a start that fits.
    """
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = plain()
        components = schema["components"]["schemas"]
        base = components["StartRequest"]
        variants = []
        for name in sorted(registry.workflows):
            workflow = registry.workflows[name].workflow
            data = body_schema(workflow.starts_on, ref_template=f"#/components/schemas/{name}_{{model}}")
            for nested, definition in data.pop("$defs", {}).items():
                components[f"{name}_{nested}"] = definition
            data["properties"].pop(workflow.key, None)  # it is the request's key
            data["required"] = [f for f in data.get("required", []) if f != workflow.key]
            data["title"] = f"{workflow.starts_on.TYPE} without {workflow.key}"
            variant = copy.deepcopy(base)
            variant["title"] = f"Start {name}"
            variant["properties"]["workflow"] = {"type": "string", "const": name, "title": "Workflow"}
            variant["properties"]["data"] = {**data, "description": base["properties"]["data"]["description"]}
            variant["required"] = ["workflow", "key", "data"] if data["required"] else ["workflow", "key"]
            if workflow.starts_on.SCHEMA != 1:  # the fields above are that version's: say so
                variant["properties"]["schema_version"] = {
                    **base["properties"]["schema_version"],
                    "description": f"data as described here is schema version {workflow.starts_on.SCHEMA}:"
                    f" send {workflow.starts_on.SCHEMA}; an older version's data is upcast (default 1)",
                }
            components[f"Start_{name}"] = variant
            variants.append({"$ref": f"#/components/schemas/Start_{name}"})
        components["StartRequest"] = {"oneOf": variants, "title": "StartRequest"}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# Errors -------------------------------------------------------------------------------------------
def _problem(
    status: int, detail: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=dict(headers or {}))


def _explain(errors: Sequence[Any]) -> tuple[str, list[dict[str, Any]]]:
    """One sentence for ``detail``, and each error without the echoed input (it may be huge)."""
    described = [
        {
            "loc": [str(p) for p in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in errors
    ]
    for error, entry in zip(errors, described, strict=True):
        if entry["type"] == "json_invalid":  # say where the JSON broke, not only that it did
            entry["loc"], entry["msg"] = (
                ["body"],
                f"not valid JSON: {(error.get('ctx') or {}).get('error', '')}",
            )
    sentence = "; ".join(f"{'.'.join(e['loc']) or 'request'}: {e['msg']}" for e in described)
    return sentence or "the request does not fit the API", described


def _install_error_handlers(app: FastAPI) -> None:
    statuses: dict[type[Exception], int] = {
        SagaNotFound: 404,
        BadRequest: 422,
        BadCursor: 422,
        ActionRefused: 409,
    }

    async def known(request: Request, error: Exception) -> JSONResponse:
        return _problem(statuses[type(error)], str(error) or type(error).__name__)

    for kind in statuses:
        app.add_exception_handler(kind, known)

    async def invalid(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        detail, errors = _explain(error.errors())
        return _problem(422, detail, errors=errors)

    app.add_exception_handler(RequestValidationError, invalid)

    async def http_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        detail = str(error.detail)
        if error.status_code == 400 and detail == "There was an error parsing the body":
            detail = "the body is not valid JSON in UTF-8"
        return _problem(error.status_code, detail, error.headers)

    app.add_exception_handler(StarletteHTTPException, http_error)

    async def unavailable(request: Request, error: Exception) -> JSONResponse:
        fault = from_database(error)
        if fault is Fault.UNAVAILABLE or fault is None:
            log.warning("database unavailable for %s %s: %r", request.method, request.url.path, error)
        else:  # the database refused a statement: worth a look, but the client can only try again
            log.error(
                "database failed %s %s (%s)", request.method, request.url.path, fault.value, exc_info=error
            )
        return _problem(503, UNAVAILABLE_DETAIL, {"Retry-After": RETRY_AFTER})

    # Reads go through SQLAlchemy (which wraps the driver's errors in DBAPIError: OperationalError,
    # InterfaceError, InternalError...), starts and actions through the asyncpg pool; a session
    # killed mid-request can surface as either, or as the failed rollback after it. Every one of
    # them is the database failing, never the request: 503, with Retry-After.
    for kind in (
        DBAPIError,
        DisconnectionError,
        PoolTimeout,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
        OSError,
        TimeoutError,
    ):
        app.add_exception_handler(kind, unavailable)


# Health and metrics -------------------------------------------------------------------------------
def _health_routes(app: FastAPI, ctx: ApiContext, guard: Guard) -> None:
    @app.get("/healthz", operation_id="healthz", tags=["health"], response_model=m.Health)
    async def healthz() -> m.Health:
        """The process is up and serving."""
        return m.Health(status="ok")

    @app.get(
        "/readyz",
        operation_id="readyz",
        tags=["health"],
        response_model=m.Ready,
        responses={503: {"model": m.Ready, "description": "the database or the broker is unreachable"}},
    )
    async def readyz(response: Response) -> m.Ready:
        """The database and the broker are reachable: the service can take work."""
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(ctx.queries.ping(), 3)
            checks["database"] = "ok"
        except Exception as error:
            checks["database"] = f"unreachable: {type(error).__name__}"
        checks.update(await ctx.checks())
        ready = all(v == "ok" for v in checks.values())
        response.status_code = 200 if ready else 503
        return m.Ready(status="ready" if ready else "unready", checks=checks)

    @app.get(
        "/metrics",
        operation_id="metrics",
        tags=["health"],
        dependencies=guard.reads,
        response_class=Response,
        responses={
            200: {
                "content": {"text/plain": {"schema": {"type": "string"}}},
                "description": "Prometheus text format",
            },
            **answers(*guard.read_errors),
        },
    )
    async def metrics() -> Response:
        """Prometheus metrics: the database gauges are read now, the counters are this process's."""
        stuck_since = ctx.clock() - timedelta(seconds=ctx.settings.stuck_after_seconds)
        try:
            ctx.metrics.read_database(await asyncio.wait_for(ctx.queries.gauges(stuck_since), 5))
        except Exception as error:  # the counters are still worth serving
            log.warning("metrics: could not read the database: %s", error)
            ctx.metrics.read_database(None)
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)


# Workflows ----------------------------------------------------------------------------------------
def _workflow_routes(app: FastAPI, ctx: ApiContext, guard: Guard) -> None:
    names = sorted(ctx.registry.workflows)
    reads, auth = guard.reads, guard.read_errors

    @app.get(
        "/workflows",
        operation_id="list_workflows",
        tags=["workflows"],
        dependencies=reads,
        response_model=list[m.WorkflowSummary],
        responses=answers(*auth),
    )
    async def workflows() -> list[m.WorkflowSummary]:
        """The workflows this service runs, with their sagas per status now."""
        per_status: dict[str, dict[str, int]] = {}
        for c in await ctx.queries.state_counts():
            statuses = per_status.setdefault(c.workflow, {})
            statuses[c.status] = statuses.get(c.status, 0) + c.sagas
        return [_summary(ctx.views[name][0], per_status.get(name, {})) for name in names]

    @app.get(
        "/workflows/{name}",
        operation_id="get_workflow",
        tags=["workflows"],
        dependencies=reads,
        response_model=m.WorkflowDetail,
        responses=answers(*auth, 404, 422),
    )
    async def workflow(
        name: Annotated[str, Path(max_length=200, json_schema_extra={"enum": names})],
        window: Annotated[
            int, Query(ge=60, le=7 * 86400, description="seconds back for the activity's counts")
        ] = 3600,
    ) -> m.WorkflowDetail:
        """A workflow's definition, its state diagram (mermaid), its sagas per state now, and its
        activity: sagas started and finished over the last ``window`` seconds, and stuck now."""
        if name not in ctx.views:
            raise HTTPException(404, f"no workflow {name!r}; known: {', '.join(names)}")
        now = ctx.clock()
        activity = await ctx.queries.activity(
            name, now - timedelta(seconds=window), now - timedelta(seconds=ctx.settings.stuck_after_seconds)
        )
        view, diagram = ctx.views[name]
        per_state: dict[str, int] = {}
        per_status: dict[str, int] = {}
        for c in await ctx.queries.state_counts([name]):
            per_state[c.state] = per_state.get(c.state, 0) + c.sagas
            per_status[c.status] = per_status.get(c.status, 0) + c.sagas
        return m.WorkflowDetail(
            **_summary(view, per_status).model_dump(),
            releases=await _releases(ctx, name),
            initial=view.initial,
            unexpected=view.unexpected,
            events=view.events,
            cancel_on=view.cancel_on,
            groups=view.groups,
            children=view.children,
            states=[
                m.StateSpec.model_validate({**vars(s), "sagas": per_state.get(s.name, 0)})
                for s in view.states
            ],
            rules=[m.RuleSpec.model_validate(r) for r in view.rules],
            mermaid=diagram,
            activity=m.WorkflowActivity(window_seconds=window, **vars(activity)),
        )


def _contract_route(app: FastAPI, ctx: ApiContext, guard: Guard) -> None:
    """The wire contract as AsyncAPI 3 (:mod:`orchestrator.entrypoints.contract`), a read like the
    workflows it is made from. Built once, on the first request: the workflows and settings it
    depends on do not change while the service runs, and it needs neither the database nor the
    broker, so it answers while they are away."""
    from orchestrator.entrypoints.contract import asyncapi_document

    built: list[dict[str, Any]] = []

    @app.get(
        "/asyncapi.json",
        operation_id="asyncapi",
        tags=["workflows"],
        dependencies=guard.reads,
        response_class=JSONResponse,
        responses={
            200: {
                "content": {"application/json": {"schema": {"type": "object"}}},
                "description": "an AsyncAPI 3.0.0 document (docs/protocol.md, Machine-readable contract)",
            },
            **answers(*guard.read_errors),
        },
    )
    async def asyncapi() -> JSONResponse:
        """The wire protocol of the workflows this service runs, as an AsyncAPI 3.0.0 document:
        every command and reply a participant handles, their bodies' JSON Schemas, the channels."""
        if not built:
            built.append(asyncapi_document(ctx.registry, ctx.settings))
        return JSONResponse(built[0])


def _schema_routes(app: FastAPI, ctx: ApiContext, guard: Guard) -> None:
    """``/openapi.json`` is a read like any other (it names the workflows and what they take);
    ``ORCHESTRATOR_API_DOCS`` publishes it with Swagger UI at ``/docs``, for anyone who reaches the
    port, since that page loads its scripts from a CDN and cannot send a token to fetch it."""
    published = ctx.settings.api_docs
    reads: Sequence[DependsParam] = [] if published else guard.reads

    @app.get("/openapi.json", include_in_schema=False, dependencies=reads)
    async def schema() -> JSONResponse:
        return JSONResponse(app.openapi())

    if published:

        @app.get("/docs", include_in_schema=False)
        async def docs(request: Request) -> HTMLResponse:
            root = request.scope.get("root_path", "").rstrip("/")
            return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title=f"{app.title} - docs")


async def _releases(ctx: ApiContext, name: str) -> list[m.ReleaseSpec]:
    """Every release of a workflow that is loaded or that sagas in flight are on, with their
    counts per state: what tells an operator when an old release can be dropped."""
    counts = await ctx.queries.in_flight(name)
    kept = await ctx.queries.fingerprints(name)
    loaded = {r: c for (w, r), c in ctx.registry.releases.items() if w == name}
    current = ctx.registry.workflows[name].workflow.release
    found = sorted(set(loaded) | {release for release, _ in counts})
    specs = []
    for release in found:
        states = {state: n for (r, state), n in sorted(counts.items()) if r == release}
        fingerprint, first_run_at = kept.get(release, (None, None))
        if fingerprint is None and release in loaded:
            fingerprint = loaded[release].workflow.fingerprint()
        specs.append(
            m.ReleaseSpec(
                release=release,
                current=release == current,
                loaded=release in loaded,
                fingerprint=fingerprint,
                first_run_at=first_run_at,
                in_flight=sum(states.values()),
                states=states,
            )
        )
    return specs


def _summary(view: WorkflowView, per_status: Mapping[str, int]) -> m.WorkflowSummary:
    return m.WorkflowSummary(
        name=view.name,
        description=view.description,
        starts_on=view.starts_on,
        key=view.key,
        sagas=dict(per_status),
    )
