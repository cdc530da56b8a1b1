"""The participants' business answers and settings, without a broker: they are pure functions."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from participants import bank, buyer, inventory, payment, seller, shipping
from participants.cli import DEFAULT_AMQP_URL, parse_args
from participants.common import (
    InvalidCommand,
    Options,
    derived_id,
    injected_failure,
    reply_message_id,
)
from participants.runner import mask_url
from participants.services import SERVICES

LINES = [{"sku": "APPLE", "quantity": 2}, {"sku": "PEAR", "quantity": 1}]
ORDER = {"order_id": "o-1"}
ESCROW = {"escrow_id": "e-1"}
NONE = Options()
ALWAYS = Options(fail_rate=1.0)

# (service, command type, valid body, success reply type, failure reply type or None)
CASES: list[tuple[Any, str, dict[str, Any], str, str | None]] = [
    (
        inventory,
        "inventory.ReserveStock",
        {**ORDER, "lines": LINES},
        "inventory.StockReserved",
        "inventory.OutOfStock",
    ),
    (inventory, "inventory.ReleaseStock", ORDER, "inventory.StockReleased", None),
    (
        payment,
        "payment.ChargePayment",
        {**ORDER, "customer_id": "c-1", "amount_cents": 1200},
        "payment.PaymentCharged",
        "payment.PaymentDeclined",
    ),
    (payment, "payment.RefundPayment", ORDER, "payment.PaymentRefunded", None),
    (
        shipping,
        "shipping.ShipOrder",
        {**ORDER, "lines": LINES},
        "shipping.OrderShipped",
        "shipping.ShipmentFailed",
    ),
    (
        buyer,
        "buyer.RequestSignature",
        {**ESCROW, "amount_cents": 500},
        "buyer.BuyerSigned",
        "buyer.BuyerRefused",
    ),
    (seller, "seller.RequestSignature", ESCROW, "seller.SellerSigned", None),
    (seller, "seller.VoidDocuments", ESCROW, "seller.DocumentsVoided", None),
    (
        bank,
        "bank.CollectFunds",
        {**ESCROW, "buyer_id": "b-1", "amount_cents": 500},
        "bank.FundsReceived",
        "bank.FundsDeclined",
    ),
    (bank, "bank.ReturnFunds", ESCROW, "bank.FundsReturned", None),
    (
        bank,
        "bank.ReleaseFunds",
        {**ESCROW, "seller_id": "s-1", "amount_cents": 500},
        "bank.FundsReleased",
        None,
    ),
]
IDS = [case[1] for case in CASES]

# The reply bodies of the contract: field name -> type.
REPLY_FIELDS: dict[str, dict[str, type]] = {
    "inventory.StockReserved": {"order_id": str, "reservation_id": str},
    "inventory.OutOfStock": {"order_id": str, "sku": str},
    "inventory.StockReleased": {"order_id": str},
    "payment.PaymentCharged": {"order_id": str, "charge_id": str},
    "payment.PaymentDeclined": {"order_id": str, "reason": str},
    "payment.PaymentRefunded": {"order_id": str},
    "shipping.OrderShipped": {"order_id": str, "tracking_id": str},
    "shipping.ShipmentFailed": {"order_id": str, "reason": str},
    "buyer.BuyerSigned": {"escrow_id": str},
    "buyer.BuyerRefused": {"escrow_id": str, "reason": str},
    "seller.SellerSigned": {"escrow_id": str},
    "seller.DocumentsVoided": {"escrow_id": str},
    "bank.FundsReceived": {"escrow_id": str},
    "bank.FundsDeclined": {"escrow_id": str, "reason": str},
    "bank.FundsReturned": {"escrow_id": str},
    "bank.FundsReleased": {"escrow_id": str},
}


def _fits(reply_type: str, body: dict[str, object]) -> bool:
    fields = REPLY_FIELDS[reply_type]
    return set(body) == set(fields) and all(isinstance(body[k], t) for k, t in fields.items())


@pytest.mark.parametrize(("module", "command_type", "body", "success", "failure"), CASES, ids=IDS)
def test_success_reply_fits_the_contract(
    module: Any, command_type: str, body: dict[str, Any], success: str, failure: str | None
) -> None:
    reply_type, reply_body = module.handle(command_type, body, NONE)
    assert reply_type == success
    assert _fits(reply_type, reply_body)
    key = body.get("order_id", body.get("escrow_id"))
    assert key in (reply_body.get("order_id"), reply_body.get("escrow_id"))


@pytest.mark.parametrize(("module", "command_type", "body", "success", "failure"), CASES, ids=IDS)
def test_fail_rate_one_gives_the_failure_reply_where_there_is_one(
    module: Any, command_type: str, body: dict[str, Any], success: str, failure: str | None
) -> None:
    reply_type, reply_body = module.handle(command_type, body, ALWAYS)
    # Compensations and the seller have no failure reply: they must always succeed.
    assert reply_type == (failure or success)
    assert _fits(reply_type, reply_body)


@pytest.mark.parametrize(("module", "command_type", "body", "success", "failure"), CASES, ids=IDS)
def test_a_missing_field_is_an_invalid_command(
    module: Any, command_type: str, body: dict[str, Any], success: str, failure: str | None
) -> None:
    for field in body:
        partial = {k: v for k, v in body.items() if k != field}
        with pytest.raises(InvalidCommand, match=field):
            module.handle(command_type, partial, NONE)


@pytest.mark.parametrize("module", [inventory, payment, shipping, buyer, seller, bank])
def test_a_type_of_another_service_is_an_invalid_command(module: Any) -> None:
    with pytest.raises(InvalidCommand, match="does not handle"):
        module.handle("orders.OrderPlaced", {"order_id": "o-1"}, NONE)


@pytest.mark.parametrize(
    ("command_type", "body", "problem"),
    [
        ("inventory.ReserveStock", {"order_id": 1, "lines": LINES}, "order_id"),
        ("inventory.ReserveStock", {"order_id": "o", "lines": "APPLE"}, "lines"),
        ("inventory.ReserveStock", {"order_id": "o", "lines": ["APPLE"]}, r"lines\[0\]"),
        ("inventory.ReserveStock", {"order_id": "o", "lines": [{"sku": "A", "quantity": "2"}]}, "quantity"),
        ("inventory.ReserveStock", {"order_id": "o", "lines": [{"sku": "A", "quantity": True}]}, "quantity"),
        ("inventory.ReserveStock", {"order_id": "o", "lines": [{"quantity": 1}]}, "sku"),
    ],
)
def test_wrong_field_types_are_invalid_commands(
    command_type: str, body: dict[str, Any], problem: str
) -> None:
    with pytest.raises(InvalidCommand, match=problem):
        inventory.handle(command_type, body, NONE)


def test_payment_rejects_a_fractional_or_boolean_amount() -> None:
    for amount in (12.5, True, "1200", None):
        body = {"order_id": "o", "customer_id": "c", "amount_cents": amount}
        with pytest.raises(InvalidCommand, match="amount_cents"):
            payment.handle("payment.ChargePayment", body, NONE)


def test_out_of_stock_names_the_first_missing_sku() -> None:
    options = Options(out_of_stock=frozenset({"PEAR", "PLUM"}))
    lines = [*LINES, {"sku": "PLUM", "quantity": 1}]
    assert inventory.handle("inventory.ReserveStock", {"order_id": "o", "lines": lines}, options) == (
        "inventory.OutOfStock",
        {"order_id": "o", "sku": "PEAR"},
    )
    assert inventory.handle("inventory.ReserveStock", {"order_id": "o", "lines": LINES[:1]}, options)[0] == (
        "inventory.StockReserved"
    )


@pytest.mark.parametrize(
    ("amount", "reply_type"),
    [(999, "payment.PaymentCharged"), (1000, "payment.PaymentCharged"), (1001, "payment.PaymentDeclined")],
)
def test_decline_over_is_strictly_above(amount: int, reply_type: str) -> None:
    body = {"order_id": "o", "customer_id": "c", "amount_cents": amount}
    assert payment.handle("payment.ChargePayment", body, Options(decline_over=1000))[0] == reply_type


@pytest.mark.parametrize(
    ("amount", "reply_type"),
    [(999, "buyer.BuyerSigned"), (1000, "buyer.BuyerSigned"), (1001, "buyer.BuyerRefused")],
)
def test_refuse_over_compares_the_commands_amount_strictly(amount: int, reply_type: str) -> None:
    body = {"escrow_id": "e", "amount_cents": amount}
    reply = buyer.handle("buyer.RequestSignature", body, Options(refuse_over=1000))
    assert reply[0] == reply_type
    assert _fits(*reply)


def test_buyer_rejects_a_missing_fractional_or_boolean_amount() -> None:
    for amount in (12.5, True, "1200", None):
        body = {"escrow_id": "e", "amount_cents": amount}
        with pytest.raises(InvalidCommand, match="amount_cents"):
            buyer.handle("buyer.RequestSignature", body, Options(refuse_over=1000))
    with pytest.raises(InvalidCommand, match="amount_cents"):
        buyer.handle("buyer.RequestSignature", {"escrow_id": "e"}, NONE)


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
    first = payment.handle(
        "payment.ChargePayment", {"order_id": "o", "customer_id": "c", "amount_cents": 1}, NONE
    )
    again = payment.handle(
        "payment.ChargePayment", {"order_id": "o", "customer_id": "c", "amount_cents": 1}, NONE
    )
    assert first == again


def test_unknown_fields_are_ignored() -> None:
    body = {"escrow_id": "e", "note": "from a newer orchestrator"}
    assert seller.handle("seller.RequestSignature", body, NONE) == ("seller.SellerSigned", {"escrow_id": "e"})


def test_every_service_is_registered_under_its_own_name() -> None:
    assert sorted(SERVICES) == ["bank", "buyer", "inventory", "payment", "seller", "shipping"]
    for name, service in SERVICES.items():
        assert service.name == name
        assert all(command.startswith(f"{name}.") for command in service.commands)


# Settings: option, then environment, then default.


def test_defaults() -> None:
    service, settings, options = parse_args(["inventory"], {})
    assert service.name == "inventory"
    assert settings.amqp_url == DEFAULT_AMQP_URL
    assert settings.namespace == "saga"
    assert settings.prefetch == 100
    assert settings.delay == 0.0
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
    }
    _, settings, options = parse_args(["inventory"], environ)
    assert settings.shutdown_grace == 2.5
    assert (settings.amqp_url, settings.namespace) == ("amqp://u:p@rabbit:5672/v", "ns1")
    assert settings.never_answer is True
    assert settings.delay == 0.5
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
    assert settings.delay == 0.0
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
        (["bank", "--prefetch", "0"], {}),
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


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:******@127.0.0.1:5672/"),
        ("amqps://u:p%40ss@rabbit/vhost", "amqps://u:******@rabbit/vhost"),
        ("amqp://rabbit:5672/", "amqp://rabbit:5672/"),
        ("amqp://user@rabbit/", "amqp://user@rabbit/"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked
