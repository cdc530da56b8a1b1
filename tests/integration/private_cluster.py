"""A RabbitMQ cluster of the test's own: three private nodes (tests/integration/private_broker.py)
on this machine, one Erlang cookie, joined with ``rabbitmqctl join_cluster``, for tests that stop
a node under load, which no node of the shared broker may be.

Each node is a PrivateBroker: its own name, AMQP and distribution ports, files and process group;
they share the cookie (the nodes and every CLI call aimed at them must) and the enabled plugins
(``rabbitmq_consistent_hash_exchange``, which partitioned consumers route with).

Use::

    with PrivateCluster() as cluster:      # three nodes, clustered; all killed and removed on exit
        cluster.nodes[0].url               # each node's AMQP URL
        cluster.nodes[2].stop_app()        # that node leaves; the other two keep a majority
"""

from __future__ import annotations

import secrets
import string
import time
from types import TracebackType

from .private_broker import PrivateBroker, PrivateBrokerError

__all__ = ["PrivateCluster"]

PLUGINS = ("rabbitmq_consistent_hash_exchange",)


class PrivateCluster:
    def __init__(self, size: int = 3, plugins: tuple[str, ...] = PLUGINS) -> None:
        cookie = "".join(secrets.choice(string.ascii_uppercase) for _ in range(20))
        self.nodes = [PrivateBroker(f"cluster{i}", cookie=cookie, plugins=plugins) for i in range(size)]
        #: seconds from the first node's boot to the last one's joining
        self.start_seconds: float | None = None

    def start(self) -> float:
        """Boot every node, then join each to the first: a node joins only with its app stopped,
        and a fresh node's own database is thrown away by the join (it has nothing yet)."""
        started = time.monotonic()
        first = self.nodes[0]
        for node in self.nodes:
            node.start()
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.node)
            node.start_app()
        running = first.ctl("eval", "length(rabbit_nodes:all_running()).").strip()
        if running != str(len(self.nodes)):
            raise PrivateBrokerError(f"the cluster runs {running} nodes, not {len(self.nodes)}")
        self.start_seconds = time.monotonic() - started
        return self.start_seconds

    @property
    def url(self) -> str:
        """Every node, as a broker URL may name them (orchestrator/adapters/amqp/nodes.py)."""
        return "amqp://guest:guest@" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes) + "/"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> PrivateCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
