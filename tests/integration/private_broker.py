"""A RabbitMQ node of the test's own, for fault tests that stop and start the broker.

The shared broker on 127.0.0.1:5672 serves every other test (and maybe a person's orchestrator):
stopping it would break them, so a fault test runs its own node beside it. The node shares only
the installed RabbitMQ and the machine's epmd; it has its own name, AMQP and distribution ports,
Erlang cookie, config, database and log directories, and no plugins unless asked (the management plugin
would want port 15672, which the shared node holds, and costs start time).

The node runs in a process group of its own, as a child of the test process, not with
``-detached``: teardown can then kill every process the node started (beam, epmd children, the
disk monitor) with one signal, even when the test failed or the node hangs.

Use::

    with PrivateBroker() as broker:        # started; killed and its files removed on exit
        broker.url                         # amqp://guest:guest@127.0.0.1:PORT/
        broker.stop_app()                  # AMQP connections now fail
        broker.start_app()                 # and are accepted again
        broker.pause(); broker.resume()    # frozen: connections open, nothing answers

Environment: ``PRIVATE_RABBITMQ_BIN`` names the directory holding ``rabbitmq-server`` and
``rabbitmqctl`` when they are not Debian's (whose /usr/sbin wrappers switch to the rabbitmq user
and its cookie, so the real scripts under /usr/lib/rabbitmq/bin are used instead).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

__all__ = ["PrivateBroker", "PrivateBrokerError", "free_port"]

SHARED_PORT = 5672
DEBIAN_BIN = Path("/usr/lib/rabbitmq/bin")
#: a CLI call boots an Erlang VM of its own (about half a second), so each one gets this much
CTL_TIMEOUT = 30.0
LOG_TAIL_LINES = 40
PR_SET_PDEATHSIG = 1


class PrivateBrokerError(RuntimeError):
    """The private node did not do what was asked; the message carries the tail of its logs."""


def free_port() -> int:
    """A port nothing listens on now; another process may still take it before the node does,
    which is why ``start`` picks new ports and tries again when the node finds one taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, even by SIGKILL, which no teardown sees.
    The start script traps it and stops the node, so a killed pytest leaves no node behind. Only
    from the main thread: Linux sends it when the forking *thread* ends."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _bin_dir() -> Path:
    configured = os.environ.get("PRIVATE_RABBITMQ_BIN")
    if configured:
        return Path(configured)
    if (DEBIAN_BIN / "rabbitmq-server").exists():
        return DEBIAN_BIN
    found = shutil.which("rabbitmq-server")
    if found is None:
        raise PrivateBrokerError("rabbitmq-server is not installed (set PRIVATE_RABBITMQ_BIN)")
    return Path(found).resolve().parent


