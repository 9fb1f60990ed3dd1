"""Order flows end to end: a center and two agents of region eu as processes, sharing one Redis ledger.

Every flow spreads its calls over both agents, as a load balancer would: a call through one agent is
retried or followed up through the other. Reservations that lapse, partial refunds, per-user limits and
the idempotent retry of every call are checked against the figures both agents read from the ledger and
against what the center hears.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass

import grpc
import pytest

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_testing.redis_region import RegionAddresses as Region
from quota_testing.redis_region import two_agents_on_redis
from quota_testing.support import eventually, now_ms, order, promotion, reject_reason
from region_agent.v1 import region_agent_pb2 as agent_pb
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc

pytestmark = pytest.mark.e2e

FAILED = grpc.StatusCode.FAILED_PRECONDITION
DEFAULT_TTL_MS = 15 * 60_000
"""What a reservation holds for when Reserve does not say (the agents run with the default)."""


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Region]:
    """Started once for the module; each test works on promotions of its own."""
    with two_agents_on_redis(tmp_path_factory.mktemp("order-flows")) as started:
        yield started


@dataclass(frozen=True)
class Clients:
    admin: center_grpc.PromotionAdminAsyncStub
    one: agent_grpc.RegionAgentAsyncStub
    two: agent_grpc.RegionAgentAsyncStub


@pytest.fixture
async def clients(region: Region) -> AsyncIterator[Clients]:
    async with (
        grpc.aio.insecure_channel(region.center) as center,
        grpc.aio.insecure_channel(region.agents[0]) as one,
        grpc.aio.insecure_channel(region.agents[1]) as two,
    ):
        yield Clients(
            center_grpc.PromotionAdminStub(center), agent_grpc.RegionAgentStub(one), agent_grpc.RegionAgentStub(two)
        )


# Requests


def line(promotion_id: str, amount: int, user_id: str = "user-1") -> agent_pb.Line:
    return agent_pb.Line(promotion_id=promotion_id, amount=amount, user_id=user_id)


def reserve(order_key: str, *lines: agent_pb.Line, ttl_ms: int = 0) -> agent_pb.ReserveRequest:
    return agent_pb.ReserveRequest(order_key=order_key, region="eu", lines=list(lines), ttl_ms=ttl_ms)


def deduct(order_key: str, *lines: agent_pb.Line) -> agent_pb.DeductRequest:
    return agent_pb.DeductRequest(order_key=order_key, region="eu", lines=list(lines))


def settle(order_key: str) -> agent_pb.SettleRequest:
    return agent_pb.SettleRequest(order_key=order_key)


def refund(order_key: str, refund_id: str = "", *lines: tuple[str, int]) -> agent_pb.RefundRequest:
    return agent_pb.RefundRequest(
        order_key=order_key,
        refund_id=refund_id,
        lines=[agent_pb.RefundLine(promotion_id=p, amount=a) for p, a in lines],
    )


def refunded(*lines: tuple[str, int]) -> list[agent_pb.RefundLine]:
    return [agent_pb.RefundLine(promotion_id=p, amount=a) for p, a in lines]


# Checks


async def create(clients: Clients, promotion_: center_pb.Promotion) -> None:
    await clients.admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion_), timeout=5)


async def failure(call: Awaitable[object], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """Awaits a call that must fail with `code`."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return caught.value


async def figures_of(stub: agent_grpc.RegionAgentAsyncStub, promotion_id: str) -> dict[str, int]:
    status = await stub.GetStatus(agent_pb.GetStatusRequest(), timeout=5)
    found = [b for b in status.balances if b.promotion_id == promotion_id]
    assert len(found) == 1, f"{promotion_id} not in {status.balances}"
    b = found[0]
    return {
        "available": b.available,
        "granted": b.granted,
        "returned": b.returned,
        "deducted": b.deducted,
        "refunded": b.refunded,
        "held": b.held,
    }


async def figures(clients: Clients, promotion_id: str) -> dict[str, int]:
    """The promotion's balance as both agents read it; they share the ledger, so they must agree."""
    one, two = await figures_of(clients.one, promotion_id), await figures_of(clients.two, promotion_id)
    assert one == two, f"agent 1 reads {one}, agent 2 reads {two}"
    return one


def balance(available: int, granted: int, deducted: int = 0, refunded: int = 0, held: int = 0) -> dict[str, int]:
    """Expected figures; nothing is ever returned to the center here (no other region competes)."""
    return {
        "available": available,
        "granted": granted,
        "returned": 0,
        "deducted": deducted,
        "refunded": refunded,
        "held": held,
    }


