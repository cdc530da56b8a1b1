"""``pip install .``, not editable, into a fresh virtualenv: ``orchestrator migrate`` and ``run`` work
from a directory outside the clone, and the wheel carries the migrations but neither the benchmark
nor the tests.

The wheel is built from exactly what the Dockerfile copies, so an image built from it installs
the same package. Nothing is downloaded, so the test runs wherever ``make venv`` has run once:

- the build uses the project venv's setuptools (a dev dependency) with ``--no-build-isolation``,
  since an isolated build would fetch setuptools from an index;
- the fresh venv is made without pip, and the project venv's pip installs the wheel into it
  (``pip --python``) with ``--no-deps --no-index``;
- the dependencies then come from the project venv: after the install, a ``.pth`` file in the
  fresh venv appends the project venv's site-packages to ``sys.path``. A directory added that way
  is not a site directory, so its own ``.pth`` files (among them the editable install of this
  clone) are not run, and the fresh venv's site-packages comes first: the ``orchestrator`` that
  runs is the wheel's, which the test checks rather than assumes. Installing before the ``.pth``
  exists keeps pip from seeing the editable install as the same distribution already present.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import AMQP_URL, ROOT, database_url_of, delete_namespace, drop_database

pytestmark = pytest.mark.integration

PACKAGES = ("orchestrator", "participants")


def docker_sources() -> list[str]:
    """What the Dockerfile copies into the image before ``pip install .``."""
    sources: list[str] = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"]:
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


def source_packages() -> set[str]:
    """Every package of the source tree, dotted: each must be in the wheel."""
    return {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in PACKAGES
        for init in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }


def migration_files() -> set[str]:
    return {
        path.relative_to(ROOT / "migrations").as_posix()
        for path in (ROOT / "migrations").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def run(argv: list[str], **options: Any) -> str:
    """Run a step of the install; its stdout, or a failure that shows what it said."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, **options)
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return str(done.stdout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the Dockerfile's sources (a build in the clone would leave a
    ``build/`` there whose stale files the next build would ship)."""
    source = tmp_path_factory.mktemp("source")
    for name in docker_sources():
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    dist = tmp_path_factory.mktemp("dist")
    run(
        [
            *(sys.executable, "-m", "pip", "wheel", str(source), "--disable-pip-version-check"),
            *("--no-deps", "--no-build-isolation", "--no-index", "--quiet", "--wheel-dir", str(dist)),
        ]
    )
    [built] = dist.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel installed, its dependencies borrowed from the project's."""
    venv = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    run(
        [
            *(sys.executable, "-m", "pip", "--python", str(python), "install"),
            *("--no-deps", "--no-index", "--quiet", "--disable-pip-version-check", str(wheel)),
        ]
    )
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).strip()
    ours = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (Path(site) / "_project_dependencies.pth").write_text("".join(f"{path}\n" for path in ours))
    return venv


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory outside the clone."""
    assert not tmp_path.resolve().is_relative_to(ROOT.resolve())
    return tmp_path


def test_the_wheel_carries_every_package_and_the_migrations_but_no_bench_or_tests(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")}
    assert tops == set(PACKAGES), "the wheel ships only the library and the example participants"
    packaged = {name.rsplit("/", 1)[0].replace("/", ".") for name in names if name.endswith("/__init__.py")}
    missing = source_packages() - packaged
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"
    prefix = "orchestrator/_migrations/"
    carried = {name.removeprefix(prefix) for name in names if name.startswith(prefix)}
    assert carried == migration_files()
    console = "orchestrator/entrypoints/api/console/"
    shipped = {name.removeprefix(console) for name in names if name.startswith(console)}
    assert shipped == {p.name for p in (ROOT / console).iterdir()}, "pyproject.toml's package-data"


def test_an_installed_wheel_migrates_and_runs_outside_the_clone(venv: Path, elsewhere: Path) -> None:
    bin_ = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    imported = "import orchestrator; print(orchestrator.__file__)"
    where = run([str(bin_ / "python"), "-c", imported], cwd=elsewhere, env=env).strip()
    assert Path(where).is_relative_to(venv), f"imported {where}, not the wheel's"
    assert "usage: python -m participants" in run(
        [str(bin_ / "python"), "-m", "participants", "--help"], cwd=elsewhere, env=env
    )  # the image starts the example participants so
    [record] = venv.glob("lib/python*/site-packages/saga_orchestrator-*.dist-info/RECORD")
    installed = {line.split("/", 1)[0] for line in record.read_text().splitlines()}
    assert not installed & {"bench", "tests", "migrations"}, installed

    name = f"orchestrator_wheel_{uuid.uuid4().hex[:10]}"
    namespace = f"test-wheel-{uuid.uuid4().hex[:8]}"
    env |= {
        "ORCHESTRATOR_DATABASE_URL": database_url_of(name),
        "ORCHESTRATOR_AMQP_URL": AMQP_URL,
        "ORCHESTRATOR_NAMESPACE": namespace,
        "ORCHESTRATOR_API_TOKEN": f"wheel-{uuid.uuid4().hex}",
        "PYTHONUNBUFFERED": "1",
    }
    try:
        migrated = run([str(bin_ / "orchestrator"), "migrate"], cwd=elsewhere, env=env)
        assert "migrated " in migrated
        # run refuses a database that is not at the packaged migrations' head: starting proves both
        with running(bin_ / "orchestrator", elsewhere, env) as (process, log):
            url = wait_for_url(process, log)
            assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
            # the console's files came with the wheel
            for asset in ("", "app.js", "diagram.js", "console.css"):
                assert httpx.get(f"{url}/console/{asset}", timeout=10).status_code == 200, asset
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0, log.read_text()
    finally:
        asyncio.run(delete_namespace(namespace))
        drop_database(name)


def test_the_readme_workflow_type_checks_and_runs_in_a_project_of_its_own(
    venv: Path, elsewhere: Path
) -> None:
    """The issue's test of done: a workflow written from the README alone, in a project that
    installs this one as a wheel, passes ``mypy --strict`` and runs under the test kit."""
    from tests.unit.test_readme import README, program

    (elsewhere / "my_workflows.py").write_text(program(README.read_text()))
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MYPYPATH")}
    checked = subprocess.run(
        [
            python,
            "-m",
            "mypy",
            "--strict",
            "--config-file=",
            "--cache-dir",
            str(elsewhere / ".mypy"),
            "my_workflows.py",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    ran = subprocess.run(  # bounded: a README block that serves forever must fail here, not hang CI
        [python, "my_workflows.py"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    where = run([python, "-c", "import orchestrator; print(orchestrator.__file__)"], cwd=elsewhere, env=env)
    assert Path(where.strip()).is_relative_to(venv)


@contextlib.contextmanager
def running(command: Path, cwd: Path, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``orchestrator run --port 0``, its output in a file; killed if a check fails before SIGTERM."""
    log = cwd / "run.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [str(command), "run", "--port", "0"], cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT
        )
    try:
        yield process, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def wait_for_url(process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while "api listening on " not in (text := log.read_text(errors="replace")):
        if process.poll() is not None:
            raise AssertionError(f"orchestrator run exited {process.returncode}:\n{text}")
        if time.monotonic() > deadline:
            raise AssertionError(f"orchestrator run never logged 'api listening on':\n{text}")
        time.sleep(0.05)
    return text.split("api listening on ", 1)[1].split()[0]
