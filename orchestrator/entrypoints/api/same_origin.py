"""Writes from another site refused, for a service run ``--insecure``.

With a token, a browser cannot act for a user without the user's script adding the header, which
another site cannot do. Without one, any page the operator opens could post a form to the API on
``127.0.0.1`` (a form post needs no CORS preflight): a cancel or a replay nobody meant. Browsers
say where such a request comes from in ``Origin`` (and ``Sec-Fetch-Site``); a write whose origin is
not the API's own host is refused. A client that is not a browser sends neither and is let in.
A page whose name an attacker rebinds to 127.0.0.1 (DNS rebinding) is of the same origin as
itself, so the API also serves only the names its address is known by (:func:`local_names`).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["SameOrigin", "local_names"]

#: addresses that listen on every interface: a host check could name none of their names
WILDCARDS = frozenset({"", "0.0.0.0", "::", "*"})

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class SameOrigin:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            why = cross_site(dict(scope["headers"]))
            if why is not None:
                await JSONResponse({"detail": why}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def cross_site(headers: dict[bytes, bytes]) -> str | None:
    """Why a write with these headers comes from another site, or None if it does not."""
    host = headers.get(b"host", b"").decode("latin-1").lower()
    origin = headers.get(b"origin")
    if origin is not None:
        text = origin.decode("latin-1")
        if text == "null" or urlsplit(text).netloc.lower() != host:
            return f"a write from another site ({text[:100]}) is refused: the API runs without a token"
        return None
    if headers.get(b"sec-fetch-site", b"").lower() in (b"cross-site", b"same-site"):
        return "a write from another site is refused: the API runs without a token"
    return None


def local_names(api_host: str) -> list[str] | None:
    """The ``Host`` names an API run ``--insecure`` on ``api_host`` answers to: the loopback
    names and the address it listens on. None on every interface (``0.0.0.0``), where no list
    could name them all (and which runs without a token only at its owner's risk)."""
    if api_host.strip().lower() in WILDCARDS:
        return None
    return sorted({"localhost", "127.0.0.1", "::1", api_host.strip().lower()})
