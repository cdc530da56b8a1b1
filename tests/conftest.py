"""The suite's scheduling on two pytest-xdist workers (``make test`` runs ``-n 2 --dist loadgroup``,
docs/testing.md).

A test that owns a service of its own (a private RabbitMQ node, a cluster, a PostgreSQL cluster)
or is bounded in memory or time carries an ``xdist_group``, and so do the tests of a module that
share a module-scoped fixture: the tests of one group run on one
worker, one after another, so that two of them never compete for the two cores, and a private
node is booted once rather than once per worker. Every other test goes to whichever worker is free.
"""

from __future__ import annotations

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
_execute_child = subprocess.Popen._execute_child  # type: ignore[attr-defined]


def _counting(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> Any:
    _started["processes"] += 1
    return _execute_child(self, *args, **kwargs)


subprocess.Popen._execute_child = _counting  # type: ignore[attr-defined]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    _started["processes"] = 0
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, Any, None]:
    """The processes the test started, carried on its teardown report to the controller."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "teardown":
        report.user_properties.append(("processes", _started["processes"]))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The time per tier (tests/unit, tests/integration, ...): the seconds its tests took, setup
    and teardown included, summed over the workers; beside ``--durations``, where the time goes."""
    seconds: dict[str, float] = {}
    tests: dict[str, set[str]] = {}
    starting, processes = 0, 0
    for reports in terminalreporter.stats.values():
        for report in reports:
            if not isinstance(report, pytest.TestReport):
                continue
            started = dict(report.user_properties).get("processes", 0)
            starting, processes = starting + (started > 0), processes + started
            parts = report.nodeid.split("/")
            tier = "/".join(parts[:2]) if len(parts) > 2 else parts[0].split("::")[0]
            seconds[tier] = seconds.get(tier, 0.0) + report.duration
            tests.setdefault(tier, set()).add(report.nodeid)
    if not seconds:
        return
    terminalreporter.write_sep("=", "time per tier (test seconds, all workers)")
    for tier, total in sorted(seconds.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{total:8.1f}s  {len(tests[tier]):5d} tests  {tier}")
    terminalreporter.write_line(f"{starting} tests started {processes} processes")
