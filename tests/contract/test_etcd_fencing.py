"""Fencing: once another replica leads, nothing a deposed leader sends to etcd commits."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from etcd3aio import Etcd3Client

from quota_center.center import Center
from quota_center.leadership import EtcdLeadership
from quota_center.ledger import GrantRecord, PromotionState
from quota_center.store.etcd import EtcdStore
from quota_common.clock import FakeClock, SystemClock
from quota_common.errors import NotLeader
from quota_common.model import Kind, Promotion
from quota_testing.servers import RunningServer, etcd_server
from quota_testing.support import next_audit


@pytest.fixture(scope="module")
def etcd() -> Iterator[RunningServer]:
    with etcd_server() as server:
        yield server


@pytest.fixture
async def client(etcd: RunningServer) -> AsyncIterator[Etcd3Client]:
    async with Etcd3Client([etcd.address]) as connected:
        yield connected


async def _crown(client: Etcd3Client, key: str, who: str) -> int:
    """Makes `who` the leader as an election would: a fresh leader key; returns its token."""
    assert client.kv is not None
    await client.kv.delete(key)
    return int((await client.kv.put(key, who)).header.revision)


def _state(granted: int, version: int) -> PromotionState:
    state = PromotionState(Promotion("p", Kind.COUNT, "", 100, 0, 10**13, ("eu",)), version=version)
    state.account("eu").incarnation = "i-1"
    state.accounts["eu"].granted = granted
    return state


async def test_a_deposed_leader_cannot_commit_and_learns_who_leads(client: Etcd3Client) -> None:
    prefix = f"/test/{uuid.uuid4().hex}"
    key = f"{prefix}/leader"
    old, new = EtcdStore(client, prefix), EtcdStore(client, prefix)
    old.fence(key, await _crown(client, key, "127.0.0.11:50051"))
    await old.create(_state(0, 1), await next_audit(old))

    new.fence(key, await _crown(client, key, "127.0.0.12:50051"))
    grant = GrantRecord("g1", "r1", "p", "eu", "i-1", 10)
    with pytest.raises(NotLeader) as deposed:
        await old.commit_many([(_state(10, 2), 1, grant)])
    with pytest.raises(NotLeader):
        await old.create(PromotionState(Promotion("q", Kind.COUNT, "", 5, 0, 10**13, ("eu",))), await next_audit(old))

    assert deposed.value.leader == "127.0.0.12:50051"
    assert await new.load("p") == _state(0, 1)
    assert await new.find_grant("p", "eu", "r1") is None
    assert await new.load("q") is None
    await new.commit_many([(_state(10, 2), 1, grant)])
    assert await new.find_grant("p", "eu", "r1") == grant


def _setting(event: asyncio.Event) -> Callable[[], Awaitable[None]]:
    async def callback() -> None:
        event.set()

    return callback


async def test_an_elected_leader_that_gave_up_cannot_commit_once_another_won(client: Etcd3Client) -> None:
    prefix = f"/test/{uuid.uuid4().hex}"
    old_store, new_store = EtcdStore(client, prefix), EtcdStore(client, prefix)
    old, new = EtcdLeadership(old_store, SystemClock(), ttl_s=2), EtcdLeadership(new_store, SystemClock(), ttl_s=2)
    old_won, new_won, deposed = asyncio.Event(), asyncio.Event(), asyncio.Event()
    await old.start(lambda: "127.0.0.11:50051", _setting(old_won), _setting(deposed))
    await asyncio.wait_for(old_won.wait(), 5)
    await old_store.create(_state(0, 1), await next_audit(old_store))
    await new.start(lambda: "127.0.0.12:50051", _setting(new_won), _setting(asyncio.Event()))
    try:
        await old.close()
        await asyncio.wait_for(new_won.wait(), 5)
        assert deposed.is_set()
        assert (old.leading(), new.leading()) == (False, True)
        with pytest.raises(NotLeader) as refused:
            await old_store.commit_many([(_state(10, 2), 1, GrantRecord("g1", "r1", "p", "eu", "i-1", 10))])
        assert refused.value.leader == "127.0.0.12:50051"
        await new_store.commit_many([(_state(10, 2), 1, None)])
    finally:
        await new.close()


async def test_a_leader_stops_answering_once_its_own_clock_says_its_lease_may_have_passed(
    client: Etcd3Client,
) -> None:
    """Though etcd still keeps its key: what counts is the lease as this replica can trust it."""
    clock = FakeClock()
    store = EtcdStore(client, f"/test/{uuid.uuid4().hex}")
    leadership = EtcdLeadership(store, clock, ttl_s=5)
    center = Center(store, clock, leadership=leadership)
    started = asyncio.Event()

    async def elected() -> None:
        await center.start()
        started.set()

    async def deposed() -> None:
        center.stop_serving()

    await leadership.start(lambda: "127.0.0.11:50051", elected, deposed)
    try:
        await asyncio.wait_for(started.wait(), 5)
        assert center.leading
        clock.advance(5)
        assert not center.leading
        with pytest.raises(NotLeader):
            await center.create_promotion(_state(0, 1).promotion)
    finally:
        await leadership.close()
