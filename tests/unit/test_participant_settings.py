"""The example participants' settings, failure injection and registry, without a broker or a
database (their handlers are tested against PostgreSQL in tests/integration/test_example_participants.py)."""

from __future__ import annotations

import uuid

import pytest

from orchestrator.core.routing import Registry
from orchestrator.examples import WORKFLOWS
from orchestrator.examples.held_escrow import WORKFLOWS as HELD
from orchestrator.examples.shop import WORKFLOWS as SHOP
from orchestrator.examples.travel import WORKFLOWS as TRAVEL
from orchestrator.participant import reply_message_id
from participants.cli import DEFAULT_AMQP_URL, DEFAULT_DATABASE_URL, parse_args
from participants.common import Options, derived_id, injected_failure
from participants.services import SERVICES


def test_fail_rate_is_deterministic_and_close_to_its_fraction() -> None:
    keys = [f"order-{i}" for i in range(4000)]
    first = [injected_failure("payment", key, 0.25) for key in keys]
    assert first == [injected_failure("payment", key, 0.25) for key in keys]
    assert 0.22 < sum(first) / len(keys) < 0.28
    assert not any(injected_failure("payment", key, 0.0) for key in keys)
    assert all(injected_failure("payment", key, 1.0) for key in keys)
    # A lower rate fails a subset of the keys a higher rate fails, so raising it only adds failures.
    assert all(injected_failure("payment", k, 0.5) for k, failed in zip(keys, first, strict=True) if failed)
    # Services fail on different keys, so one order is not doomed at every step.
    assert first != [injected_failure("shipping", key, 0.25) for key in keys]


def test_fail_rate_follows_the_documented_formula() -> None:
    import hashlib

    digest = hashlib.sha256(b"inventory:o-42").digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    assert injected_failure("inventory", "o-42", fraction + 1e-9)
    assert not injected_failure("inventory", "o-42", fraction)


def test_ids_are_deterministic() -> None:
    assert reply_message_id("m-1", "inventory.StockReserved") == str(
        uuid.uuid5(uuid.NAMESPACE_OID, "m-1:inventory.StockReserved")
    )
    assert reply_message_id("m-1", "a.B") != reply_message_id("m-2", "a.B")
    assert derived_id("charge", "o-1") == derived_id("charge", "o-1") != derived_id("charge", "o-2")


def test_every_service_is_registered_under_its_own_name() -> None:
    assert sorted(SERVICES) == [
        "bank",
        "billing",
        "buyer",
        "cars",
        "flights",
        "hotels",
        "inventory",
        "payment",
        "seller",
        "shipping",
    ]
    for name, build in SERVICES.items():
        participant = build(Options())
        assert participant.service == name
        assert all(command.startswith(f"{name}.") for command in participant.commands)


def test_the_examples_handle_every_command_the_bundled_workflows_send() -> None:
    handled = set().union(*(build(Options()).commands for build in SERVICES.values()))
    sent = Registry(
        [workflow() if callable(workflow) else workflow for workflow in [*WORKFLOWS, *TRAVEL, *SHOP, *HELD]]
    ).command_types()
    assert sent and sent == handled


# Settings: option, then environment, then default.


def test_defaults() -> None:
    participant, settings, options = parse_args(["inventory"], {})
    assert participant.service == "inventory"
    assert settings.amqp_url == DEFAULT_AMQP_URL
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.namespace == "saga"
    assert (settings.concurrency, settings.max_attempts) == (10, 5)
    assert settings.reply_delay == 0.0
    assert settings.never_answer is False
    assert settings.shutdown_grace == 10.0
    assert options == Options()


