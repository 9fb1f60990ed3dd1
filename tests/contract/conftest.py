"""Stores and ledgers for the contract tests: every implementation, on real etcd and redis-server processes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as redis

from quota_center.store.base import Store
from quota_center.store.etcd import EtcdStore
from quota_center.store.sqlite import SqliteStore
from quota_testing.servers import RunningServer, etcd_cluster, etcd_server, redis_server
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
    try:
        await joined.incarnation()
        yield joined
    finally:
        await joined.aclose()
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
    forgetful = RedisLedger(client, f"test-{uuid.uuid4().hex}", retention_s=retention_s)
    try:
        yield forgetful
    finally:
        await forgetful.aclose()
        await client.aclose()


StoreFactory = Callable[[], Awaitable[Store]]


@pytest.fixture(scope="module")
def etcd() -> Iterator[list[str]]:
    with etcd_server() as server:
        yield [server.address]


@pytest.fixture(scope="module")
def etcd_three() -> Iterator[list[str]]:
    with etcd_cluster(3) as members:
        yield [member.address for member in members]


@pytest.fixture(params=["sqlite", "etcd", "etcd_three"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opens the same durable store again and again, as restarts of the center would."""
    opened: list[Store] = []
    prefix = f"/test/{uuid.uuid4().hex}"
    endpoints: list[str] = [] if request.param == "sqlite" else request.getfixturevalue(request.param)

    async def factory() -> Store:
        if endpoints:
            opened.append(await EtcdStore.connect(endpoints, prefix))
        else:
            opened.append(SqliteStore(tmp_path / "center.db"))
        return opened[-1]

    yield factory
    for store in opened:
        await store.close()
