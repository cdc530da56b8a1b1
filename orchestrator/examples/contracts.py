"""The messages of the bundled examples, one class per wire type (see docs/protocol.md)."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator import Command, Event


@dataclass(frozen=True)
class Line:
    sku: str
    quantity: int


# orders ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OrderPlaced(Event):
    TYPE = "orders.OrderPlaced"
    order_id: str
    customer_id: str
    lines: list[Line]
    amount_cents: int


# inventory ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReserveStock(Command):
    TYPE = "inventory.ReserveStock"
    order_id: str
    lines: list[Line]


@dataclass(frozen=True)
class StockReserved(Event):
    TYPE = "inventory.StockReserved"
    order_id: str
    reservation_id: str


@dataclass(frozen=True)
class OutOfStock(Event):
    TYPE = "inventory.OutOfStock"
    order_id: str
    sku: str


@dataclass(frozen=True)
class ReleaseStock(Command):
    TYPE = "inventory.ReleaseStock"
    order_id: str


@dataclass(frozen=True)
class StockReleased(Event):
    TYPE = "inventory.StockReleased"
    order_id: str


# payment -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChargePayment(Command):
    TYPE = "payment.ChargePayment"
    order_id: str
    customer_id: str
    amount_cents: int


@dataclass(frozen=True)
class PaymentCharged(Event):
    TYPE = "payment.PaymentCharged"
    order_id: str
    charge_id: str


@dataclass(frozen=True)
class PaymentDeclined(Event):
    TYPE = "payment.PaymentDeclined"
    order_id: str
    reason: str


@dataclass(frozen=True)
class RefundPayment(Command):
    TYPE = "payment.RefundPayment"
    order_id: str


@dataclass(frozen=True)
class PaymentRefunded(Event):
    TYPE = "payment.PaymentRefunded"
    order_id: str


# shipping ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShipOrder(Command):
    TYPE = "shipping.ShipOrder"
    order_id: str
    lines: list[Line]


@dataclass(frozen=True)
class OrderShipped(Event):
    TYPE = "shipping.OrderShipped"
    order_id: str
    tracking_id: str


@dataclass(frozen=True)
class ShipmentFailed(Event):
    TYPE = "shipping.ShipmentFailed"
    order_id: str
    reason: str


# escrow ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EscrowOpened(Event):
    TYPE = "escrow.EscrowOpened"
    escrow_id: str
    buyer_id: str
    seller_id: str
    amount_cents: int


@dataclass(frozen=True)
class RequestBuyerSignature(Command):
    TYPE = "buyer.RequestSignature"
    escrow_id: str
    amount_cents: int


@dataclass(frozen=True)
class BuyerSigned(Event):
    TYPE = "buyer.BuyerSigned"
    escrow_id: str


@dataclass(frozen=True)
class BuyerRefused(Event):
    TYPE = "buyer.BuyerRefused"
    escrow_id: str
    reason: str


@dataclass(frozen=True)
class RequestSellerSignature(Command):
    TYPE = "seller.RequestSignature"
    escrow_id: str


@dataclass(frozen=True)
class SellerSigned(Event):
    TYPE = "seller.SellerSigned"
    escrow_id: str


@dataclass(frozen=True)
class VoidDocuments(Command):
    TYPE = "seller.VoidDocuments"
    escrow_id: str


@dataclass(frozen=True)
class DocumentsVoided(Event):
    TYPE = "seller.DocumentsVoided"
    escrow_id: str


@dataclass(frozen=True)
class CollectFunds(Command):
    TYPE = "bank.CollectFunds"
    escrow_id: str
    buyer_id: str
    amount_cents: int


@dataclass(frozen=True)
class FundsReceived(Event):
    TYPE = "bank.FundsReceived"
    escrow_id: str


@dataclass(frozen=True)
class FundsDeclined(Event):
    TYPE = "bank.FundsDeclined"
    escrow_id: str
    reason: str


@dataclass(frozen=True)
class ReturnFunds(Command):
    TYPE = "bank.ReturnFunds"
    escrow_id: str


@dataclass(frozen=True)
class FundsReturned(Event):
    TYPE = "bank.FundsReturned"
    escrow_id: str


@dataclass(frozen=True)
class ReleaseFunds(Command):
    TYPE = "bank.ReleaseFunds"
    escrow_id: str
    seller_id: str
    amount_cents: int
