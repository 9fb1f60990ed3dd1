"""The order-service contract against a running agent (in-process center and agent, plaintext): every
refusal read back as gRPC's rich error (google.rpc.ErrorInfo through grpc_status, as any language reads
it), the old `quota-reject-reason` metadata still beside it, and GetOrder answering what became of an
order without changing it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import grpc
import pytest
from google.rpc.error_details_pb2 import ErrorInfo, RetryInfo
from grpc_status import rpc_status

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_testing.inprocess import ServedAgent, ServedCenter, running_agent
from quota_testing.support import HOUR_MS, now_ms, order, promotion, reject_reason
from region_agent.v1 import region_agent_pb2 as agent_pb
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc

TIMEOUT_S = 20
"""Only so that a broken link fails the test instead of hanging it."""
DOMAIN = "quota.region_agent.v1"


async def _refused(call: Awaitable[object]) -> tuple[grpc.aio.AioRpcError, ErrorInfo]:
    """The call's error and its one ErrorInfo."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    status = rpc_status.from_call(caught.value)
    assert status is not None, "the error carries a google.rpc.Status"
    assert status.code == caught.value.code().value[0]
    infos = [detail for detail in status.details if detail.Is(ErrorInfo.DESCRIPTOR)]
    assert len(infos) == 1
    info = ErrorInfo()
    infos[0].Unpack(info)
    assert info.domain == DOMAIN
    return caught.value, info


def _retry_after_ms(error: grpc.aio.AioRpcError) -> int:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(RetryInfo.DESCRIPTOR):
            retry = RetryInfo()
            detail.Unpack(retry)
            return int(retry.retry_delay.ToMilliseconds())
    return 0


async def _frozen(admin: center_grpc.PromotionAdminAsyncStub, orders: agent_grpc.RegionAgentAsyncStub) -> None:
    await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion("refused")), timeout=TIMEOUT_S)
    await admin.SetFrozen(center_pb.SetFrozenRequest(promotion_id="refused", frozen=True), timeout=TIMEOUT_S)


async def _create(admin: center_grpc.PromotionAdminAsyncStub, made: center_pb.Promotion) -> None:
    await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=made), timeout=TIMEOUT_S)


async def _sold_out(admin: center_grpc.PromotionAdminAsyncStub, orders: agent_grpc.RegionAgentAsyncStub) -> None:
    await _create(admin, promotion("refused", budget=1))
    await orders.Deduct(order("sold", "eu", ("refused", 1)), timeout=TIMEOUT_S)


REFUSALS = [
    pytest.param(_frozen, 1, "REJECT_REASON_FROZEN", id="frozen"),
    pytest.param(
        lambda admin, _: _create(
            admin, promotion("refused", start_ms=now_ms() + HOUR_MS, end_ms=now_ms() + 2 * HOUR_MS)
        ),
        1,
        "REJECT_REASON_NOT_ACTIVE",
        id="not-active",
    ),
    pytest.param(
        lambda admin, _: _create(admin, promotion("refused", regions=("us",))),
        1,
        "REJECT_REASON_REGION_NOT_ALLOWED",
        id="region",
    ),
    pytest.param(
        lambda admin, _: _create(admin, promotion("refused", per_user_limit=1)),
        2,
        "REJECT_REASON_USER_LIMIT",
        id="user-limit",
    ),
    pytest.param(_sold_out, 1, "REJECT_REASON_EXHAUSTED", id="exhausted"),
    pytest.param(
        lambda admin, _: _create(admin, promotion("refused", budget=1)),
        2,
        "REJECT_REASON_OVER_ORDER_LIMIT",
        id="over-the-whole-budget",
    ),
]


@pytest.mark.parametrize(("setup", "amount", "reason"), REFUSALS)
async def test_a_refused_line_is_named_in_the_rich_error_and_nothing_applied(
    admin: center_grpc.PromotionAdminAsyncStub,
    orders_eu: agent_grpc.RegionAgentAsyncStub,
    setup: object,
    amount: int,
    reason: str,
) -> None:
    await _create(admin, promotion("fine"))
    assert callable(setup)
    await setup(admin, orders_eu)

    error, info = await _refused(orders_eu.Deduct(order("o-1", "eu", ("fine", 1), ("refused", amount)), timeout=5))

    assert (info.reason, dict(info.metadata)) == (reason, {"may_have_applied": "false", "promotion_id": "refused"})
    assert reject_reason(error) == reason, "the old metadata stays for callers that read it"
    assert _retry_after_ms(error) == 0, "these do not clear by themselves"
    unknown = await orders_eu.GetOrder(agent_pb.GetOrderRequest(order_key="o-1"), timeout=TIMEOUT_S)
    assert unknown.status == agent_pb.ORDER_STATUS_UNKNOWN


