"""Fencing: once another replica leads, nothing a deposed leader sends to etcd commits."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from etcd3aio import Etcd3Client

from quota_center.ledger import GrantRecord, PromotionState
from quota_center.store.etcd import EtcdStore
from quota_common.errors import NotLeader
from quota_common.model import Kind, Promotion
from quota_testing.servers import RunningServer, etcd_server


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
    await old.create(_state(0, 1))

    new.fence(key, await _crown(client, key, "127.0.0.12:50051"))
    grant = GrantRecord("g1", "r1", "p", "eu", "i-1", 10)
    with pytest.raises(NotLeader) as deposed:
        await old.commit_many([(_state(10, 2), 1, grant)])
    with pytest.raises(NotLeader):
        await old.create(PromotionState(Promotion("q", Kind.COUNT, "", 5, 0, 10**13, ("eu",))))

    assert deposed.value.leader == "127.0.0.12:50051"
    assert await new.load("p") == _state(0, 1)
    assert await new.find_grant("p", "eu", "r1") is None
    assert await new.load("q") is None
    await new.commit_many([(_state(10, 2), 1, grant)])
    assert await new.find_grant("p", "eu", "r1") == grant