async def fully_granted(clients: Clients, promotion_id: str, budget: int) -> None:
    """Waits until the region holds the whole (small) budget, so that every figure after is exact."""

    async def granted() -> bool:
        return (await figures_of(clients.one, promotion_id))["granted"] == budget

    await eventually(granted)


async def center_hears(clients: Clients, promotion_id: str, consumed: int) -> None:
    """Waits until the agents' reports tell the center the region consumed `consumed` (deducted - refunded)."""
    seen: list[int] = []

    async def reported() -> bool:
        usage = await clients.admin.GetUsage(center_pb.GetUsageRequest(promotion_id=promotion_id), timeout=5)
        eu = [r for r in usage.regions if r.region == "eu"]
        seen.append(eu[0].consumed if eu else -1)
        return seen[-1] == consumed

    try:
        await eventually(reported)
    except AssertionError:
        raise AssertionError(f"the center never heard consumed={consumed}; last heard {seen[-1:]}") from None


# Flows


async def test_reserve_confirm_and_partial_refunds_replay_through_either_agent(clients: Clients) -> None:
    p = "flow-refunds"
    await create(clients, promotion(p, budget=10))
    request = reserve("checkout-1", line(p, 3))

    before = now_ms()
    reserved = await clients.one.Reserve(request, timeout=5)
    after = now_ms()
    await fully_granted(clients, p, 10)
    retried = await clients.two.Reserve(request, timeout=5)

    assert (reserved.replayed, retried.replayed) == (False, True)
    assert retried.expires_at_ms == reserved.expires_at_ms
    assert before + DEFAULT_TTL_MS <= reserved.expires_at_ms <= after + DEFAULT_TTL_MS
    assert list(reserved.lines) == list(retried.lines) == [line(p, 3)]
    assert await figures(clients, p) == balance(available=7, granted=10, held=3)

    confirmed = await clients.two.Confirm(settle("checkout-1"), timeout=5)
    confirmed_again = await clients.one.Confirm(settle("checkout-1"), timeout=5)

    assert (confirmed.replayed, confirmed.expired) == (False, False)
    assert (confirmed_again.replayed, confirmed_again.expired) == (True, False)
    assert list(confirmed.lines) == list(confirmed_again.lines) == [line(p, 3)]
    assert await figures(clients, p) == balance(available=7, granted=10, deducted=3)
    await center_hears(clients, p, consumed=3)

    first = await clients.one.Refund(refund("checkout-1", "r1", (p, 1)), timeout=5)
    first_again = await clients.two.Refund(refund("checkout-1", "r1", (p, 1)), timeout=5)

    assert (first.replayed, first_again.replayed) == (False, True)
    assert list(first.lines) == list(first_again.lines) == refunded((p, 1))
    assert await figures(clients, p) == balance(available=8, granted=10, deducted=3, refunded=1)

    rest = await clients.two.Refund(refund("checkout-1", "r2", (p, 2)), timeout=5)

    assert not rest.replayed
    assert list(rest.lines) == refunded((p, 2))
    error = await failure(clients.one.Refund(refund("checkout-1", "r3", (p, 1)), timeout=5), FAILED)
    assert "has 0 of 'flow-refunds' left" in (error.details() or "")
    assert reject_reason(error) is None
    # The refused refund changed nothing, and the first refund still replays after the second.
    late_retry = await clients.one.Refund(refund("checkout-1", "r1", (p, 1)), timeout=5)
    assert late_retry.replayed
    assert list(late_retry.lines) == refunded((p, 1))
    assert await figures(clients, p) == balance(available=10, granted=10, deducted=3, refunded=3)
    await center_hears(clients, p, consumed=0)