class PrivateBroker:
    """One RabbitMQ node for one test session; see the module docstring."""

    def __init__(
        self, prefix: str = "test", *, cookie: str | None = None, plugins: tuple[str, ...] = ()
    ) -> None:
        """``cookie``: the Erlang cookie, the same for nodes that are to form a cluster (random
        when not given); ``plugins``: those to enable, from the installed ones."""
        token = secrets.token_hex(4)
        self.node = f"{prefix}-{token}@localhost"
        self.cookie = cookie or "".join(secrets.choice(string.ascii_uppercase) for _ in range(20))
        self.plugins = plugins
        self.directory = Path(tempfile.mkdtemp(prefix=f"private-rabbitmq-{token}-"))
        self.bin = _bin_dir()
        self.port = 0
        self.dist_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        #: seconds the last ``start`` took, until the node accepted AMQP connections
        self.start_seconds: float | None = None
        self.paused = False
        self._write_files()

    @property
    def url(self) -> str:
        """guest may log in from the loopback only, which 127.0.0.1 is."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def server_log(self) -> Path:
        """What the start script and the VM print: boot failures land here, not in the node log."""
        return self.directory / "server.out"

    @property
    def node_log(self) -> Path:
        return self.directory / "log" / f"{self.node}.log"

    def _write_files(self) -> None:
        (self.directory / "home").mkdir()
        (self.directory / "mnesia").mkdir()
        (self.directory / "log").mkdir()
        cookie = self.directory / "home" / ".erlang.cookie"
        cookie.write_text(self.cookie)
        cookie.chmod(0o400)  # Erlang refuses a cookie others can read
        (self.directory / "enabled_plugins").write_text(f"[{','.join(self.plugins)}].\n")
        # Not the machine's /etc/rabbitmq files: they name the shared node and its port 5672.
        (self.directory / "rabbitmq.conf").write_text("loopback_users.guest = true\n")
        (self.directory / "rabbitmq-env.conf").write_text("")

    @property
    def env(self) -> dict[str, str]:
        """The environment of the node and of every CLI call aimed at it."""
        d = self.directory
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RABBITMQ_", "ERL_")) and key != "NODENAME"
        }
        env.update(
            HOME=str(d / "home"),  # the cookie the node and rabbitmqctl share, and no other
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),  # absent: none
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_PID_FILE=str(d / "pid"),
            RABBITMQ_ALLOW_INPUT="",
            ERL_EPMD_ADDRESS="127.0.0.1",
            # The distribution port on the loopback only, as the shared node has it.
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            ERL_CRASH_DUMP=str(d / "log" / "erl_crash.dump"),
            ERL_CRASH_DUMP_BYTES="0",  # a dump of a node that failed to boot helps nobody here
        )
        return env

    # -- life cycle --------------------------------------------------------------------------

    def start(self, timeout: float = 60.0, attempts: int = 3) -> float:
        """Boot the node until it accepts AMQP connections; the seconds that took.

        Ports are chosen afresh for each attempt, so a port taken between choosing and binding
        costs one retry, not a failed session."""
        if self.process is not None and self.process.poll() is None:
            raise PrivateBrokerError(f"{self.node} is already running")
        started = time.monotonic()
        for attempt in range(1, attempts + 1):
            self.port, self.dist_port = self._ports()
            try:
                self._boot(started + timeout)
            except PrivateBrokerError as error:
                self.kill()
                if attempt < attempts and "eaddrinuse" in str(error):
                    continue
                raise
            break
        self.start_seconds = time.monotonic() - started
        return self.start_seconds

    def _ports(self) -> tuple[int, int]:
        while True:
            port, dist_port = free_port(), free_port()
            if port != dist_port and SHARED_PORT not in (port, dist_port):
                return port, dist_port

    def _boot(self, deadline: float) -> None:
        with self.server_log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(self.bin / "rabbitmq-server")],
                cwd=self.directory,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: one killpg ends it all
                preexec_fn=_die_with_parent if _main_thread() else None,
            )
        while True:
            if self.process.poll() is not None:
                raise self._error(f"ended while starting (exit code {self.process.returncode})")
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._error("did not start in time")
            # await_startup fails at once while the VM is still loading rabbit: ask again then.
            result = self._ctl("await_startup", "--timeout", str(max(1, int(left))), timeout=left + 5)
            if result.returncode == 0 and self._wait_port(accepting=True, deadline=deadline):
                return
            time.sleep(0.2)

    def stop_app(self, timeout: float = CTL_TIMEOUT) -> None:
        """Stop RabbitMQ inside the node, as ``rabbitmqctl stop_app``: every connection is
        closed and the AMQP port refuses new ones until ``start_app``."""
        deadline = time.monotonic() + timeout
        self.ctl("stop_app", timeout=timeout)
        if not self._wait_port(accepting=False, deadline=deadline):
            raise self._error("still accepts AMQP connections after stop_app")

    def start_app(self, timeout: float = CTL_TIMEOUT) -> None:
        """Start RabbitMQ inside the node again; returns once it accepts AMQP connections."""
        deadline = time.monotonic() + timeout
        self.ctl("start_app", timeout=timeout)
        self.ctl("await_startup", "--timeout", str(max(1, int(deadline - time.monotonic()))), timeout=timeout)
        if not self._wait_port(accepting=True, deadline=deadline):
            raise self._error("does not accept AMQP connections after start_app")

    def app_running(self) -> bool:
        """Whether the AMQP port accepts connections now (rabbit's listener opens last)."""
        return self._accepts()

    def pause(self) -> None:
        """Freeze the whole node (SIGSTOP): connections stay open but nothing answers, as with a
        hung broker or a network that drops every packet. The kernel still accepts new TCP
        connections on its port, so ``app_running`` cannot tell: ``paused`` does."""
        self._signal_group(signal.SIGSTOP)
        self.paused = True

    def wait_frozen(self, timeout: float = 5.0) -> None:
        """Until every process of the node is stopped (state T): SIGSTOP is asynchronous."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            states = _group_states(self.process.pid)
            if states and all(state == "T" for state in states.values()):
                return
            if time.monotonic() > deadline:
                raise self._error(f"is not frozen after SIGSTOP: {states}")
            time.sleep(0.02)

    def resume(self) -> None:
        self._signal_group(signal.SIGCONT)
        self.paused = False

    def _signal_group(self, signum: signal.Signals) -> None:
        if self.process is None or self.process.poll() is not None:
            raise self._error("is not running")
        os.killpg(self.process.pid, signum)

    def ensure_running(self) -> None:
        """Bring the node back to running, from whatever a test left: paused, app stopped, or
        node killed."""
        if self.paused and self.process is not None and self.process.poll() is None:
            self.resume()
        if self.process is None or self.process.poll() is not None:
            self.kill()
            self.start()
        elif not self.app_running():
            self.start_app()

    def kill(self) -> None:
        """End the node and everything it started at once; its files stay, so ``start`` can
        boot it again on the same data. Safe to call at any time, any number of times."""
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        self.process = None
        self.paused = False

    def stop(self) -> None:
        """Kill the node and remove its files: the teardown, whatever state the test left."""
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PrivateBroker:
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

    # -- helpers -------------------------------------------------------------------------------

    def ctl(self, *args: str, timeout: float = CTL_TIMEOUT) -> str:
        """``rabbitmqctl -n NODE ARGS``; its output, or PrivateBrokerError with the logs."""
        result = self._ctl(*args, timeout=timeout)
        if result.returncode != 0:
            raise self._error(f"rabbitmqctl {' '.join(args)} exited {result.returncode}:\n{result.stdout}")
        return result.stdout

    def _ctl(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / "rabbitmqctl"), "-q", "-n", self.node, *args]
        try:
            return subprocess.run(
                command,
                env=self.env,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(command, 124, f"timed out after {timeout:.0f}s")

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def _wait_port(self, *, accepting: bool, deadline: float) -> bool:
        while self._accepts() != accepting:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        parts = []
        for path in (self.server_log, self.node_log):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path.name} (last {len(text)} lines) ---\n" + "\n".join(text))
        return "\n".join(parts) or "(no log written)"

    def _error(self, what: str) -> PrivateBrokerError:
        return PrivateBrokerError(
            f"private RabbitMQ node {self.node} (AMQP port {self.port}, distribution port "
            f"{self.dist_port}, files in {self.directory}) {what}\n{self.log_tail()}"
        )


def _group_states(pgid: int) -> dict[int, str]:
    """The state letter of each process in process group ``pgid``, from /proc."""
    states = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # after the name: state, ppid, pgrp
            states[int(entry.name)] = fields[0]
    return states
