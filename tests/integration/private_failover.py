"""A PostgreSQL primary with a synchronous standby and automatic failover, of the test's own:
pg_auto_failover (Debian's ``pg-auto-failover-cli`` and ``postgresql-15-auto-failover``, which
``make failover-tools`` installs), a monitor and two nodes on free loopback ports, run as the
postgres user (``pg_autoctl`` refuses root), each started by deploy/ha/pg-node.sh: the script the
compose file's ``ha`` profile runs, so that the recipe users get is the one tried here.

The monitor's health checks are shortened (a check a second, a node unhealthy after 3 s, a dead
primary given 3 s to demote itself) so that a promotion takes seconds: the defaults (20 s and
30 s) would set the failover figure, not the orchestrator. With two nodes pg_auto_failover makes
the standby synchronous (``synchronous_standby_names = 'ANY 1 (...)'``): a commit is acknowledged
once the standby has it, so no acknowledged commit is lost by a promotion.

Each pg_autoctl process runs in a session of its own, so that :meth:`kill` takes the keeper, its
Postgres and every backend at once with SIGKILL, as a machine's death would.

Use::

    with FailoverPostgres() as ha:         # monitor, primary, standby; all killed and removed on exit
        ha.url("orchestrator")             # postgresql+asyncpg://postgres@h:p1,h:p2/...?target_session_attrs=read-write
        old = ha.primary()                 # the port of the node that takes writes now
        ha.kill(old)                       # kill -9 that node's keeper and server
        ha.wait_promoted(old)              # the other node now takes writes
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from .private_broker import free_port

__all__ = ["FailoverPostgres", "FailoverPostgresError"]

BIN = "/usr/lib/postgresql/15/bin"
#: what starts each node, here and in the compose file's ``ha`` profile
NODE_SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "ha" / "pg-node.sh"
TIMEOUT = 90.0
#: the monitor's health checks, shortened (pg_auto_failover's defaults in the comments)
MONITOR_SETTINGS = {
    "pgautofailover.health_check_period": "1000",  # 5000 ms
    "pgautofailover.health_check_timeout": "1000",  # 5000 ms
    "pgautofailover.health_check_max_retries": "1",  # 2
    "pgautofailover.health_check_retry_delay": "500",  # 2000 ms
    "pgautofailover.node_considered_unhealthy_timeout": "3000",  # 20000 ms
    "pgautofailover.primary_demote_timeout": "3000",  # 30000 ms
}
#: the states in which a node takes writes
WRITABLE = {"single", "primary", "wait_primary"}


class FailoverPostgresError(RuntimeError):
    """The cluster did not do what was asked; the message carries the logs' tails."""


