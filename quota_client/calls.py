"""Each call of the RegionAgent API as data: the method, its request, how its answer reads. Protobuf stops
here: the clients send `Call.request` and hand what comes back to `Call.answer`. The order key is checked
here (it is what makes a retry safe), the rest by the agent, which answers InvalidRequest."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from quota_client.errors import InvalidRequest
from quota_client.model import (
    Balance,
    Cancelled,
    CenterGroup,
    Confirmed,
    Deducted,
    Line,
    OrderState,
    OrderStatus,
    Refunded,
    RefundLine,
    RegionStatus,
    Reserved,
)
from region_agent.v1 import region_agent_pb2 as pb

R = TypeVar("R")
T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[R]):
    method: str
    """The RegionAgent method, as the generated stub names it."""
    request: Message
    answer: Callable[[Any], R]
    """The typed result of the method's response message."""
    promotions: tuple[str, ...] = ()
    """The order's promotions, to name the refused one when an older agent does not."""
    writes: bool = True
    """False for a read (GetOrder, GetStatus): unanswered, it still changed nothing."""


def deduct(order_key: str, region: str, lines: Sequence[Line]) -> Call[Deducted]:
    request = pb.DeductRequest(order_key=_key(order_key), region=region, lines=_lines_pb(lines))
    return Call("Deduct", request, _deducted, _promotions(lines))


def reserve(order_key: str, region: str, lines: Sequence[Line], ttl_s: float) -> Call[Reserved]:
    if ttl_s < 0:
        raise InvalidRequest(f"a reservation's ttl is 1 s .. 24 h, or 0 for the agent's default; got {ttl_s} s")
    request = pb.ReserveRequest(
        order_key=_key(order_key), region=region, lines=_lines_pb(lines), ttl_ms=round(ttl_s * 1000)
    )
    return Call("Reserve", request, _reserved, _promotions(lines))


def confirm(order_key: str) -> Call[Confirmed]:
    return Call("Confirm", pb.SettleRequest(order_key=_key(order_key)), _confirmed)


def cancel(order_key: str) -> Call[Cancelled]:
    return Call("Cancel", pb.SettleRequest(order_key=_key(order_key)), _cancelled)


def refund(order_key: str, refund_id: str | None, lines: Sequence[RefundLine] | None) -> Call[Refunded]:
    if refund_id == "":
        raise InvalidRequest("refund_id is empty: give None for one refund per order, or an id per partial refund")
    request = pb.RefundRequest(
        order_key=_key(order_key),
        refund_id=refund_id or "",
        lines=_sendable(
            lambda: [pb.RefundLine(promotion_id=line.promotion_id, amount=line.amount) for line in lines or ()]
        ),
    )
    return Call("Refund", request, _refunded, _promotions(lines or ()))


def get_order(order_key: str) -> Call[OrderState]:
    return Call("GetOrder", pb.GetOrderRequest(order_key=_key(order_key)), _order_state, writes=False)


def status() -> Call[RegionStatus]:
    return Call("GetStatus", pb.GetStatusRequest(), _region_status, writes=False)


def _key(order_key: str) -> str:
    if not order_key:
        raise InvalidRequest(
            "order_key is required: the order's own id, the same on every retry, so a retry never spends twice"
        )
    if not isinstance(order_key, str):
        raise InvalidRequest(f"order_key must be a string, got {type(order_key).__name__}")
    return order_key


def _promotions(lines: Iterable[Line | RefundLine]) -> tuple[str, ...]:
    return tuple(line.promotion_id for line in lines)


def _lines_pb(lines: Sequence[Line]) -> list[pb.Line]:
    if not lines:
        raise InvalidRequest("an order needs at least one line")
    return _sendable(
        lambda: [
            pb.Line(
                promotion_id=line.promotion_id,
                amount=line.amount,
                user_id=line.user_id,
                unit_price=line.unit_price,
                discount=line.discount,
            )
            for line in lines
        ]
    )


def _sendable(build: Callable[[], T]) -> T:
    """What `build` makes of the caller's lines, or InvalidRequest where protobuf cannot carry a field."""
    try:
        return build()
    except (TypeError, ValueError) as error:  # protobuf's words for a float, a bool or an int beyond int64
        raise InvalidRequest(
            f"a line cannot be sent as it is ({error}): ids are strings, amounts and prices whole numbers of "
            "units (minor units for money)"
        ) from None


def _lines(lines: Iterable[pb.Line]) -> tuple[Line, ...]:
    return tuple(Line(line.promotion_id, line.amount, line.user_id, line.unit_price, line.discount) for line in lines)


def _refund_lines(lines: Iterable[pb.RefundLine]) -> tuple[RefundLine, ...]:
    return tuple(RefundLine(line.promotion_id, line.amount) for line in lines)


def _deducted(answer: pb.DeductResponse) -> Deducted:
    return Deducted(answer.order_key, _lines(answer.lines), answer.replayed)


def _reserved(answer: pb.ReserveResponse) -> Reserved:
    return Reserved(answer.order_key, _lines(answer.lines), answer.replayed, answer.expires_at_ms)


def _confirmed(answer: pb.SettleResponse) -> Confirmed:
    return Confirmed(answer.order_key, _lines(answer.lines), answer.replayed)


def _cancelled(answer: pb.SettleResponse) -> Cancelled:
    return Cancelled(answer.order_key, _lines(answer.lines), answer.replayed, answer.expired)


def _refunded(answer: pb.RefundResponse) -> Refunded:
    return Refunded(answer.order_key, _refund_lines(answer.lines), answer.replayed)


_STATUSES = {
    pb.ORDER_STATUS_UNKNOWN: OrderStatus.UNKNOWN,
    pb.ORDER_STATUS_DEDUCTED: OrderStatus.DEDUCTED,
    pb.ORDER_STATUS_RESERVED: OrderStatus.RESERVED,
    pb.ORDER_STATUS_CONFIRMED: OrderStatus.CONFIRMED,
    pb.ORDER_STATUS_CANCELLED: OrderStatus.CANCELLED,
    pb.ORDER_STATUS_EXPIRED: OrderStatus.EXPIRED,
}


def _order_state(answer: pb.OrderState) -> OrderState:
    return OrderState(
        answer.order_key,
        _STATUSES.get(answer.status, OrderStatus.UNKNOWN),
        _lines(answer.lines),
        answer.reserved_until_ms,
        _refund_lines(answer.refunded),
        answer.ledger_life_started_ms,
        answer.ledger_life_lost,
    )


def _region_status(answer: pb.RegionStatus) -> RegionStatus:
    balances = tuple(
        Balance(
            b.promotion_id,
            b.available,
            b.granted,
            b.returned,
            b.deducted,
            b.refunded,
            b.held,
            b.lease_remaining_ms,
            b.frozen,
            b.below_floor,
        )
        for b in answer.balances
    )
    groups = tuple(
        CenterGroup(
            g.group,
            g.catalog_stream_alive,
            g.catalog_revision,
            g.catalog_staleness_ms if g.HasField("catalog_staleness_ms") else None,
            g.lease_remaining_ms,
            g.renewals_failing_ms,
            g.promotions,
        )
        for g in answer.groups
    )
    return RegionStatus(answer.region, answer.incarnation, balances, answer.center_calls, groups)
