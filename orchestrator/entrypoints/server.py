"""Serving the REST API inside the orchestrator's own event loop, with uvicorn.

One process, one loop: an operator's action hands its commands straight to the running relay,
with no second process to keep in step. The orchestrator owns SIGTERM and SIGINT, so uvicorn's
own signal capture is switched off and the orchestrator stops the server first on shutdown
(no new actions), then drains everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator

import uvicorn
from fastapi import FastAPI

from orchestrator.supervision import Spawn, bounded, unsupervised

__all__ = ["ApiServer", "listen"]

log = logging.getLogger("orchestrator.entrypoints.api.app")


class CannotListen(OSError):
    """The API's address cannot be bound; the message says which and why."""


def listen(host: str, port: int) -> socket.socket:
    """Bind the API's socket before anything else starts, so a taken port is a one-line error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
    except OSError as error:
        raise CannotListen(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the orchestrator handles signals and stops us


class ApiServer:
    def __init__(self, app: FastAPI, sock: socket.socket, shutdown_seconds: float) -> None:
        self.sock = sock
        self.shutdown_seconds = shutdown_seconds
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,  # the orchestrator's logging, JSON or text, applies to uvicorn too
            access_log=False,
            timeout_graceful_shutdown=max(1, int(shutdown_seconds)),
        )
        self.server = _Server(config)
        self.task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def start(self, spawn: Spawn = unsupervised) -> asyncio.Task[None]:
        self.task = spawn("api", self._serve)
        return self.task

    async def _serve(self) -> None:
        try:
            await self.server.serve(sockets=[self.sock])
        except SystemExit as error:  # uvicorn exits on a failed startup; in a task, say so instead
            raise RuntimeError(f"the REST API stopped: exit {error.code}") from None

    def stop_taking(self) -> None:
        """Accept no more connections (uvicorn notices within a tenth of a second)."""
        self.server.should_exit = True

    async def stop(self, timeout: float | None = None) -> None:
        """Stop taking requests and let the ones in hand finish, within ``timeout`` (default: the
        shutdown time)."""
        if self.task is None:
            self.sock.close()
            return
        self.stop_taking()
        wait = self.shutdown_seconds + 1 if timeout is None else timeout
        if not await bounded("the REST requests in hand", asyncio.shield(self.task), wait):
            self.server.force_exit = True
            self.task.cancel()
            await asyncio.wait({self.task}, timeout=1.0)
        self.sock.close()
