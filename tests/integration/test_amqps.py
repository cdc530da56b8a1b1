"""``amqps://`` URLs, against a private RabbitMQ node that listens for TLS with a self-signed
certificate made for it: the orchestrator and the example participants take the URL as they are
given it (``?cafile=`` names the CA), and refuse a server whose certificate they cannot check.
(docs/architecture.md, "Connections: TLS, clusters".)"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import aio_pika
import pytest

from .conftest import ROOT
from .private_broker import PrivateBroker, free_port

pytestmark = pytest.mark.integration


class TlsBroker(PrivateBroker):
    """A private node with a TLS listener too, on ``tls_port``; ``ca`` is its certificate, which
    is its own CA, naming localhost and 127.0.0.1."""

    def _write_files(self) -> None:
        super()._write_files()
        self.tls_port = free_port()
        self.ca = self.directory / "cert.pem"
        key = self.directory / "key.pem"
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-keyout", str(key), "-out", str(self.ca),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )  # fmt: skip
        with (self.directory / "rabbitmq.conf").open("a") as conf:
            conf.write(
                f"listeners.ssl.default = 127.0.0.1:{self.tls_port}\n"
                f"ssl_options.cacertfile = {self.ca}\n"
                f"ssl_options.certfile = {self.ca}\n"
                f"ssl_options.keyfile = {key}\n"
                "ssl_options.verify = verify_none\n"
                "ssl_options.fail_if_no_peer_cert = false\n"
            )

    def tls_url(self, query: str = "") -> str:
        return f"amqps://guest:guest@127.0.0.1:{self.tls_port}/{query}"


@pytest.fixture(scope="module")
def tls_broker() -> Iterator[TlsBroker]:
    broker = TlsBroker("tls")
    with broker:
        yield broker


async def test_aio_pika_takes_an_amqps_url_with_a_ca_file(tls_broker: TlsBroker) -> None:
    connection = await aio_pika.connect(tls_broker.tls_url(f"?cafile={tls_broker.ca}"))
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        assert queue.name
    finally:
        await connection.close()


async def test_a_certificate_it_cannot_check_is_refused(tls_broker: TlsBroker) -> None:
    with pytest.raises(Exception, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        await aio_pika.connect(tls_broker.tls_url(), timeout=10)


def test_migrate_and_a_participant_over_amqps(tls_broker: TlsBroker) -> None:
    """The orchestrator's command line and a participant, with nothing but the URL set."""
    url = tls_broker.tls_url(f"?cafile={tls_broker.ca}")
    namespace = f"test-tls-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "ORCHESTRATOR_AMQP_URL": url,
        "ORCHESTRATOR_NAMESPACE": namespace,
        "ORCHESTRATOR_QUEUE_TYPE": "quorum",
    }
    # migrate wants the database too: the shared one's, in a database of its own
    env["ORCHESTRATOR_DATABASE_URL"] = (
        f"postgresql+asyncpg://postgres@127.0.0.1:5432/orchestrator_tls_{uuid.uuid4().hex[:8]}"
    )
    try:
        migrate = subprocess.run(
            [sys.executable, "-m", "orchestrator", "migrate"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        participant = subprocess.Popen(
            [sys.executable, "-m", "participants", "inventory"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            asyncio.run(wait_for_consumer(url, f"{namespace}.inventory"))
        finally:
            participant.terminate()
            output, _ = participant.communicate(timeout=30)
        assert participant.returncode == 0, output
        assert "consuming" in output and "amqps://guest:***@" in output, output
    finally:
        drop(env["ORCHESTRATOR_DATABASE_URL"].rsplit("/", 1)[1])


async def wait_for_consumer(url: str, queue: str) -> None:
    from orchestrator.adapters.amqp.broker import wait_for_consumers

    connection = await aio_pika.connect(url)
    try:
        await wait_for_consumers(connection, [queue], 30)
    finally:
        await connection.close()


def drop(database: str) -> None:
    from .conftest import drop_database

    drop_database(database)