async def test_an_unknown_promotion_is_named_in_the_rich_error_and_nothing_applied(
    admin: center_grpc.PromotionAdminAsyncStub, orders_eu: agent_grpc.RegionAgentAsyncStub
) -> None:
    await _create(admin, promotion("fine"))
    for attempt in ("fetched", "remembered"):  # the center asked, then the agent's memory of the answer
        error, info = await _refused(
            orders_eu.Deduct(order(f"o-{attempt}", "eu", ("fine", 1), ("nope", 1)), timeout=TIMEOUT_S)
        )

        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert (info.reason, dict(info.metadata)) == (
            "INVALID_REQUEST",
            {"may_have_applied": "false", "promotion_id": "nope"},
        )
        unknown = await orders_eu.GetOrder(agent_pb.GetOrderRequest(order_key=f"o-{attempt}"), timeout=TIMEOUT_S)
        assert unknown.status == agent_pb.ORDER_STATUS_UNKNOWN


async def test_getorder_answers_each_state_of_an_order(
    admin: center_grpc.PromotionAdminAsyncStub, orders_eu: agent_grpc.RegionAgentAsyncStub
) -> None:
    await _create(admin, promotion("promo"))
    line = [agent_pb.Line(promotion_id="promo", amount=2, user_id="user-1")]
    await orders_eu.Deduct(order("deducted", "eu", ("promo", 2)), timeout=TIMEOUT_S)
    await orders_eu.Refund(agent_pb.RefundRequest(order_key="deducted", lines=[_refund(1)]), timeout=TIMEOUT_S)
    held = await orders_eu.Reserve(agent_pb.ReserveRequest(order_key="held", region="eu", lines=line), timeout=5)
    for key in ("confirmed", "cancelled", "lapsed"):
        ttl_ms = 1_000 if key == "lapsed" else 0
        reserve = agent_pb.ReserveRequest(order_key=key, region="eu", lines=line, ttl_ms=ttl_ms)
        await orders_eu.Reserve(reserve, timeout=TIMEOUT_S)
    await orders_eu.Confirm(agent_pb.SettleRequest(order_key="confirmed"), timeout=TIMEOUT_S)
    await orders_eu.Cancel(agent_pb.SettleRequest(order_key="cancelled"), timeout=TIMEOUT_S)
    await asyncio.sleep(1.2)

    states = {
        key: await orders_eu.GetOrder(agent_pb.GetOrderRequest(order_key=key), timeout=TIMEOUT_S)
        for key in ("deducted", "held", "confirmed", "cancelled", "lapsed", "never")
    }

    assert {key: state.status for key, state in states.items()} == {
        "deducted": agent_pb.ORDER_STATUS_DEDUCTED,
        "held": agent_pb.ORDER_STATUS_RESERVED,
        "confirmed": agent_pb.ORDER_STATUS_CONFIRMED,
        "cancelled": agent_pb.ORDER_STATUS_CANCELLED,
        "lapsed": agent_pb.ORDER_STATUS_EXPIRED,
        "never": agent_pb.ORDER_STATUS_UNKNOWN,
    }
    assert [(x.promotion_id, x.amount) for x in states["deducted"].lines] == [("promo", 2)]
    assert list(states["deducted"].refunded) == [_refund(1)]
    assert states["held"].reserved_until_ms == held.expires_at_ms
    assert not states["never"].lines
    # An in-process ledger began with this agent, the region's first life at the center: it says when, and that
    # no earlier life was lost (tests/unit/test_ledger_lives.py restarts one).
    started_ms = states["never"].ledger_life_started_ms
    assert 0 < started_ms <= now_ms()
    assert all(not state.ledger_life_lost and state.ledger_life_started_ms == started_ms for state in states.values())


async def test_a_retry_after_a_lost_answer_replays_and_getorder_shows_it_applied_once(
    admin: center_grpc.PromotionAdminAsyncStub, orders_eu: agent_grpc.RegionAgentAsyncStub
) -> None:
    await _create(admin, promotion("promo"))
    # The order service sent the call and never heard back (the first answer is dropped here).
    await orders_eu.Deduct(order("o-1", "eu", ("promo", 3)), timeout=TIMEOUT_S)

    read = await orders_eu.GetOrder(agent_pb.GetOrderRequest(order_key="o-1"), timeout=TIMEOUT_S)
    retried = await orders_eu.Deduct(order("o-1", "eu", ("promo", 3)), timeout=TIMEOUT_S)

    assert read.status == agent_pb.ORDER_STATUS_DEDUCTED
    assert retried.replayed
    status = await orders_eu.GetStatus(agent_pb.GetStatusRequest(), timeout=TIMEOUT_S)
    assert [(b.promotion_id, b.deducted) for b in status.balances] == [("promo", 3)]