async def test_an_unconfirmed_reservation_lapses_by_itself_and_frees_quota_and_the_users_limit(
    clients: Clients,
) -> None:
    p = "flow-expiry"
    await create(clients, promotion(p, budget=10, per_user_orders=1))
    request = reserve("lapse-1", line(p, 2, "user-e"), ttl_ms=1_000)

    before = now_ms()
    reserved = await clients.one.Reserve(request, timeout=5)
    after = now_ms()
    pending = await figures(clients, p)

    assert before + 1_000 <= reserved.expires_at_ms <= after + 1_000
    assert pending == balance(available=8, granted=10, held=2)

    # No call settles it: the agents' renew loop (every 0.2 s) sweeps it once its deadline passes.
    async def released() -> bool:
        return (await figures_of(clients.two, p))["held"] == 0

    await eventually(released)
    seen_released_at = now_ms()

    assert seen_released_at >= reserved.expires_at_ms, "released before its deadline"
    assert await figures(clients, p) == balance(available=10, granted=10)

    error = await failure(clients.two.Confirm(settle("lapse-1"), timeout=5), FAILED)
    assert reject_reason(error) == "REJECT_REASON_RESERVATION_EXPIRED"
    cancelled = await clients.one.Cancel(settle("lapse-1"), timeout=5)
    cancelled_again = await clients.two.Cancel(settle("lapse-1"), timeout=5)
    assert (cancelled.expired, cancelled.replayed) == (True, False)
    assert (cancelled_again.expired, cancelled_again.replayed) == (True, False)
    assert list(cancelled.lines) == [line(p, 2, "user-e")]
    # A late retry of the Reserve answers the first answer and holds nothing again.
    retried = await clients.two.Reserve(request, timeout=5)
    assert retried.replayed
    assert retried.expires_at_ms == reserved.expires_at_ms
    await failure(clients.one.Refund(refund("lapse-1"), timeout=5), FAILED)
    assert await figures(clients, p) == balance(available=10, granted=10)

    # The lapsed reservation no longer counts as the user's one order.
    await clients.two.Deduct(deduct("after-lapse", line(p, 2, "user-e")), timeout=5)
    error = await failure(clients.one.Deduct(deduct("one-too-many", line(p, 1, "user-e")), timeout=5), FAILED)
    assert reject_reason(error) == "REJECT_REASON_USER_LIMIT"
    assert await figures(clients, p) == balance(available=8, granted=10, deducted=2)
    await center_hears(clients, p, consumed=2)


