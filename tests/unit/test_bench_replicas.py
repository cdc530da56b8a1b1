"""bench.replicas finds a replica's database sessions by the ports of its sockets, read from /proc:
if that reading went wrong, every takeover would be timed against the wrong partitions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.config import Stack
from bench.replicas import Replica, _failed_correctness, chosen, parse

LISTEN = """
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
time.sleep(30)
"""


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux /proc")
def test_the_local_ports_of_a_process_are_read_off_proc(tmp_path: Path) -> None:
    stack = Stack.make(tmp_path, sys.executable, "postgresql+asyncpg://x/y", "amqp://x", tmp_path, False)
    replica = Replica(stack, "ns", tmp_path / "replica-0.log", partitions=6)
    replica.popen = subprocess.Popen([sys.executable, "-c", LISTEN], stdout=subprocess.PIPE)
    try:
        assert replica.popen.stdout is not None
        port = int(replica.popen.stdout.readline())
        assert port in replica.local_ports()
        assert replica.env()["ORCHESTRATOR_PARTITIONS"] == "6"
    finally:
        replica.popen.kill()
        replica.popen.wait()


def test_failover_is_wrong_when_the_audit_is_not_clean() -> None:
    clean = {"all_completed": True, "decided_twice": [], "verify_exit": 0}
    assert _failed_correctness({"audit": clean}) == []
    twice = {**clean, "decided_twice": [{"saga_id": "s", "message_id": "m", "n": 2}]}
    assert len(_failed_correctness({"audit": twice})) == 1
    assert len(_failed_correctness({"audit": {**clean, "verify_exit": 1}, "takeover_missing": 1})) == 2


def test_parts_run_in_their_own_order() -> None:
    assert chosen(parse(["--only", "failover,throughput"])) == ["throughput", "failover"]
    with pytest.raises(SystemExit):
        chosen(parse(["--only", "latency"]))
