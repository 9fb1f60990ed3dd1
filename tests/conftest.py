from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, settings

from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_testing.inprocess import ServedAgent, ServedCenter, running_agent, running_center
from region_agent.agent import AgentSettings
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc

# CI explores the same examples every run, so a red build always means a change broke something;
# developers' runs keep exploring new ones. Neither times an example: on a busy 2-core machine a slow
# example is not a failing one (hypothesis's default deadline is 200 ms).
# Nor does it refuse slow data generation there (the too_slow health check).
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", settings.get_profile("dev"), derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture
async def center(tmp_path: Path) -> AsyncIterator[ServedCenter]:
    async with running_center(tmp_path) as served:
        yield served


@pytest.fixture
async def agent_eu(center: ServedCenter) -> AsyncIterator[ServedAgent]:
    async with running_agent("eu", center.address, AgentSettings("eu", max_wait_s=1.0)) as served:
        yield served


@pytest.fixture
async def admin(center: ServedCenter) -> AsyncIterator[center_grpc.PromotionAdminAsyncStub]:
    async with grpc.aio.insecure_channel(center.address) as channel:
        yield center_grpc.PromotionAdminStub(channel)


@pytest.fixture
async def allocation(center: ServedCenter) -> AsyncIterator[center_grpc.AllocationAsyncStub]:
    async with grpc.aio.insecure_channel(center.address) as channel:
        yield center_grpc.AllocationStub(channel)


@pytest.fixture
async def orders_eu(agent_eu: ServedAgent) -> AsyncIterator[agent_grpc.RegionAgentAsyncStub]:
    async with grpc.aio.insecure_channel(agent_eu.address) as channel:
        yield agent_grpc.RegionAgentStub(channel)
