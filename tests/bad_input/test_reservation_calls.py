"""Bad input to Reserve, Confirm and Cancel: precise status, actionable message, nothing changed."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_testing.bad_calls import (
    FAILED,
    ID_129,
    INVALID,
    NOT_FOUND,
    World,
    balances,
    create,
    line,
    refund,
    rejected,
    unchanged,
)
from quota_testing.inprocess import ServedAgent
from quota_testing.support import order, promotion, reject_reason
from region_agent.v1 import region_agent_pb2 as agent_pb
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc


def reserve(
    order_key: str = "r-1", *lines: agent_pb.Line, ttl_ms: int = 0, region: str = "eu"
) -> agent_pb.ReserveRequest:
    return agent_pb.ReserveRequest(order_key=order_key, region=region, lines=list(lines), ttl_ms=ttl_ms)


def settle_request(order_key: str) -> agent_pb.SettleRequest:
    return agent_pb.SettleRequest(order_key=order_key)


def orders_of(world: World) -> agent_grpc.RegionAgentAsyncStub:
    assert world.orders is not None
    return world.orders


BAD_RESERVATIONS = [
    pytest.param(reserve("", line()), ["order_key", "is required"], id="order-key-empty"),
    pytest.param(reserve(ID_129, line()), ["order_key", "129 bytes"], id="order-key-129-bytes"),
    pytest.param(reserve("r-1", line(), region="us"), ["'us'", "'eu'"], id="region-of-another-agent"),
    pytest.param(reserve("r-1"), ["at least one line"], id="no-lines"),
    pytest.param(reserve("r-1", line(amount=0)), ["lines.amount", "0"], id="amount-zero"),
    pytest.param(reserve("r-1", line(), line()), ["'promo'", "twice"], id="promotion-twice"),
    pytest.param(reserve("r-1", line(discount=5)), ["discount of 5", "no unit_price"], id="discount-without-price"),
    pytest.param(
        reserve("r-1", line(unit_price=5, discount=6)), ["discount of 6", "at most the unit price"], id="discount-above"
    ),
    pytest.param(reserve("r-1", line(), ttl_ms=-1), ["ttl_ms", "-1", "24 h"], id="ttl-negative"),
    pytest.param(reserve("r-1", line(), ttl_ms=999), ["ttl_ms", "999", "1 s"], id="ttl-below-a-second"),
    pytest.param(reserve("r-1", line(), ttl_ms=86_400_001), ["ttl_ms", "86400001"], id="ttl-above-a-day"),
]


@pytest.mark.parametrize(("request_", "fragments"), BAD_RESERVATIONS)
async def test_reserve_rejects_a_bad_request(
    spent: World, request_: agent_pb.ReserveRequest, fragments: list[str]
) -> None:
    async with unchanged(spent):
        await rejected(orders_of(spent).Reserve(request_, timeout=5), INVALID, *fragments)


async def test_reserve_of_an_unknown_promotion_is_not_found(spent: World) -> None:
    async with unchanged(spent):
        await rejected(orders_of(spent).Reserve(reserve("r-1", line("ghost")), timeout=5), NOT_FOUND, "'ghost'")


async def test_reserve_of_a_frozen_promotion_is_refused_with_its_reason(spent: World) -> None:
    await create(spent.admin, promotion("cold"))
    await spent.admin.SetFrozen(center_pb.SetFrozenRequest(promotion_id="cold", frozen=True), timeout=5)

    error = await rejected(orders_of(spent).Reserve(reserve("r-1", line("cold")), timeout=5), FAILED, "frozen")

    assert reject_reason(error) == "REJECT_REASON_FROZEN"


@pytest.mark.parametrize("call", ["Confirm", "Cancel"])
@pytest.mark.parametrize(
    ("order_key", "code", "fragments"),
    [
        pytest.param("", INVALID, ["order_key", "is required"], id="empty"),
        pytest.param(ID_129, INVALID, ["order_key", "129 bytes"], id="129-bytes"),
        pytest.param("nope", NOT_FOUND, ["'nope'"], id="unknown"),
        pytest.param("o-1", FAILED, ["'o-1'", "deducted, not reserved", "refund it instead"], id="a-deduction"),
    ],
)
async def test_settling_what_is_no_reservation_fails(
    spent: World, call: str, order_key: str, code: grpc.StatusCode, fragments: list[str]
) -> None:
    method = getattr(orders_of(spent), call)
    async with unchanged(spent):
        await rejected(method(settle_request(order_key), timeout=5), code, *fragments)


async def test_an_order_key_serves_one_kind_of_call(spent: World) -> None:
    orders = orders_of(spent)
    await orders.Reserve(reserve("r-1", line()), timeout=5)

    async with unchanged(spent):
        await rejected(orders.Reserve(reserve("o-1", line("promo", 2), line("other", 2))), FAILED, "deducted already")
        await rejected(orders.Deduct(order("r-1", "eu", ("promo", 1)), timeout=5), FAILED, "was used for a reservation")
        await rejected(orders.Refund(refund("r-1"), timeout=5), FAILED, "not confirmed", "cancel")


async def test_confirm_after_the_deadline_says_the_reservation_expired(spent: World) -> None:
    orders = orders_of(spent)
    reserved = await orders.Reserve(reserve("r-1", line(amount=5), ttl_ms=1_000), timeout=5)
    await asyncio.sleep(1.3)

    error = await rejected(
        orders.Confirm(settle_request("r-1"), timeout=5), FAILED, "'r-1'", "expired", "new order key"
    )

    assert reject_reason(error) == "REJECT_REASON_RESERVATION_EXPIRED"
    assert reserved.expires_at_ms > 0
    cancelled = await orders.Cancel(settle_request("r-1"), timeout=5)
    assert (cancelled.expired, cancelled.replayed) == (True, False)
    held = {b.promotion_id: b.held for b in (await orders.GetStatus(agent_pb.GetStatusRequest(), timeout=5)).balances}
    assert held["promo"] == 0


async def test_cancel_after_confirm_and_confirm_after_cancel_fail(spent: World) -> None:
    orders = orders_of(spent)
    await orders.Reserve(reserve("r-1", line()), timeout=5)
    await orders.Reserve(reserve("r-2", line()), timeout=5)
    await orders.Confirm(settle_request("r-1"), timeout=5)
    await orders.Cancel(settle_request("r-2"), timeout=5)

    before = await balances(orders)
    await rejected(orders.Cancel(settle_request("r-1"), timeout=5), FAILED, "'r-1'", "confirmed", "refund it instead")
    await rejected(orders.Confirm(settle_request("r-2"), timeout=5), FAILED, "'r-2'", "cancelled", "new order key")
    assert await balances(orders) == before


async def test_a_reservation_made_before_a_freeze_can_still_be_confirmed(spent: World, agent_eu: ServedAgent) -> None:
    orders = orders_of(spent)
    await orders.Reserve(reserve("r-1", line(amount=3)), timeout=5)
    await spent.admin.SetFrozen(center_pb.SetFrozenRequest(promotion_id="promo", frozen=True), timeout=5)
    await agent_eu.agent.renew_once()
    await rejected(orders.Reserve(reserve("r-2", line()), timeout=5), FAILED, "frozen")

    confirmed = await orders.Confirm(settle_request("r-1"), timeout=5)

    assert [(x.promotion_id, x.amount) for x in confirmed.lines] == [("promo", 3)]
