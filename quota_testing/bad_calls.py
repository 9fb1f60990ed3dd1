"""Helpers for the bad-input tests: requests as the wire carries them, and a check that nothing changed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
import pytest

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_testing.inprocess import ServedAgent, issued_incarnation
from region_agent.v1 import region_agent_pb2 as agent_pb
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc

MAX_AMOUNT = 2**53 - 1
TOO_BIG = 2**53
ID_128 = "k" * 128
ID_129 = "k" * 129
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FAILED = grpc.StatusCode.FAILED_PRECONDITION

BAD_AMOUNTS = [pytest.param(0, id="zero"), pytest.param(-1, id="negative"), pytest.param(TOO_BIG, id="2**53")]
BAD_IDS = [pytest.param("", "is required", id="empty"), pytest.param(ID_129, "129 bytes", id="129-bytes")]

Balances = list[tuple[str, int, int, int, int, int, bool]]
Snapshot = tuple[list[center_pb.Promotion], list[center_pb.Usage], Balances | None]

# Helpers


async def rejected(call: Awaitable[object], code: grpc.StatusCode, *fragments: str) -> grpc.aio.AioRpcError:
    """Awaits a call that must fail with `code` and a message containing every fragment."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    details = error.details() or ""
    assert error.code() == code, details
    for fragment in fragments:
        assert fragment in details, f"{fragment!r} missing from {details!r}"
    return error


async def balances(orders: agent_grpc.RegionAgentAsyncStub) -> Balances:
    """The agent's balances and counters (without the lease countdown, which moves on its own)."""
    status = await orders.GetStatus(agent_pb.GetStatusRequest(), timeout=5)
    return [
        (b.promotion_id, b.available, b.granted, b.returned, b.deducted, b.refunded, b.frozen) for b in status.balances
    ]


async def settle(agent: ServedAgent, orders: agent_grpc.RegionAgentAsyncStub) -> None:
    """Waits out the background refill a deduction may start, then reports the counters to the center,
    so that the state only changes again if a call changes it."""
    loop = asyncio.get_running_loop()
    last, since = await balances(orders), loop.time()
    while loop.time() - since < 0.2:
        await asyncio.sleep(0.02)
        current = await balances(orders)
        if current != last:
            last, since = current, loop.time()
    await agent.agent.renew_once()


@dataclass(frozen=True)
class World:
    admin: center_grpc.PromotionAdminAsyncStub
    orders: agent_grpc.RegionAgentAsyncStub | None = None

    async def snapshot(self) -> Snapshot:
        listed = await self.admin.ListPromotions(center_pb.ListPromotionsRequest(), timeout=5)
        promotions = list(listed.promotions)
        usages = [
            await self.admin.GetUsage(center_pb.GetUsageRequest(promotion_id=p.id), timeout=5) for p in promotions
        ]
        return promotions, usages, None if self.orders is None else await balances(self.orders)


@asynccontextmanager
async def unchanged(world: World) -> AsyncIterator[None]:
    """Asserts that the block leaves the center (and the agent, if any) exactly as it found them."""
    before = await world.snapshot()
    yield
    if world.orders is not None:
        await asyncio.sleep(0.05)  # a refill started by mistake would land by now
    assert await world.snapshot() == before


async def create(admin: center_grpc.PromotionAdminAsyncStub, message: center_pb.Promotion) -> center_pb.Promotion:
    return await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=message), timeout=5)


def identity(region: str = "eu", incarnation: str | None = None) -> center_pb.AgentIdentity:
    """As the agent of `region` calls itself; by default the life the in-process center issued it at 1970."""
    chosen = issued_incarnation(1, region) if incarnation is None else incarnation
    return center_pb.AgentIdentity(region=region, incarnation=chosen)


def acquire(
    promotion_id: str = "promo",
    amount: int = 100,
    request_id: str = "req-1",
    agent: center_pb.AgentIdentity | None = None,
    demand: int = 0,
) -> center_pb.AcquireRequest:
    return center_pb.AcquireRequest(
        agent=agent or identity(),
        promotion_id=promotion_id,
        amount=amount,
        request_id=request_id,
        demand_per_minute=demand,
    )


def counters(
    promotion_id: str = "promo", granted: int = 100, returned: int = 0, deducted: int = 0, refunded: int = 0
) -> center_pb.Counters:
    return center_pb.Counters(
        promotion_id=promotion_id, granted=granted, returned=returned, deducted=deducted, refunded=refunded
    )


def deduct(order_key: str = "o-2", region: str = "eu", *lines: agent_pb.Line) -> agent_pb.DeductRequest:
    return agent_pb.DeductRequest(order_key=order_key, region=region, lines=list(lines))


def line(
    promotion_id: str = "promo", amount: int = 1, user_id: str = "user-1", unit_price: int = 0, discount: int = 0
) -> agent_pb.Line:
    return agent_pb.Line(
        promotion_id=promotion_id, amount=amount, user_id=user_id, unit_price=unit_price, discount=discount
    )


def refund(order_key: str = "o-1", refund_id: str = "", *lines: tuple[str, int]) -> agent_pb.RefundRequest:
    return agent_pb.RefundRequest(
        order_key=order_key,
        refund_id=refund_id,
        lines=[agent_pb.RefundLine(promotion_id=p, amount=a) for p, a in lines],
    )
