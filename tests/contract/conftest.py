"""Ledgers for the contract tests: every implementation, the Redis one on a real redis-server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as redis

from quota_center.testing_servers import RunningServer, redis_server
from region_agent.ledger.base import Ledger
from region_agent.ledger.memory import InProcessLedger
from region_agent.ledger.redis import RedisLedger


@pytest.fixture(scope="module")
def redis_address() -> Iterator[RunningServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
async def ledger(request: pytest.FixtureRequest) -> AsyncIterator[Ledger]:
    if request.param == "memory":
        yield InProcessLedger()
        return
    async with _redis_ledger(request.getfixturevalue("redis_address")) as joined:
        yield joined


@asynccontextmanager
async def _redis_ledger(server: RunningServer) -> AsyncIterator[RedisLedger]:
    """A ledger of a fresh region on the shared test Redis, joined as its first agent."""
    client = redis.Redis(host=server.host, port=server.port)
    joined = RedisLedger(client, region=f"test-{uuid.uuid4().hex}")
    await joined.incarnation()
    try:
        yield joined
    finally:
        await client.aclose()


@pytest.fixture
async def redis_ledger(redis_address: RunningServer) -> AsyncIterator[RedisLedger]:
    async with _redis_ledger(redis_address) as joined:
        yield joined


async def funded(ledger: Ledger, a: int = 10, b: int = 10) -> Ledger:
    await ledger.apply_grant("grant-a", "a", a, await ledger.incarnation())
    await ledger.apply_grant("grant-b", "b", b, await ledger.incarnation())
    return ledger


@asynccontextmanager
async def remembering_for(kind: str, request: pytest.FixtureRequest, retention_s: float) -> AsyncIterator[Ledger]:
    """A `kind` ledger ("memory" or "redis") that forgets orders after `retention_s`."""
    if kind == "memory":
        yield InProcessLedger(retention_s=retention_s)
        return
    server: RunningServer = request.getfixturevalue("redis_address")
    client = redis.Redis(host=server.host, port=server.port)
    try:
        yield RedisLedger(client, f"test-{uuid.uuid4().hex}", retention_s=retention_s)
    finally:
        await client.aclose()