class FailoverPostgres:
    def __init__(self, nodes: int = 2) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="private-failover-"))
        self.monitor_port = free_port()
        self.ports = [free_port() for _ in range(nodes)]
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        #: seconds from the monitor's creation to the standby's being in sync
        self.start_seconds: float | None = None

    # -- addresses -------------------------------------------------------------------------------

    @property
    def hosts(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def url(self, database: str) -> str:
        """The orchestrator's URL for a database: every node, writes only (libpq's spelling)."""
        return f"postgresql+asyncpg://postgres@{self.hosts}/{database}?target_session_attrs=read-write"

    def dsn(self, database: str = "postgres") -> str:
        """asyncpg's (and libpq's) DSN for a database on whichever node takes writes."""
        return f"postgresql://postgres@{self.hosts}/{database}?target_session_attrs=read-write"

    @property
    def monitor_uri(self) -> str:
        return f"postgres://autoctl_node@127.0.0.1:{self.monitor_port}/pg_auto_failover"

    # -- processes -------------------------------------------------------------------------------

    def _env(self) -> list[str]:
        return [
            f"PATH={BIN}:/usr/bin:/bin",
            f"HOME={self.directory}",
            f"XDG_CONFIG_HOME={self.directory / 'config'}",
            f"XDG_DATA_HOME={self.directory / 'data'}",
            f"XDG_RUNTIME_DIR={self.directory / 'run'}",
        ]

    def _spawn(self, name: str, port: int, *args: str) -> None:
        """deploy/ha/pg-node.sh, which the compose file's ``ha`` profile runs in its containers:
        ``pg_autoctl create`` on the first start, then ``pg_autoctl run``."""
        log = (self.directory / f"{name}.log").open("ab")
        environment = [f"PGDATA={self.directory / name}", f"PGPORT={port}", "NODE_HOSTNAME=127.0.0.1"]
        script = self.directory / NODE_SCRIPT.name  # a copy: the clone may be closed to postgres
        self._processes[name] = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", "env", *self._env(), *environment, str(script), *args],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()

    def _node_arguments(self, name: str) -> list[str]:
        return ["postgres", "--name", name, "--listen", "127.0.0.1", "--monitor", self.monitor_uri]

    def _psql(self, port: int, database: str, *sql: str) -> str:
        command = ["psql", "-X", "-qAt", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", database]
        for statement in sql:
            command += ["-c", statement]
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        if result.returncode != 0:
            raise FailoverPostgresError(f"psql on {port}: {result.stderr.strip()}")
        return result.stdout

    def logs(self, lines: int = 30) -> str:
        tails = []
        for path in sorted(self.directory.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(tails)

    def _until(self, what: str, check: object, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if callable(check) and check():
                    return
            except FailoverPostgresError:
                pass
            if time.monotonic() > deadline:
                raise FailoverPostgresError(f"{what}: not after {timeout:.0f}s\n{self.logs()}")
            time.sleep(0.2)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> float:
        if shutil.which("pg_autoctl") is None:
            raise FailoverPostgresError("pg_autoctl is not installed: run `make failover-tools`")
        started = time.monotonic()
        for sub in ("config", "data", "run"):
            (self.directory / sub).mkdir(mode=0o700)
        shutil.copy(NODE_SCRIPT, self.directory / NODE_SCRIPT.name)
        subprocess.run(["chown", "-R", "postgres:postgres", str(self.directory)], check=True)
        self.directory.chmod(0o755)
        self._spawn("monitor", self.monitor_port, "monitor")
        # until it holds: the monitor's server runs during ``create``, stops, and starts again
        # under ``run``; the settings are kept in postgresql.auto.conf across that
        self._until(
            "the monitor",
            lambda: self._psql(
                self.monitor_port,
                "pg_auto_failover",
                *(f"ALTER SYSTEM SET {name} = {value}" for name, value in MONITOR_SETTINGS.items()),
                "SELECT pg_reload_conf()",
            ),
        )
        for index, port in enumerate(self.ports):
            name = f"node{index + 1}"
            self._spawn(name, port, *self._node_arguments(name))
            if index == 0:  # the first must be the primary before a standby can clone it
                self._until("the first node", lambda: self.primary() == self.ports[0])
        self._until("the standby in sync", self._in_sync)
        self.start_seconds = time.monotonic() - started
        return self.start_seconds

    def states(self) -> dict[int, tuple[str, str]]:
        """Each node's port -> (the state it reports, the state the monitor assigns it)."""
        rows = self._psql(
            self.monitor_port,
            "pg_auto_failover",
            "SELECT nodeport, reportedstate, goalstate FROM pgautofailover.node ORDER BY nodeid",
        )
        found = {}
        for line in rows.splitlines():
            port, reported, goal = line.split("|")
            found[int(port)] = (reported, goal)
        return found

    def primary(self) -> int | None:
        """The port of the node that takes writes now, as the monitor sees it."""
        for port, (reported, goal) in self.states().items():
            if reported in WRITABLE and reported == goal:
                return port
        return None

    def _in_sync(self) -> bool:
        states = self.states()
        return len(states) == len(self.ports) and sorted(r for r, g in states.values() if r == g) == [
            "primary",
            *["secondary"] * (len(self.ports) - 1),
        ]

    def kill(self, port: int) -> None:
        """SIGKILL to the node's keeper, its Postgres and every backend: its whole tree."""
        process = self._processes[f"node{self.ports.index(port) + 1}"]
        _kill_tree(process.pid)
        process.wait(timeout=10)

    def rejoin(self, port: int, timeout: float = 120) -> None:
        """Start a killed node's keeper again (its data directory is there: ``pg_autoctl run``):
        the monitor has it rewind and follow the new primary; back once both are in sync."""
        name = f"node{self.ports.index(port) + 1}"
        self._spawn(name, port, *self._node_arguments(name))
        self._until(f"{name} back as a standby", self._in_sync, timeout)

    def wait_promoted(self, old: int, timeout: float = TIMEOUT) -> int:
        """The port of the node promoted in ``old``'s place, once it takes writes."""
        self._until(f"a node promoted in place of {old}", lambda: self.primary() not in (None, old), timeout)
        promoted = self.primary()
        assert promoted is not None
        return promoted

    def stop(self) -> None:
        for process in self._processes.values():
            _kill_tree(process.pid)
        for process in self._processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        self._processes.clear()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> FailoverPostgres:
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


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, read from /proc before anything is killed: a postmaster starts
    a session of its own, so its background workers and logger are not in the keeper's process
    group, and once it is dead they would live on as orphans (the monitor's health checks did)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found.append(child)
            pending.append(child)
    return found


def _kill_tree(pid: int) -> None:
    for target in [pid, *_descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