async def test_getorder_of_a_reservation_neither_extends_nor_creates_it(
    admin: center_grpc.PromotionAdminAsyncStub, orders_eu: agent_grpc.RegionAgentAsyncStub
) -> None:
    await _create(admin, promotion("promo"))
    line = [agent_pb.Line(promotion_id="promo", amount=2, user_id="user-1")]
    held = await orders_eu.Reserve(agent_pb.ReserveRequest(order_key="held", region="eu", lines=line), timeout=5)

    for key in ("held", "never"):
        await orders_eu.GetOrder(agent_pb.GetOrderRequest(order_key=key), timeout=TIMEOUT_S)

    again = await orders_eu.Reserve(agent_pb.ReserveRequest(order_key="held", region="eu", lines=line), timeout=5)
    assert (again.replayed, again.expires_at_ms) == (True, held.expires_at_ms)
    fresh = await orders_eu.Reserve(agent_pb.ReserveRequest(order_key="never", region="eu", lines=line), timeout=5)
    assert not fresh.replayed
    status = await orders_eu.GetStatus(agent_pb.GetStatusRequest(), timeout=TIMEOUT_S)
    assert [(b.promotion_id, b.held) for b in status.balances] == [("promo", 4)]


SETTLING = [
    pytest.param(lambda stub: stub.Refund(agent_pb.RefundRequest(order_key="ghost"), timeout=5), id="refund"),
    pytest.param(lambda stub: stub.Confirm(agent_pb.SettleRequest(order_key="ghost"), timeout=5), id="confirm"),
    pytest.param(lambda stub: stub.Cancel(agent_pb.SettleRequest(order_key="ghost"), timeout=5), id="cancel"),
]
"""Calls on an order "ghost", which must exist."""


@pytest.mark.parametrize("call", SETTLING)
async def test_an_order_unknown_to_the_regions_first_ledger_life_is_unknown(
    orders_eu: agent_grpc.RegionAgentAsyncStub, call: object
) -> None:
    assert callable(call)
    error, info = await _refused(call(orders_eu))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert info.reason == "ORDER_UNKNOWN"
    assert info.metadata["may_have_applied"] == "false"
    state = await orders_eu.GetOrder(agent_pb.GetOrderRequest(order_key="ghost"), timeout=TIMEOUT_S)
    assert info.metadata["ledger_life_started_ms"] == str(state.ledger_life_started_ms)
    assert not state.ledger_life_lost


@pytest.mark.parametrize("call", SETTLING)
async def test_an_order_of_a_lost_ledger_life_says_so(
    center: ServedCenter, admin: center_grpc.PromotionAdminAsyncStub, call: object
) -> None:
    assert callable(call)
    await _create(admin, promotion("promo"))
    async with running_agent("eu", center.address) as first, grpc.aio.insecure_channel(first.address) as channel:
        reserve = agent_pb.ReserveRequest(
            order_key="ghost", region="eu", lines=order("ghost", "eu", ("promo", 1)).lines
        )
        await agent_grpc.RegionAgentStub(channel).Reserve(reserve, timeout=TIMEOUT_S)

    # Restarted on a new in-process ledger: the reservation went with the first one.
    async with (
        running_agent("eu", center.address) as restarted,
        grpc.aio.insecure_channel(restarted.address) as channel,
    ):
        orders = agent_grpc.RegionAgentStub(channel)
        error, info = await _refused(call(orders))
        state = await orders.GetOrder(agent_pb.GetOrderRequest(order_key="ghost"), timeout=TIMEOUT_S)

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert info.reason == "LEDGER_LIFE_LOST"
    assert info.metadata["may_have_applied"] == "false"
    assert (state.status, state.ledger_life_lost) == (agent_pb.ORDER_STATUS_UNKNOWN, True)
    assert "reconcile" in (error.details() or "")


async def test_an_order_key_reused_and_a_bad_request_say_nothing_applied(
    admin: center_grpc.PromotionAdminAsyncStub, orders_eu: agent_grpc.RegionAgentAsyncStub, agent_eu: ServedAgent
) -> None:
    await _create(admin, promotion("promo"))
    await orders_eu.Deduct(order("o-1", "eu", ("promo", 1)), timeout=TIMEOUT_S)

    reused, reused_info = await _refused(orders_eu.Deduct(order("o-1", "eu", ("promo", 2)), timeout=TIMEOUT_S))
    bad, bad_info = await _refused(orders_eu.GetOrder(agent_pb.GetOrderRequest(order_key=""), timeout=TIMEOUT_S))
    async with grpc.aio.insecure_channel(agent_eu.address) as channel:
        # A key that is not UTF-8: bytes no Deduct request decodes from.
        raw: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/region_agent.v1.RegionAgent/Deduct")
        undecodable, undecodable_info = await _refused(raw(b"\x0a\x02\xff\xfe", timeout=TIMEOUT_S))

    assert (reused.code(), reused_info.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ORDER_KEY_REUSED")
    for refused, info in ((bad, bad_info), (undecodable, undecodable_info)):
        assert (refused.code(), info.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
        assert info.metadata["may_have_applied"] == "false"
    assert reused_info.metadata["may_have_applied"] == "false"


def _refund(amount: int) -> agent_pb.RefundLine:
    return agent_pb.RefundLine(promotion_id="promo", amount=amount)
