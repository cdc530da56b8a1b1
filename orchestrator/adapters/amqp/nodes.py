"""A broker reached through a list of nodes, written as libpq writes several database hosts:
``amqp://user:password@node-1:5672,node-2:5672,node-3:5672/vhost``.

aio-pika and aiormq connect to the one host of their URL and reconnect to it alone: a process
whose node stops would wait for that node while the other two serve everyone else. Here every
connection tries the nodes in turn, and after losing one starts with the *next* node, so that a
stopped node is left at once rather than tried again first. The credentials, virtual host, query
and TLS options are one for all nodes: they are one cluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import aio_pika
import aiormq
import aiormq.abc
from aio_pika.abc import AbstractConnection, AbstractRobustConnection
from yarl import URL

from orchestrator.settings import broker_nodes

__all__ = ["NodeRing", "connect", "connect_robust"]

T = TypeVar("T")


class NodeRing:
    """The nodes one connection goes round: :meth:`connect` starts at the node after the one it
    last lost, and tries each once."""

    def __init__(self, url: str) -> None:
        self.nodes = broker_nodes(url)
        self._next = 0

    def lost(self) -> None:
        """The node in use went (or refused): the next attempt starts with the one after it."""
        self._next = (self._next + 1) % len(self.nodes)

    def order(self) -> list[str]:
        return self.nodes[self._next :] + self.nodes[: self._next]

    async def connect_aiormq(self, **kwargs: Any) -> aiormq.abc.AbstractConnection:
        last: BaseException | None = None
        for turn, node in enumerate(self.order()):
            try:
                connection = await _bounded(aiormq.connect(node, **kwargs), len(self.nodes))
            except (OSError, TimeoutError, aiormq.exceptions.AMQPError) as error:
                last = error
                if turn + 1 < len(self.nodes):
                    self.lost()
                continue
            return connection
        assert last is not None
        raise last


async def connect(url: str, **kwargs: Any) -> AbstractConnection:
    """A plain connection (no reconnects) to the first node that takes it; the last node's error
    when none does."""
    nodes = broker_nodes(url)
    for node in nodes[:-1]:
        try:
            connection: AbstractConnection = await _bounded(aio_pika.connect(node, **kwargs), len(nodes))
        except (OSError, TimeoutError, aio_pika.exceptions.AMQPError):
            continue
        return connection
    connection = await aio_pika.connect(nodes[-1], **kwargs)
    return connection


#: seconds one node of several may take to answer before the next is tried: a host that is down
#: without refusing (a machine gone) would otherwise hold the attempt for the kernel's TCP timeout
NODE_TIMEOUT = 10.0


async def _bounded(attempt: Awaitable[T], nodes: int) -> T:
    """``attempt`` within :data:`NODE_TIMEOUT` when there are other nodes to try; as it is alone."""
    if nodes <= 1:
        return await attempt
    return await asyncio.wait_for(attempt, NODE_TIMEOUT)


class _NodeListConnection(aio_pika.RobustConnection):
    """A robust connection that moves to the next node at each attempt after its first.

    aio-pika's reconnect loop begins every attempt by dropping the transport (``transport =
    None``) and then connects to ``self.url``: that assignment is where the next node is chosen.
    Nothing else in aio-pika picks the host, so no private method is overridden."""

    def __init__(self, url: URL, *, nodes: Sequence[str], first: int, **kwargs: Any) -> None:
        self._nodes = [URL(node) for node in nodes]
        # Each ``transport = None`` takes the next node: the constructor's own is one (its choice
        # overwritten by the URL given), the first attempt's the next, which must be ``first``.
        self._turn = first - 2
        self._transport: Any = None
        super().__init__(url, **kwargs)

    @property
    def transport(self) -> Any:
        return self._transport

    @transport.setter
    def transport(self, value: Any) -> None:
        if value is None:
            self._turn += 1
            self.url = self._nodes[self._turn % len(self._nodes)]
        self._transport = value


async def connect_robust(url: str, timeout: float | None = None, **kwargs: Any) -> AbstractRobustConnection:
    """aio-pika's robust connection over every node: the first that takes it, then, whenever the
    connection is lost, the nodes after it in turn. The last node's error when none takes the
    first connection (aio-pika's fail-fast first connect)."""
    nodes = broker_nodes(url)
    last: BaseException | None = None
    for first, node in enumerate(nodes):
        connection = _NodeListConnection(URL(node), nodes=nodes, first=first, **kwargs)
        try:
            await connection.connect(timeout=timeout)
        except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as error:
            last = error
            await connection.close()
            continue
        return connection
    assert last is not None
    raise last
