"""Who calls the API, and what they may do: bearer tokens, named or not, and their roles.

A route declares the role it needs (:meth:`Guard.needs`); a missing or unknown token is a 401, a
known one with too small a role a 403 that says which role is needed. Who is journaled as the
actor is the named token's owner; ``X-Actor`` only names the caller of the unnamed
``ORCHESTRATOR_API_TOKEN`` (or of a service run ``--insecure``), as it always did, since a shared
token cannot tell who holds it.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Request
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from orchestrator.entrypoints.api import models as m
from orchestrator.entrypoints.api.context import DEFAULT_ACTOR, answers
from orchestrator.entrypoints.settings import Settings
from orchestrator.entrypoints.tokens import ApiToken, Role, digest

__all__ = ["Caller", "Guard", "Role", "me_router"]

#: who the unnamed ORCHESTRATOR_API_TOKEN is, for GET /me
UNNAMED = DEFAULT_ACTOR
#: who calls a service run --insecure
ANONYMOUS = "anonymous"

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="a named token (ORCHESTRATOR_API_TOKENS or _FILE), or ORCHESTRATOR_API_TOKEN",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
XActor = Annotated[
    str | None,
    Header(
        alias="X-Actor",
        min_length=1,
        max_length=200,
        pattern=r"^[!-~]([ -~]*[!-~])?$",
        description=(
            f"who asks, for the unnamed ORCHESTRATOR_API_TOKEN (default {DEFAULT_ACTOR!r}): a named token's"
            " owner is journaled instead, whatever this says; printable ASCII"
        ),
    ),
]


def unauthorized() -> HTTPException:
    return HTTPException(
        401, "a valid bearer token is needed", headers={"WWW-Authenticate": 'Bearer realm="orchestrator"'}
    )


@dataclass(frozen=True)
class Caller:
    name: str
    role: Role
    #: a named token's owner, whom X-Actor cannot override
    named: bool


class Guard:
    """The tokens the settings give, and the dependencies routes carry to check them."""

    def __init__(self, settings: Settings) -> None:
        self.tokens: tuple[ApiToken, ...] = settings.api_tokens
        if settings.api_token:
            self.tokens += (ApiToken(UNNAMED, Role.ADMIN, digest(settings.api_token)),)
        self.unnamed = digest(settings.api_token) if settings.api_token else None
        #: no token at all (``run --insecure``): every route is open, and the caller an admin
        self.open = not self.tokens
        self.protect_reads = settings.api_protect_reads

    def identify(self, credentials: HTTPAuthorizationCredentials | None) -> Caller | None:
        if self.open:
            return Caller(ANONYMOUS, Role.ADMIN, named=False)
        if credentials is None:
            return None
        given = digest(credentials.credentials)
        found = None
        for token in self.tokens:  # every one compared, in constant time: no early exit to time
            if hmac.compare_digest(given, token.sha256):
                found = token
        if found is None:
            return None
        return Caller(found.name, found.role, named=found.sha256 != self.unnamed)

    def needs(self, role: Role) -> list[DependsParam]:
        """The dependency of a route that needs ``role`` (none when the service runs open)."""
        if self.open:
            return []

        async def require(request: Request, credentials: Credentials) -> None:
            caller = self.identify(credentials)
            if caller is None:
                raise unauthorized()
            if caller.role < role:
                raise HTTPException(
                    403, f"{caller.name} has the role {caller.role.label}; this needs {role.label}"
                )
            request.state.caller = caller

        return [Depends(require)]

    @property
    def reads(self) -> list[DependsParam]:
        return self.needs(Role.READ) if self.protect_reads else []

    def errors(self, role: Role | None) -> tuple[int, ...]:
        """The auth answers a route with that need documents."""
        if self.open or role is None:
            return ()
        return (401,) if role is Role.READ else (401, 403)

    def actor(self) -> DependsParam:
        """The dependency that says whom to journal: the named token's owner, else ``X-Actor``."""

        async def who(credentials: Credentials, x_actor: XActor = None) -> str:
            caller = self.identify(credentials)
            if caller is not None and caller.named:
                return caller.name
            return x_actor or DEFAULT_ACTOR

        async def anyone(x_actor: XActor = None) -> str:  # open: no token scheme to document
            return x_actor or DEFAULT_ACTOR

        if self.open:
            return Depends(anyone)  # type: ignore[no-any-return]
        dependency: DependsParam = Depends(who)
        return dependency


def me_router(guard: Guard) -> APIRouter:
    router = APIRouter(tags=["auth"])
    summary = (
        "Who the bearer token is and its role (read, operate, admin), so that a client (the console)"
        " can offer what the token may do. It needs a token even where reads are open, unless the"
        " service runs without any."
    )

    if guard.open:

        @router.get("/me", operation_id="whoami", response_model=m.Caller, description=summary)
        async def anyone() -> m.Caller:
            return m.Caller(name=ANONYMOUS, role="admin")

        return router

    @router.get(
        "/me", operation_id="whoami", response_model=m.Caller, responses=answers(401), description=summary
    )
    async def me(credentials: Credentials) -> m.Caller:
        caller = guard.identify(credentials)
        if caller is None:
            raise unauthorized()
        return m.Caller(name=caller.name, role=caller.role.label)

    return router