async def test_a_reservation_cancelled_through_the_other_agent_gives_its_quota_back_at_once(
    clients: Clients,
) -> None:
    p = "flow-cancel"
    await create(clients, promotion(p, budget=5))
    request = reserve("cart-1", line(p, 4))

    reserved = await clients.two.Reserve(request, timeout=5)
    await fully_granted(clients, p, 5)

    assert not reserved.replayed
    assert await figures(clients, p) == balance(available=1, granted=5, held=4)
    # While held, the quota is spoken for: the budget's last unit does not cover another two.
    error = await failure(
        clients.one.Deduct(deduct("cart-2", line(p, 2)), timeout=5), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert reject_reason(error) == "REJECT_REASON_EXHAUSTED"

    cancelled = await clients.one.Cancel(settle("cart-1"), timeout=5)
    cancelled_again = await clients.two.Cancel(settle("cart-1"), timeout=5)

    assert (cancelled.replayed, cancelled.expired) == (False, False)
    assert (cancelled_again.replayed, cancelled_again.expired) == (True, False)
    assert list(cancelled.lines) == list(cancelled_again.lines) == [line(p, 4)]
    assert await figures(clients, p) == balance(available=5, granted=5)
    error = await failure(clients.one.Confirm(settle("cart-1"), timeout=5), FAILED)
    assert reject_reason(error) is None
    await failure(clients.two.Refund(refund("cart-1"), timeout=5), FAILED)
    # A retry of the Reserve after the cancel replays; it does not hold the quota again.
    retried = await clients.one.Reserve(request, timeout=5)
    assert retried.replayed
    assert retried.expires_at_ms == reserved.expires_at_ms
    assert await figures(clients, p) == balance(available=5, granted=5)

    # All of the budget can be spent again, the cancelled four included.
    spent = await clients.one.Deduct(deduct("cart-3", line(p, 5)), timeout=5)

    assert not spent.replayed
    assert await figures(clients, p) == balance(available=0, granted=5, deducted=5)
    await center_hears(clients, p, consumed=5)


async def test_per_user_limits_hold_across_both_agents_and_come_back_with_cancels_and_refunds(
    clients: Clients,
) -> None:
    p = "flow-per-user"
    await create(clients, promotion(p, budget=20, per_user_limit=4, per_user_orders=2))

    async def refused(stub: agent_grpc.RegionAgentAsyncStub, order_key: str, amount: int) -> None:
        error = await failure(stub.Deduct(deduct(order_key, line(p, amount, "alice")), timeout=5), FAILED)
        assert reject_reason(error) == "REJECT_REASON_USER_LIMIT", error.details()

    await clients.one.Deduct(deduct("a-1", line(p, 3, "alice")), timeout=5)  # alice: 3 units, 1 order
    await fully_granted(clients, p, 20)
    # Over the units: 3 + 2 > 4, through the other agent and as a reservation too.
    error = await failure(clients.two.Reserve(reserve("a-2", line(p, 2, "alice")), timeout=5), FAILED)
    assert reject_reason(error) == "REJECT_REASON_USER_LIMIT"
    await clients.two.Reserve(reserve("a-3", line(p, 1, "alice")), timeout=5)  # alice: 4 units, 2 orders
    await refused(clients.one, "a-4", 1)
    await refused(clients.two, "a-4", 1)
    # Another user is not affected.
    other = await clients.two.Deduct(deduct("b-1", line(p, 4, "bob")), timeout=5)
    assert not other.replayed
    assert await figures(clients, p) == balance(available=12, granted=20, deducted=7, held=1)

    # A cancelled reservation gives back its units and its order.
    await clients.one.Cancel(settle("a-3"), timeout=5)  # alice: 3 units, 1 order
    await clients.two.Deduct(deduct("a-5", line(p, 1, "alice")), timeout=5)  # alice: 4 units, 2 orders
    await refused(clients.one, "a-6", 1)

    # A partial refund gives back units, but the order still counts until it is fully refunded.
    await clients.one.Refund(refund("a-1", "part", (p, 2)), timeout=5)  # alice: 2 units, 2 orders
    await refused(clients.two, "a-6", 1)
    await clients.two.Refund(refund("a-1", "rest"), timeout=5)  # alice: 1 unit, 1 order
    third = await clients.one.Deduct(deduct("a-6", line(p, 1, "alice")), timeout=5)  # alice: 2 units, 2 orders
    assert not third.replayed
    await refused(clients.two, "a-7", 1)
    # Bob still has his own limit: four units taken, a fifth is refused.
    error = await failure(clients.one.Deduct(deduct("b-2", line(p, 1, "bob")), timeout=5), FAILED)
    assert reject_reason(error) == "REJECT_REASON_USER_LIMIT"

    assert await figures(clients, p) == balance(available=14, granted=20, deducted=9, refunded=3)
    await center_hears(clients, p, consumed=6)


async def test_a_deduction_retried_through_the_other_agent_is_deducted_once(clients: Clients) -> None:
    p = "flow-deduct"
    await create(clients, promotion(p, budget=20))

    first = await clients.one.Deduct(order("pay-1", "eu", (p, 2)), timeout=5)
    await fully_granted(clients, p, 20)
    retried = await clients.two.Deduct(order("pay-1", "eu", (p, 2)), timeout=5)

    assert (first.replayed, retried.replayed) == (False, True)
    assert list(first.lines) == list(retried.lines) == [line(p, 2)]
    assert await figures(clients, p) == balance(available=18, granted=20, deducted=2)

    # Eight copies of one order at once, half through each agent: one deducts, seven replay.
    stubs = [clients.one, clients.two] * 4
    answers = await asyncio.gather(*(stub.Deduct(order("pay-2", "eu", (p, 3)), timeout=5) for stub in stubs))

    assert sorted(answer.replayed for answer in answers) == [False] + [True] * 7
    assert await figures(clients, p) == balance(available=15, granted=20, deducted=5)
    # The same key with other lines, or for a reservation, is refused and changes nothing.
    await failure(clients.two.Deduct(order("pay-1", "eu", (p, 3)), timeout=5), FAILED)
    await failure(clients.one.Reserve(reserve("pay-1", line(p, 2)), timeout=5), FAILED)

    # A refund with no refund id is the order's one refund: its retry through the other agent replays.
    whole = await clients.one.Refund(refund("pay-1"), timeout=5)
    whole_again = await clients.two.Refund(refund("pay-1"), timeout=5)

    assert (whole.replayed, whole_again.replayed) == (False, True)
    assert list(whole.lines) == list(whole_again.lines) == refunded((p, 2))
    # A retry of the refunded order still replays: it is not deducted a second time.
    late = await clients.two.Deduct(order("pay-1", "eu", (p, 2)), timeout=5)
    assert late.replayed
    assert await figures(clients, p) == balance(available=17, granted=20, deducted=5, refunded=2)
    await center_hears(clients, p, consumed=3)
