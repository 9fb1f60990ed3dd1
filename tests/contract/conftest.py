"""Stores and ledgers for the contract tests: every implementation, on real etcd and redis-server processes
(the Redis ledger on one redis-server and on a Redis Cluster of three)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster

from quota_center.store.base import Store
from quota_center.store.etcd import EtcdStore
from quota_center.store.sqlite import SqliteStore
from quota_testing.servers import (
    RestartableServer,
    RunningServer,
    etcd_cluster,
    etcd_server,
    redis_cluster,
    redis_server,
)
from region_agent.ledger.base import RETENTION_S, Ledger
from region_agent.ledger.memory import InProcessLedger
from region_agent.ledger.redis import RedisLedger


@pytest.fixture(scope="module")
def redis_address() -> Iterator[RunningServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(scope="module")
def cluster_nodes() -> Iterator[list[RestartableServer]]:
    """A real Redis Cluster of three masters, for the module's tests."""
    with redis_cluster(3) as nodes:
        yield nodes


REDIS_KINDS = ["redis", "cluster"]
"""The Redis ledger's backends: one redis-server, and a Redis Cluster of three masters."""


@pytest.fixture(params=["memory", *REDIS_KINDS])
async def ledger(request: pytest.FixtureRequest) -> AsyncIterator[Ledger]:
    if request.param == "memory":
        yield InProcessLedger()
        return
    async with _redis_ledger(redis_client(request.param, request)) as joined:
        yield joined


def redis_client(kind: str, request: pytest.FixtureRequest) -> redis.Redis | RedisCluster:
    """A client of the module's Redis of `kind` ("redis" or "cluster")."""
    if kind == "cluster":
        first: RestartableServer = request.getfixturevalue("cluster_nodes")[0]
        return RedisCluster(host=first.host, port=first.port)
    server: RunningServer = request.getfixturevalue("redis_address")
    return redis.Redis(host=server.host, port=server.port)


@asynccontextmanager
async def _redis_ledger(
    client: redis.Redis | RedisCluster, retention_s: float = RETENTION_S
) -> AsyncIterator[RedisLedger]:
    """A ledger of a fresh region through `client`, joined as its first agent; closes both."""
    joined = RedisLedger(client, region=f"test-{uuid.uuid4().hex}", retention_s=retention_s)
    try:
        await joined.incarnation()
        yield joined
    finally:
        await joined.aclose()
        await client.aclose()


@pytest.fixture
async def redis_ledger(redis_address: RunningServer) -> AsyncIterator[RedisLedger]:
    async with _redis_ledger(redis.Redis(host=redis_address.host, port=redis_address.port)) as joined:
        yield joined


async def funded(ledger: Ledger, a: int = 10, b: int = 10) -> Ledger:
    await ledger.apply_grant("grant-a", "a", a, await ledger.incarnation())
    await ledger.apply_grant("grant-b", "b", b, await ledger.incarnation())
    return ledger


@asynccontextmanager
async def remembering_for(kind: str, request: pytest.FixtureRequest, retention_s: float) -> AsyncIterator[Ledger]:
    """A `kind` ledger ("memory", "redis" or "cluster") that forgets orders after `retention_s`."""
    if kind == "memory":
        yield InProcessLedger(retention_s=retention_s)
        return
    async with _redis_ledger(redis_client(kind, request), retention_s) as forgetful:
        yield forgetful


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
