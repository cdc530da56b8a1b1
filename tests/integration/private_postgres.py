"""A PostgreSQL cluster of the test's own (Debian's ``pg_createcluster``), for tests that restart
the database, which the shared one on 127.0.0.1:5432 must never be.

It listens on the loopback only, on a free port, trusts local connections as the shared one does,
and serves TLS with a self-signed certificate made for it (so that ``sslmode=require`` can be
tried against a real server). ``pg_dropcluster`` removes it whatever the test did.

Use::

    with PrivatePostgres() as pg:      # created and started; dropped on exit
        pg.admin_dsn                   # postgresql://postgres@127.0.0.1:PORT/postgres
        pg.restart()                   # pg_ctlcluster restart: every connection is cut
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from .private_broker import free_port

__all__ = ["PrivatePostgres", "PrivatePostgresError"]

VERSION = "15"
TIMEOUT = 120.0


class PrivatePostgresError(RuntimeError):
    """The private cluster did not do what was asked; the message carries the command's output."""


def _run(*command: str) -> str:
    result = subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    if result.returncode != 0:
        raise PrivatePostgresError(
            f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    return result.stdout


class PrivatePostgres:
    def __init__(self, settings: dict[str, str] | None = None) -> None:
        #: more server settings (the backup drill's WAL archiving), over the defaults below
        self.settings = dict(settings or {})
        self.name = f"test{secrets.token_hex(4)}"
        self.port = free_port()
        #: the certificate and key: outside the data directory, owned by postgres (it refuses a
        #: key others can read)
        self.directory = Path(tempfile.mkdtemp(prefix=f"private-postgres-{self.name}-"))
        self.created = False

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        """The orchestrator's URL for a database of this cluster."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        if shutil.which("pg_createcluster") is None:
            raise PrivatePostgresError("pg_createcluster is not installed (Debian's postgresql-common)")
        cert, key = self.directory / "cert.pem", self.directory / "key.pem"
        _run(
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert),
        )  # fmt: skip
        _run("chown", "-R", "postgres:postgres", str(self.directory))
        key.chmod(0o600)
        self.directory.chmod(0o755)
        _run("pg_createcluster", VERSION, self.name, "-p", str(self.port), "--", "--auth=trust")
        self.created = True
        # Not with pg_createcluster -o, which writes some values unquoted (127.0.0.1 breaks it).
        settings = {
            "listen_addresses": "127.0.0.1",
            "ssl": "on",
            "ssl_cert_file": str(cert),
            "ssl_key_file": str(key),
            "max_connections": "100",
            "fsync": "off",  # a test's cluster: a crash of the machine may lose it whole
            **self.settings,
        }
        conf = Path(f"/etc/postgresql/{VERSION}/{self.name}/conf.d/test.conf")
        conf.write_text("".join(f"{k} = '{v}'\n" for k, v in settings.items()))
        _run("pg_ctlcluster", VERSION, self.name, "start")

    def restart(self) -> None:
        """``pg_ctlcluster restart`` (a fast shutdown: sessions are ended, then it starts again)."""
        _run("pg_ctlcluster", VERSION, self.name, "restart")

    @property
    def data_directory(self) -> Path:
        return Path(f"/var/lib/postgresql/{VERSION}/{self.name}")

    @property
    def conf_d(self) -> Path:
        return Path(f"/etc/postgresql/{VERSION}/{self.name}/conf.d")

    def stop_server(self) -> None:
        _run("pg_ctlcluster", VERSION, self.name, "stop", "--", "-m", "fast")

    def start_server(self) -> None:
        _run("pg_ctlcluster", VERSION, self.name, "start")

    def log_tail(self, lines: int = 40) -> str:
        path = Path(f"/var/log/postgresql/postgresql-{VERSION}-{self.name}.log")
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.created:
            with contextlib.suppress(PrivatePostgresError, subprocess.TimeoutExpired):
                _run("pg_dropcluster", VERSION, self.name, "--stop")
            self.created = False
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
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
