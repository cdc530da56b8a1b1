"""The processes under test, started exactly as a user starts them, and the floor.

The orchestrator, the responder and the floor are separate processes so that they compete for
the machine's cores as the floor's own processes do; the benchmark driver only publishes start
events and reads the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import json
import os
import re
import resource
import secrets
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.config import Stack, floor_missing
from bench.profile import attach

__all__ = [
    "KitService",
    "Orchestrator",
    "Responder",
    "has_port_flag",
    "migrate",
    "run_floor",
    "run_peer",
    "spies",
]

READY = "orchestrator running"
WORKFLOWS = "bench.workflows"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: the py-spy processes sampling orchestrators (``--profile``): each ends when its orchestrator does
spies: list[subprocess.Popen[bytes]] = []


@functools.cache
def _run_help(python: str, root: Path) -> str:
    result = subprocess.run(
        [python, "-m", "orchestrator", "run", "--help"], cwd=root, capture_output=True, text=True, timeout=60
    )
    return result.stdout


def has_port_flag(python: str, root: Path) -> bool:
    """Whether ``orchestrator run`` serves the REST API (and so needs a free port of its own)."""
    return "--port" in _run_help(python, root)


def accepts_changed_releases(python: str, root: Path) -> bool:
    """Whether ``orchestrator run`` keeps fingerprints of releases: the benchmark then says that
    ``bench_hold`` changing its deadline from one scenario to the next is meant
    (``--accept-changed-releases``), as it runs one database through every scenario."""
    return "--accept-changed-releases" in _run_help(python, root)


def migrate(stack: Stack, namespace: str, workflows: str = WORKFLOWS) -> None:
    """Create and migrate the benchmark's database, as ``orchestrator migrate`` does for a user. It
    migrates a broker topology too: under ``namespace``, for the caller to delete, never a user's."""
    env = {
        **os.environ,
        "ORCHESTRATOR_DATABASE_URL": stack.database_url,
        "ORCHESTRATOR_AMQP_URL": stack.amqp_url,
        "ORCHESTRATOR_NAMESPACE": namespace,
    }
    result = subprocess.run(
        [stack.python, "-m", "orchestrator", "migrate", "--workflows", workflows],
        cwd=stack.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"orchestrator migrate failed:\n{result.stdout}{result.stderr}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc (0 where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


class _Child:
    """A subprocess whose output goes to a log file, which is where we look for its readiness."""

    def __init__(self, name: str, log: Path) -> None:
        self.name = name
        self.log = log
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def spawn(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        with self.log.open("ab") as handle:
            handle.write(f"--- {' '.join(argv)}\n".encode())
            handle.flush()
            self.popen = subprocess.Popen(argv, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def wait_for(self, text: str, after: int, timeout: float) -> None:
        """Wait until ``text`` appears in the log past offset ``after`` (earlier runs share the file)."""
        assert self.popen is not None
        deadline = time.monotonic() + timeout
        while text not in self.output()[after:]:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.popen.returncode}:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} never said {text!r}:\n{self.output()[-3000:]}")
            await asyncio.sleep(0.01)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    async def terminate(self, timeout: float = 60) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.popen.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if self.popen.poll() is None:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode


class Orchestrator(_Child):
    """``python -m orchestrator run`` with the benchmark's workflows, under one namespace."""

    def __init__(
        self,
        stack: Stack,
        namespace: str,
        log: Path,
        deadline_seconds: float = 10.0,
        workflows: str = WORKFLOWS,
        name: str = "orchestrator",
    ) -> None:
        super().__init__(name, log)
        self.workflows = workflows  # the chaos suite runs its own (bench/chaos/workflow.py)
        self.stack = stack
        self.namespace = namespace
        self.deadline_seconds = deadline_seconds
        self.token = secrets.token_hex(16)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "ORCHESTRATOR_DATABASE_URL": self.stack.database_url,
            "ORCHESTRATOR_AMQP_URL": self.stack.amqp_url,
            "ORCHESTRATOR_NAMESPACE": self.namespace,
            # The REST API, where it exists, refuses to start without a token; nobody calls it here.
            "ORCHESTRATOR_API_TOKEN": self.token,
            "BENCH_DEADLINE_SECONDS": str(self.deadline_seconds),
            "PYTHONUNBUFFERED": "1",
        }

    def launch(self) -> int:
        """Spawn without waiting; the log offset to wait for readiness from."""
        argv = [self.stack.python, "-m", "orchestrator", "run", "--workflows", self.workflows]
        if self.stack.api_port_flag:
            argv += ["--port", "0"]  # any free port: scenarios and other runs must not collide
        if accepts_changed_releases(self.stack.python, self.stack.root):
            argv += ["--accept-changed-releases"]
        offset = len(self.output())
        self.spawn(argv, self.env(), self.stack.root)
        if self.stack.profile is not None:
            spy = attach(self.pid, self.stack.profile / f"{self.log.stem}-{self.pid}.txt")
            if spy is not None:
                spies.append(spy)
        return offset

    async def start(self, timeout: float = 120) -> float:
        """Start and wait until it says it runs; the seconds that took."""
        began = time.monotonic()
        offset = self.launch()
        await self.wait_for(READY, offset, timeout)
        return time.monotonic() - began

    def kill(self) -> None:
        """kill -9: no chance to finish a batch, drain the relay or close a connection."""
        assert self.popen is not None
        os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(30)

    async def metrics(self) -> str | None:
        """Its ``/metrics`` page, read off the port it logged; None where it serves no API."""
        found = re.findall(r"api listening on (http://\S+)", self.output())
        if not found:
            return None
        request = urllib.request.Request(
            f"{found[-1]}/metrics", headers={"Authorization": f"Bearer {self.token}"}
        )

        def read() -> str:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.read().decode()  # type: ignore[no-any-return]

        return await asyncio.to_thread(read)

    def rss_kib(self) -> int:
        return _status_kib(self.pid, "VmRSS")

    def peak_rss_kib(self) -> int:
        return _status_kib(self.pid, "VmHWM")

    def log_problems(self) -> dict[str, Any]:
        """Errors and warnings it logged: a figure from a struggling run is not to be taken at face value."""
        lines = self.output().splitlines()
        errors = [line for line in lines if " ERROR " in line or "Traceback" in line]
        warnings = [line for line in lines if " WARNING " in line]
        return {"errors": len(errors), "warnings": len(warnings), "first": (errors + warnings)[:3]}


