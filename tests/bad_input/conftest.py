"""Worlds the bad-input tests start from: a center with promotions, and an agent that spent some."""

from __future__ import annotations

import pytest

from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_testing.bad_calls import (
    World,
    acquire,
    create,
    settle,
)
from quota_testing.inprocess import ServedAgent
from quota_testing.support import order, promotion
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc


@pytest.fixture
async def center_world(admin: center_grpc.PromotionAdminAsyncStub) -> World:
    """A center holding one promotion, "existing", so that "nothing changed" is not about an empty list."""
    await create(admin, promotion("existing", budget=500))
    return World(admin)


@pytest.fixture
async def granted(center_world: World, allocation: center_grpc.AllocationAsyncStub) -> World:
    """Promotion "promo" (budget 1000, eu only) of which region eu (`identity()`) was granted 100."""
    await create(center_world.admin, promotion("promo", budget=1_000, regions=("eu",)))
    answer = await allocation.Acquire(acquire(amount=100), timeout=5)
    assert answer.grant.amount == 100
    return center_world


@pytest.fixture
async def spent(
    admin: center_grpc.PromotionAdminAsyncStub, orders_eu: agent_grpc.RegionAgentAsyncStub, agent_eu: ServedAgent
) -> World:
    """Promotions "promo" and "other" (budget 1000 each); order "o-1" deducted 2 of each in region eu."""
    await create(admin, promotion("promo", budget=1_000))
    await create(admin, promotion("other", budget=1_000))
    await orders_eu.Deduct(order("o-1", "eu", ("promo", 2), ("other", 2)), timeout=5)
    await settle(agent_eu, orders_eu)
    return World(admin, orders_eu)


@pytest.fixture
async def fresh_agent(admin: center_grpc.PromotionAdminAsyncStub, orders_eu: agent_grpc.RegionAgentAsyncStub) -> World:
    """An agent that has spent nothing yet, and an empty center."""
    return World(admin, orders_eu)
