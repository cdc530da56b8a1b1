"""A cap on request bodies, so that one client cannot make the service read a gigabyte into the
memory the orchestrator shares with its sagas. Starlette and uvicorn set none."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimit"]


class BodyLimit:
    """Refuse a body over ``max_bytes`` with 413: at once when its ``Content-Length`` says so,
    else (a chunked body) as soon as the bytes read pass the cap, before the route parses them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _detail(self) -> str:
        return f"the request body is over {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await JSONResponse({"detail": self._detail()}, status_code=413)(scope, receive, send)
            return
        read = 0

        async def limited() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > self.max_bytes:
                    # raised inside the route's read of the body: FastAPI answers it as any 4xx
                    raise HTTPException(413, self._detail())
            return message

        await self.app(scope, limited, send)