class Responder(_Child):
    """The participants that answer at once (bench/responder.py), in a process of their own."""

    def __init__(self, stack: Stack, namespace: str, log: Path, name: str = "responder") -> None:
        super().__init__(name, log)
        self.stack = stack
        self.namespace = namespace
        self.record: Path | None = None

    async def start(self, services: tuple[str, ...], record: Path | None = None) -> None:
        self.record = record
        argv = [
            self.stack.python,
            "-m",
            "bench.responder",
            "--amqp-url",
            self.stack.amqp_url,
            "--namespace",
            self.namespace,
            "--services",
            ",".join(services),
        ]
        if record is not None:
            argv += ["--record", str(record)]
        offset = len(self.output())
        self.spawn(argv, {**os.environ, "PYTHONUNBUFFERED": "1"}, self.stack.root)
        await self.wait_for("responder ready", offset, 60)

    async def stop(self) -> dict[str, Any] | None:
        """Stop it; what it recorded, if it was asked to."""
        await self.terminate()
        if self.record is None or not self.record.exists():
            return None
        data: dict[str, Any] = json.loads(self.record.read_bytes())
        return data


class KitService(_Child):
    """One example service on the participant kit, started as a user starts it
    (``python -m participants NAME``): each command a transaction of its own database, its claim,
    its business statements and its recorded reply, then the reply published, confirmed; it
    reconnects to the broker by itself. ``options``: more of its command-line options."""

    def __init__(
        self,
        stack: Stack,
        namespace: str,
        log: Path,
        service: str,
        concurrency: int,
        database_url: str,
        options: tuple[str, ...] = (),
    ) -> None:
        super().__init__(f"participant-{service}", log)
        self.stack = stack
        self.namespace = namespace
        self.service = service
        self.concurrency = concurrency
        self.database_url = database_url
        self.options = options

    async def start(self, timeout: float = 60) -> None:
        argv = [self.stack.python, "-m", "participants", self.service, *self.options]
        argv += ["--concurrency", str(self.concurrency)]
        env = {
            **os.environ,
            "PARTICIPANT_DATABASE_URL": self.database_url,
            "ORCHESTRATOR_AMQP_URL": self.stack.amqp_url,
            "ORCHESTRATOR_NAMESPACE": self.namespace,
            "PYTHONUNBUFFERED": "1",
        }
        offset = len(self.output())
        self.spawn(argv, env, self.stack.root)
        await self.wait_for("consuming ", offset, timeout)


#: seconds the floor is given (its own --timeout)
FLOOR_TIMEOUT = 900


def _last_json(name: str, code: int | None, out: bytes, errors: str) -> tuple[dict[str, Any] | None, str]:
    """The last line a floor or a peer printed, read as its JSON; or None and why not (its exit
    code and the last lines of ``errors`` where it failed or printed nothing)."""
    lines = out.decode(errors="replace").strip().splitlines()
    if code != 0 or not lines:
        tail = errors.strip().splitlines()[-3:]
        return None, f"{name} failed (exit {code}): {' | '.join(tail)}"
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except json.JSONDecodeError:
        return None, f"{name} printed no JSON: {lines[-1][:200]}"
    return result, ""


