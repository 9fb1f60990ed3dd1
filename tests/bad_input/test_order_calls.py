"""Bad input to Deduct and Refund: precise status, actionable message, nothing changed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeAlias

import pytest

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_testing.bad_calls import (
    FAILED,
    ID_128,
    ID_129,
    INVALID,
    MAX_AMOUNT,
    NOT_FOUND,
    TOO_BIG,
    World,
    balances,
    create,
    deduct,
    line,
    refund,
    rejected,
    unchanged,
)
from quota_testing.support import HOUR_MS, now_ms, order, promotion, reject_reason
from region_agent.v1 import region_agent_pb2 as agent_pb

# Deduct: the request itself


def _lines(count: int) -> list[agent_pb.Line]:
    return [line(f"p-{i}") for i in range(count)]


BAD_ORDERS = [
    pytest.param(deduct("", "eu", line()), ["order_key", "is required"], id="order-key-empty"),
    pytest.param(deduct(ID_129, "eu", line()), ["order_key", "129 bytes"], id="order-key-129-bytes"),
    pytest.param(deduct("o-2", "", line()), ["region", "is required"], id="region-empty"),
    pytest.param(deduct("o-2", "us", line()), ["'us'", "'eu'"], id="region-of-another-agent"),
    pytest.param(deduct("o-2", "eu"), ["at least one line"], id="no-lines"),
    pytest.param(deduct("o-2", "eu", *_lines(65)), ["64", "65"], id="65-lines"),
    pytest.param(deduct("o-2", "eu", line(), line("other"), line()), ["'promo'", "twice"], id="promotion-twice"),
    pytest.param(deduct("o-2", "eu", line(""), line()), ["lines.promotion_id", "is required"], id="promo-id-empty"),
    pytest.param(deduct("o-2", "eu", line(ID_129)), ["lines.promotion_id", "129 bytes"], id="promo-id-129-bytes"),
    pytest.param(deduct("o-2", "eu", line(user_id="")), ["lines.user_id", "is required"], id="user-id-empty"),
    pytest.param(deduct("o-2", "eu", line(user_id=ID_129)), ["lines.user_id", "129 bytes"], id="user-id-129-bytes"),
    pytest.param(deduct("o-2", "eu", line(amount=0)), ["lines.amount", "0"], id="amount-zero"),
    pytest.param(deduct("o-2", "eu", line(amount=-3)), ["lines.amount", "-3"], id="amount-negative"),
    pytest.param(deduct("o-2", "eu", line(amount=TOO_BIG)), ["lines.amount", str(TOO_BIG)], id="amount-2**53"),
    pytest.param(
        deduct("o-2", "eu", line(amount=2**52), line("other", 2**52)),
        ["lines.amount", str(2**53), str(MAX_AMOUNT)],
        id="total-2**53",
    ),
    pytest.param(
        deduct("o-2", "eu", line(amount=MAX_AMOUNT), line("other", 1)),
        ["lines.amount", str(MAX_AMOUNT)],
        id="total-max-plus-1",
    ),
    pytest.param(
        deduct("o-2", "eu", line(amount=1), line("other", 0)), ["lines.amount", "0"], id="second-line-amount-zero"
    ),
    pytest.param(deduct("o-2", "eu", line(unit_price=-1)), ["lines.unit_price", "-1"], id="unit-price-negative"),
    pytest.param(
        deduct("o-2", "eu", line(unit_price=TOO_BIG)), ["lines.unit_price", str(TOO_BIG)], id="unit-price-2**53"
    ),
    pytest.param(
        deduct("o-2", "eu", line(unit_price=100, discount=-1)), ["lines.discount", "-1"], id="discount-negative"
    ),
    pytest.param(
        deduct("o-2", "eu", line(discount=9_990)),
        ["'promo'", "discount of 9990", "no unit_price", "or neither"],
        id="discount-without-unit-price",
    ),
    pytest.param(
        deduct("o-2", "eu", line(unit_price=MAX_AMOUNT, discount=TOO_BIG)),
        ["'promo'", f"discount of {TOO_BIG}", f"unit_price of {MAX_AMOUNT}", "at most the unit price"],
        id="discount-above-unit-price",
    ),
]


@pytest.mark.parametrize(("request_", "fragments"), BAD_ORDERS)
async def test_deduct_rejects_a_bad_order(spent: World, request_: agent_pb.DeductRequest, fragments: list[str]) -> None:
    assert spent.orders is not None
    async with unchanged(spent):
        await rejected(spent.orders.Deduct(request_, timeout=5), INVALID, *fragments)


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(deduct("o-2", "eu", line("ghost")), id="alone"),
        pytest.param(deduct("o-2", "eu", line(), line("ghost")), id="after-a-known-one"),
    ],
)
async def test_deduct_of_an_unknown_promotion_is_not_found(spent: World, request_: agent_pb.DeductRequest) -> None:
    assert spent.orders is not None
    async with unchanged(spent):
        await rejected(spent.orders.Deduct(request_, timeout=5), NOT_FOUND, "'ghost'")


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(order("o-1", "eu", ("promo", 3), ("other", 2)), id="other-amount"),
        pytest.param(order("o-1", "eu", ("promo", 2)), id="fewer-lines"),
        pytest.param(order("o-1", "eu", ("promo", 2), ("other", 2), user_id="user-2"), id="other-user"),
        pytest.param(
            deduct("o-1", "eu", line(amount=2, unit_price=99_900, discount=9_990), line("other", 2)),
            id="prices-stated-in-the-retry",
        ),
    ],
)
async def test_deduct_reusing_an_order_key_with_other_lines_fails(
    spent: World, request_: agent_pb.DeductRequest
) -> None:
    assert spent.orders is not None
    async with unchanged(spent):
        await rejected(spent.orders.Deduct(request_, timeout=5), FAILED, "'o-1'", "different lines")

    replay = await spent.orders.Deduct(order("o-1", "eu", ("promo", 2), ("other", 2)), timeout=5)
    assert replay.replayed
    assert [(x.promotion_id, x.amount) for x in replay.lines] == [("promo", 2), ("other", 2)]


async def test_deduct_accepts_128_byte_ids(spent: World) -> None:
    assert spent.orders is not None
    await create(spent.admin, promotion(ID_128, budget=1_000))

    answer = await spent.orders.Deduct(deduct(ID_128, "eu", line(ID_128, 1, "u" * 128)), timeout=5)

    assert (answer.order_key, answer.replayed) == (ID_128, False)
    assert [(x.promotion_id, x.amount, x.user_id) for x in answer.lines] == [(ID_128, 1, "u" * 128)]
    deducted = {b[0]: b[4] for b in await balances(spent.orders)}
    assert deducted[ID_128] == 1


async def test_deduct_accepts_64_lines(fresh_agent: World) -> None:
    assert fresh_agent.orders is not None
    for i in range(64):
        await create(fresh_agent.admin, promotion(f"p-{i}", budget=100))

    answer = await fresh_agent.orders.Deduct(deduct("o-64", "eu", *_lines(64)), timeout=5)

    assert len(answer.lines) == 64
    assert sum(b[4] for b in await balances(fresh_agent.orders)) == 64


# Deduct: a valid order the promotion refuses


async def _not_started(admin: center_grpc.PromotionAdminAsyncStub) -> None:
    await create(admin, promotion("refused", start_ms=now_ms() + HOUR_MS, end_ms=now_ms() + 2 * HOUR_MS))


async def _ended(admin: center_grpc.PromotionAdminAsyncStub) -> None:
    await create(admin, promotion("refused", start_ms=now_ms() - 2 * HOUR_MS, end_ms=now_ms() + HOUR_MS))
    await admin.EndPromotion(center_pb.EndPromotionRequest(promotion_id="refused"), timeout=5)


async def _us_only(admin: center_grpc.PromotionAdminAsyncStub) -> None:
    await create(admin, promotion("refused", regions=("us",)))


async def _frozen(admin: center_grpc.PromotionAdminAsyncStub) -> None:
    await create(admin, promotion("refused"))
    await admin.SetFrozen(center_pb.SetFrozenRequest(promotion_id="refused", frozen=True), timeout=5)


REFUSALS = [
    pytest.param(_not_started, "REJECT_REASON_NOT_ACTIVE", ["refused", "runs from"], id="not-started"),
    pytest.param(_ended, "REJECT_REASON_NOT_ACTIVE", ["refused", "runs from"], id="ended"),
    pytest.param(_us_only, "REJECT_REASON_REGION_NOT_ALLOWED", ["refused", "region eu", "us"], id="region"),
    pytest.param(_frozen, "REJECT_REASON_FROZEN", ["refused", "frozen"], id="frozen"),
]

Setup: TypeAlias = "Callable[[center_grpc.PromotionAdminAsyncStub], Awaitable[None]]"


@pytest.mark.parametrize(("setup", "reason", "fragments"), REFUSALS)
async def test_deduct_refused_by_the_promotion_grants_and_deducts_nothing(
    fresh_agent: World, setup: Setup, reason: str, fragments: list[str]
) -> None:
    assert fresh_agent.orders is not None
    await setup(fresh_agent.admin)

    async with unchanged(fresh_agent):
        error = await rejected(fresh_agent.orders.Deduct(order("o-1", "eu", ("refused", 1)), timeout=5), FAILED)

    assert reject_reason(error) == reason
    for fragment in fragments:
        assert fragment in (error.details() or "")
    usage = await fresh_agent.admin.GetUsage(center_pb.GetUsageRequest(promotion_id="refused"), timeout=5)
    assert usage.unallocated == 1_000
    assert all(region.granted == region.consumed == 0 for region in usage.regions)
    assert await balances(fresh_agent.orders) == []


@pytest.mark.parametrize(("setup", "reason", "fragments"), REFUSALS)
async def test_deduct_refused_for_one_line_deducts_no_line(
    spent: World, setup: Setup, reason: str, fragments: list[str]
) -> None:
    assert spent.orders is not None
    await setup(spent.admin)

    async with unchanged(spent):
        error = await rejected(
            spent.orders.Deduct(order("o-2", "eu", ("promo", 1), ("refused", 1)), timeout=5), FAILED, *fragments
        )

    assert reject_reason(error) == reason


# Refund


BAD_REFUNDS = [
    pytest.param(refund("", "", ("promo", 1)), ["order_key", "is required"], id="order-key-empty"),
    pytest.param(refund(ID_129, "", ("promo", 1)), ["order_key", "129 bytes"], id="order-key-129-bytes"),
    pytest.param(refund("o-1", ID_129, ("promo", 1)), ["refund_id", "129 bytes"], id="refund-id-129-bytes"),
    pytest.param(refund("o-1", "r-1", ("promo", 0)), ["lines.amount", "0"], id="amount-zero"),
    pytest.param(refund("o-1", "r-1", ("promo", -1)), ["lines.amount", "-1"], id="amount-negative"),
    pytest.param(refund("o-1", "r-1", ("promo", TOO_BIG)), ["lines.amount", str(TOO_BIG)], id="amount-2**53"),
    pytest.param(refund("o-1", "r-1", ("", 1)), ["lines.promotion_id", "is required"], id="promo-id-empty"),
    pytest.param(refund("o-1", "r-1", (ID_129, 1)), ["lines.promotion_id", "129 bytes"], id="promo-id-129-bytes"),
    pytest.param(refund("o-1", "r-1", ("promo", 1), ("promo", 1)), ["'promo'", "twice"], id="promotion-twice"),
    pytest.param(refund("o-1", "r-1", *[(f"p-{i}", 1) for i in range(65)]), ["64", "65"], id="65-lines"),
    pytest.param(refund("o-1", "r-1", ("ghost", 1)), ["'o-1'", "'ghost'"], id="promotion-not-in-order"),
    pytest.param(
        refund("o-1", "r-1", ("promo", 1), ("ghost", 1)), ["'o-1'", "'ghost'"], id="one-promotion-not-in-order"
    ),
]


@pytest.mark.parametrize(("request_", "fragments"), BAD_REFUNDS)
async def test_refund_rejects_a_bad_request(
    spent: World, request_: agent_pb.RefundRequest, fragments: list[str]
) -> None:
    assert spent.orders is not None
    async with unchanged(spent):
        await rejected(spent.orders.Refund(request_, timeout=5), INVALID, *fragments)


async def test_refund_of_an_unknown_order_is_not_found(spent: World) -> None:
    assert spent.orders is not None
    async with unchanged(spent):
        await rejected(spent.orders.Refund(refund("nope", "", ("promo", 1)), timeout=5), NOT_FOUND, "'nope'")


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(refund("o-1", "r-1", ("promo", 3)), id="one-line"),
        pytest.param(refund("o-1", "r-1", ("other", 1), ("promo", 3)), id="after-a-good-line"),
    ],
)
async def test_refund_of_more_than_the_order_deducted_fails(spent: World, request_: agent_pb.RefundRequest) -> None:
    assert spent.orders is not None
    async with unchanged(spent):
        await rejected(spent.orders.Refund(request_, timeout=5), FAILED, "'promo'", "spent 2", "at most 2", "not 3")


async def test_refund_of_more_than_is_left_after_a_partial_refund_fails(spent: World) -> None:
    assert spent.orders is not None
    await spent.orders.Refund(refund("o-1", "r-1", ("promo", 1)), timeout=5)

    async with unchanged(spent):
        await rejected(
            spent.orders.Refund(refund("o-1", "r-2", ("promo", 2)), timeout=5),
            FAILED,
            "1 is already refunded",
            "at most 1",
        )


async def test_refund_accepts_a_128_byte_refund_id(spent: World) -> None:
    assert spent.orders is not None

    answer = await spent.orders.Refund(refund("o-1", ID_128, ("promo", 1)), timeout=5)

    assert [(x.promotion_id, x.amount) for x in answer.lines] == [("promo", 1)]
    refunded = {b[0]: b[5] for b in await balances(spent.orders)}
    assert refunded == {"promo": 1, "other": 0}