def test_environment_is_read() -> None:
    environ = {
        "ORCHESTRATOR_AMQP_URL": "amqp://u:p@rabbit:5672/v",
        "ORCHESTRATOR_NAMESPACE": "ns1",
        "PARTICIPANT_NEVER_ANSWER": "1",
        "PARTICIPANT_DELAY": "0.5",
        "PARTICIPANT_FAIL_RATE": "0.1",
        "INVENTORY_OUT_OF_STOCK": "A, B,,C",
        "PAYMENT_DECLINE_OVER": "500",
        "PARTICIPANT_SHUTDOWN_GRACE": "2.5",
        "PARTICIPANT_DATABASE_URL": "postgresql://u:p@pg/inventory",
        "PARTICIPANT_CONCURRENCY": "4",
        "PARTICIPANT_MAX_ATTEMPTS": "9",
    }
    _, settings, options = parse_args(["inventory"], environ)
    assert settings.database_url == "postgresql://u:p@pg/inventory"
    assert settings.engine_url == "postgresql+asyncpg://u:p@pg/inventory"
    assert (settings.concurrency, settings.max_attempts) == (4, 9)
    assert settings.shutdown_grace == 2.5
    assert (settings.amqp_url, settings.namespace) == ("amqp://u:p@rabbit:5672/v", "ns1")
    assert settings.never_answer is True
    assert settings.reply_delay == 0.5
    assert options.fail_rate == 0.1
    assert options.out_of_stock == frozenset({"A", "B", "C"})
    # Another service's variable is ignored, so one environment file can serve every service.
    assert options.decline_over is None
    assert parse_args(["payment"], environ)[2].decline_over == 500


def test_an_option_wins_over_its_variable() -> None:
    environ = {
        "ORCHESTRATOR_NAMESPACE": "from-env",
        "PARTICIPANT_NEVER_ANSWER": "yes",
        "PARTICIPANT_DELAY": "9",
        "PARTICIPANT_FAIL_RATE": "0.9",
        "BUYER_REFUSE_OVER": "1",
        "PARTICIPANT_SHUTDOWN_GRACE": "30",
    }
    argv = ["buyer", "--namespace", "opt", "--no-never-answer", "--delay", "0", "--fail-rate", "0"]
    _, settings, options = parse_args([*argv, "--refuse-over", "700", "--shutdown-grace", "0"], environ)
    assert settings.shutdown_grace == 0.0  # an explicit 0, not the default
    assert settings.namespace == "opt"
    assert settings.never_answer is False
    assert settings.reply_delay == 0.0
    assert options.fail_rate == 0.0
    assert options.refuse_over == 700
    assert parse_args(["seller", "--never-answer"], {})[1].never_answer is True


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        (["payment", "--out-of-stock", "A"], {}),
        (["inventory", "--decline-over", "5"], {}),
        (["seller", "--refuse-over", "5"], {}),
        (["bank", "--fail-rate", "1.5"], {}),
        (["bank", "--delay", "-1"], {}),
        (["bank", "--delay", "inf"], {}),
        (["bank", "--concurrency", "0"], {}),
        (["bank", "--max-attempts", "many"], {}),
        (["bank", "--database-url", "mysql://db/x"], {}),
        (["bank"], {"PARTICIPANT_CONCURRENCY": "1001"}),
        (["bank", "--shutdown-grace", "-1"], {}),
        (["bank"], {"PARTICIPANT_SHUTDOWN_GRACE": "soon"}),
        (["payment", "--decline-over", "12.5"], {}),
        (["bank"], {"PARTICIPANT_NEVER_ANSWER": "maybe"}),
        (["bank"], {"PARTICIPANT_FAIL_RATE": "lots"}),
        (["bank"], {"ORCHESTRATOR_AMQP_URL": "http://rabbit/"}),
        (["nobody"], {}),
    ],
)
def test_bad_settings_exit_with_status_2(argv: list[str], environ: dict[str, str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv, environ)
    assert exit_info.value.code == 2


def test_a_bad_url_is_reported_without_its_password(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["bank", "--amqp-url", "amqp://u:hunter2@host:99999/"], {})
    assert "hunter2" not in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["bank", "--database-url", "mysql://u:hunter2@db/x"], {})
    assert "hunter2" not in capsys.readouterr().err