async def run_floor(
    stack: Stack, sagas: int, steps: int = 3, rate: float = 0.0, batch: int = 128
) -> tuple[dict[str, Any] | None, str]:
    """Run pipeline.py; its JSON line, or None and why not (a missing floor is noted, not fatal)."""
    missing = floor_missing(stack.floor)
    if missing is not None:
        return None, missing
    assert stack.floor is not None  # floor_missing said so
    argv = [stack.python, str(stack.floor), "--sagas", str(sagas), "--steps", str(steps)]
    argv += ["--batch", str(batch), "--timeout", str(FLOOR_TIMEOUT)]
    if rate:
        argv += ["--rate", f"{rate:.1f}"]
    env = {**os.environ, "AMQP_URL": stack.amqp_url, "LIMIT_DSN": stack.dsn}
    cpu_before = _children_cpu_seconds()
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=stack.root, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:  # the floor stops itself at its --timeout; a floor that hangs past it is a note too
        out, err = await asyncio.wait_for(process.communicate(), FLOOR_TIMEOUT + 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        return None, f"floor overran {FLOOR_TIMEOUT + 60} s"
    cpu = _children_cpu_seconds() - cpu_before
    result, why = _last_json("floor", process.returncode, out, err.decode(errors="replace"))
    if result is None:
        return None, why
    # The floor is one process, its participants included: its CPU per step is the whole
    # pipeline's, to set beside the orchestrator's plus its responder's.
    result["cpu_s"] = round(cpu, 2)
    result["cpu_ms_per_step"] = round(cpu * 1000 / (sagas * steps), 3) if sagas and steps else None
    return result, " ".join(argv[1:])


#: the services the order saga commands, which the responder serves
ORDER_SERVICES = ("inventory", "payment", "shipping")
#: said in the JSON when the peer cannot run here; a benchmark without it still measures the rest
NO_DBOS = "no peer: dbos is not installed (it is a dev dependency: make venv, or pip install 'dbos>=3.4,<4')"


def has_dbos() -> bool:
    """Whether the peer can run: dbos importable by this interpreter, which is the one the
    benchmark runs its processes with."""
    return importlib.util.find_spec("dbos") is not None


async def run_peer(
    stack: Stack, sagas: int, namespace: str, timeout: float = 600.0
) -> tuple[dict[str, Any] | None, str]:
    """The order saga written with DBOS (bench/peer_dbos.py) against our responder in
    ``namespace``: its JSON line with its CPU, or None and why not. Never fatal: a peer that is
    missing, fails or overruns ``timeout`` (its own burst gets that long, the process a minute
    more) is a note, as a missing floor is. The caller deletes ``namespace`` afterwards."""
    if not has_dbos():
        return None, NO_DBOS
    responder = Responder(stack, namespace, stack.log_dir / "peer-responder.log", name="peer-responder")
    log = stack.log_dir / "peer-dbos.log"
    argv = [stack.python, "-m", "bench.peer_dbos", "--sagas", str(sagas), "--namespace", namespace]
    argv += ["--amqp-url", stack.amqp_url, "--database-url", stack.peer_dsn, "--timeout", str(timeout)]
    try:
        await responder.start(ORDER_SERVICES)
        responder_before = responder.cpu_seconds()
        cpu_before = _children_cpu_seconds()
        with log.open("ab") as errors:
            errors.write(f"--- {' '.join(argv)}\n".encode())
            errors.flush()
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=stack.root,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                stdout=asyncio.subprocess.PIPE,
                stderr=errors,
            )
            try:
                out, _ = await asyncio.wait_for(process.communicate(), timeout + 60)
            except TimeoutError:
                process.kill()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), 10)
                return None, f"peer overran {timeout + 60:g} s (log: {log})"
        cpu = _children_cpu_seconds() - cpu_before
        responder_cpu = responder.cpu_seconds() - responder_before
    except RuntimeError as error:  # the responder did not start
        return None, f"peer not run: {error}"
    finally:
        await responder.terminate()
    result, why = _last_json("peer", process.returncode, out, log.read_text(errors="replace"))
    if result is None:
        return None, f"{why} (log: {log})"
    steps = result.get("completed", 0) * result.get("steps", 0)
    # Per step, the burst's CPU as the peer read it (all its threads: DBOS works on threads), set
    # beside the orchestrator's over its burst; with the responder's beside the orchestrator's
    # plus its responder's (PostgreSQL's is in neither). ``cpu_s`` is the whole process's, its
    # start (imports, DBOS's launch and migrations) included, from the operating system.
    burst = float(result.get("burst_cpu_s", cpu))
    result["cpu_s"] = round(cpu, 2)
    result["cpu_ms_per_step"] = round(burst * 1000 / steps, 3) if steps else None
    result["responder_cpu_s"] = round(responder_cpu, 2)
    result["pipeline_cpu_ms_per_step"] = round((burst + responder_cpu) * 1000 / steps, 3) if steps else None
    return result, " ".join(argv[1:])


def _children_cpu_seconds() -> float:
    """The CPU of this process's children that have ended: the floor's or the peer's, read around
    its run (no other child ends meanwhile: the scenarios alternate with them, and the peer's
    responder is stopped after it)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime
