"""Who calls the API, and what they may do: bearer tokens, named or not, and their roles.

A route declares the role it needs (:meth:`Guard.needs`); a missing or unknown token is a 401, a
known one with too small a role a 403 that says which role is needed. Once any token is set,
reads need one too (the read role), unless ``ORCHESTRATOR_API_OPEN_READS`` says otherwise: what a
saga's journal and a dead letter's body hold is the business's data. A client that keeps sending
wrong tokens is refused for a while (:class:`Throttle`), so that guessing one costs time.

Who is journaled as the actor is the named token's owner; ``X-Actor`` only names the caller of
the unnamed ``ORCHESTRATOR_API_TOKEN`` (or of a service run ``--insecure``), as it always did,
since a shared token cannot tell who holds it.
"""

from __future__ import annotations

import hmac
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Request
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from orchestrator.entrypoints.api import models as m
from orchestrator.entrypoints.api.context import DEFAULT_ACTOR, answers
from orchestrator.entrypoints.settings import Settings
from orchestrator.entrypoints.tokens import ApiToken, Role, digest

__all__ = ["Caller", "Guard", "Role", "Throttle", "me_router"]

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


class Throttle:
    """Failed authentications per client address: after ``limit`` of them within ``window``
    seconds, the client's next requests are refused (429) until the oldest failure is that old.

    A refusal does not look at the token, or a guesser would learn from it when one is right.
    Clients behind one proxy share an address, and so a budget: the limit is set for people
    mistyping, not for a shared gateway hammering. At most ``clients`` addresses are kept (the
    least recently failing forgotten first), so that spoofed sources cannot fill the memory.
    """

    def __init__(
        self,
        limit: int = 10,
        window: float = 60.0,
        clients: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit, self.window, self.clients, self.monotonic = limit, window, clients, monotonic
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def wait(self, client: str) -> float:
        """Seconds before the client may try again; 0 when it may now."""
        failures = self._failures.get(client)
        if failures is None:
            return 0.0
        now = self.monotonic()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return 0.0
        return failures[0] + self.window - now if len(failures) >= self.limit else 0.0

    def failed(self, client: str) -> None:
        failures = self._failures.pop(client, None) or deque(maxlen=self.limit)
        failures.append(self.monotonic())
        self._failures[client] = failures
        while len(self._failures) > self.clients:
            self._failures.popitem(last=False)


def too_many(wait: float) -> HTTPException:
    seconds = max(1, math.ceil(wait))
    return HTTPException(
        429,
        f"too many failed authentications from this address: try again in {seconds} s",
        headers={"Retry-After": str(seconds)},
    )


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@dataclass(frozen=True)
class Caller:
    name: str
    role: Role
    #: a named token's owner, whom X-Actor cannot override
    named: bool


class Guard:
    """The tokens the settings give, and the dependencies routes carry to check them."""

    def __init__(self, settings: Settings, throttle: Throttle | None = None) -> None:
        self.tokens: tuple[ApiToken, ...] = settings.api_tokens
        if settings.api_token:
            self.tokens += (ApiToken(UNNAMED, Role.ADMIN, digest(settings.api_token)),)
        self.unnamed = digest(settings.api_token) if settings.api_token else None
        #: no token at all (``run --insecure``): every route is open, and the caller an admin
        self.open = not self.tokens
        self.protect_reads = not settings.api_open_reads
        self.throttle = throttle or Throttle()

    def authenticate(self, request: Request, credentials: HTTPAuthorizationCredentials | None) -> Caller:
        """The caller, or the 401 (or 429, for a client that failed too often) to answer."""
        client = client_of(request)
        wait = self.throttle.wait(client)
        if wait:
            raise too_many(wait)
        caller = self.identify(credentials)
        if caller is None:
            if credentials is not None:  # a token that is wrong, not one forgotten
                self.throttle.failed(client)
            raise unauthorized()
        return caller

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
            caller = self.authenticate(request, credentials)
            if caller.role < role:
                raise HTTPException(
                    403, f"{caller.name} has the role {caller.role.label}; this needs {role.label}"
                )
            request.state.caller = caller

        return [Depends(require)]

    @property
    def reads(self) -> list[DependsParam]:
        return self.needs(Role.READ) if self.protect_reads else []

    @property
    def read_errors(self) -> tuple[int, ...]:
        return self.errors(Role.READ if self.protect_reads else None)

    def errors(self, role: Role | None) -> tuple[int, ...]:
        """The auth answers a route with that need documents."""
        if self.open or role is None:
            return ()
        return (401, 429) if role is Role.READ else (401, 403, 429)

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
        "/me",
        operation_id="whoami",
        response_model=m.Caller,
        responses=answers(401, 429),
        description=summary,
    )
    async def me(request: Request, credentials: Credentials) -> m.Caller:
        caller = guard.authenticate(request, credentials)
        return m.Caller(name=caller.name, role=caller.role.label)

    return router
