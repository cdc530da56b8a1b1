"""The suite's scheduling on pytest-xdist workers (``make test`` runs ``-n 3 --dist loadgroup``,
docs/testing.md).

A test that owns a service of its own (a private RabbitMQ node, a cluster, a PostgreSQL cluster)
or is bounded in memory or time carries an ``xdist_group``, and so do the tests of a module that
share a module-scoped fixture: the tests of one group run on one
worker, one after another, so that two of them never compete for the two cores, and a private
node is booted once rather than once per worker. Every other test goes to whichever worker is free.
"""

from __future__ import annotations

import resource
import subprocess
from collections.abc import Generator
from typing import Any

import pytest

#: the groups, by the fixtures a test uses: the tests that stop, freeze or restart the session's
#: private RabbitMQ node share it on one worker
GROUP_OF_FIXTURE = {
    "private_broker": "private-services",
    "private_bench": "private-services",
    "private_broker_node": "private-services",
}
#: the groups, by module: services booted for the module (a three-node cluster, a TLS node, a
#: PostgreSQL cluster), and the runs whose bounds (memory, seconds, a benchmark's figures) would
#: suffer from a neighbour as heavy as themselves
GROUP_OF_MODULE = {
    "tests/integration/test_cluster.py": "private-services",
    "tests/integration/test_amqps.py": "private-services",
    "tests/integration/test_postgres_restart.py": "private-services",
    "tests/integration/test_chaos.py": "bounded",
    "tests/integration/test_bench.py": "bounded",
    "tests/integration/test_memory.py": "bounded",
    "tests/integration/test_recovery.py": "bounded",
}


def _shares_a_module_fixture(item: pytest.Item) -> bool:
    """Whether the test uses a module-scoped fixture (a migrated database, a built wheel, a rig
    the module's tests build on one after another): its module's tests then stay on one worker,
    in order, and the fixture is made once."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(defs and defs[-1].scope == "module" for defs in info.name2fixturedefs.values())


def group_of(item: pytest.Item) -> str | None:
    module = item.nodeid.split("::", 1)[0]
    fixtures = getattr(item, "fixturenames", ())
    return (
        GROUP_OF_MODULE.get(module)
        or next((GROUP_OF_FIXTURE[name] for name in fixtures if name in GROUP_OF_FIXTURE), None)
        or (module if _shares_a_module_fixture(item) else None)
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Before xdist reads the groups (its own hook of this name runs after this one)."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None and (group := group_of(item)) is not None:
            item.add_marker(pytest.mark.xdist_group(group))


#: processes started by the test running now (setup and teardown included), on this worker
_started = {"processes": 0}
#: the CPU seconds this worker and its finished children had used when the test began
_cpu_at_start = {"seconds": 0.0}


def _cpu_seconds() -> float:
    """This worker's CPU time and its reaped children's: a test's processes, its share of the
    machine's two cores (the broker's and the database's own work is not in it)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


_execute_child = subprocess.Popen._execute_child  # type: ignore[attr-defined]


def _counting(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> Any:
    _started["processes"] += 1
    return _execute_child(self, *args, **kwargs)


subprocess.Popen._execute_child = _counting  # type: ignore[attr-defined]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    _started["processes"] = 0
    _cpu_at_start["seconds"] = _cpu_seconds()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, Any, None]:
    """The processes the test started, carried on its teardown report to the controller."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "teardown":
        report.user_properties.append(("processes", _started["processes"]))
        report.user_properties.append(("cpu", _cpu_seconds() - _cpu_at_start["seconds"]))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The time per tier (tests/unit, tests/integration, ...): the seconds its tests took, setup
    and teardown included, summed over the workers; beside ``--durations``, where the time goes."""
    seconds: dict[str, float] = {}
    tests: dict[str, set[str]] = {}
    cpu: dict[str, float] = {}
    #: the seconds of each xdist group: one worker runs a group, one test after another, so the
    #: largest is a floor under the suite's time
    groups: dict[str, float] = {}
    starting, processes = 0, 0
    for reports in terminalreporter.stats.values():
        for report in reports:
            if not isinstance(report, pytest.TestReport):
                continue
            properties = dict(report.user_properties)
            started = properties.get("processes", 0)
            if "cpu" in properties:
                cpu[report.nodeid] = properties["cpu"]
            starting, processes = starting + (started > 0), processes + started
            parts = report.nodeid.split("/")
            tier = "/".join(parts[:2]) if len(parts) > 2 else parts[0].split("::")[0]
            seconds[tier] = seconds.get(tier, 0.0) + report.duration
            tests.setdefault(tier, set()).add(report.nodeid)
            if "@" in report.nodeid and not report.nodeid.endswith("]"):  # xdist adds "@group"
                group = report.nodeid.rsplit("@", 1)[1]
                groups[group] = groups.get(group, 0.0) + report.duration
    if not seconds:
        return
    terminalreporter.write_sep("=", "time per tier (test seconds, all workers)")
    for tier, total in sorted(seconds.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{total:8.1f}s  {len(tests[tier]):5d} tests  {tier}")
    terminalreporter.write_line(f"{starting} tests started {processes} processes")
    largest = sorted(groups.items(), key=lambda kv: -kv[1])[:4]
    terminalreporter.write_line("largest groups: " + ", ".join(f"{g} {s:.0f}s" for g, s in largest))
    terminalreporter.write_sep(
        "=", f"CPU: {sum(cpu.values()):.0f}s in the tests and their processes; the hungriest"
    )
    for nodeid, used in sorted(cpu.items(), key=lambda kv: -kv[1])[:15]:
        terminalreporter.write_line(f"{used:8.1f}s  {nodeid}")
