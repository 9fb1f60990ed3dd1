"""Center groups on one real etcd: each serves the promotions of its slots and refuses the others' naming the
owner; a slot handed from one group to another drains, is copied and flipped, and the budget holds across
the move (what both groups granted, minus what came back, never above it)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from quota_center.center import Center
from quota_center.center_core import CenterSettings
from quota_center.shard_follower import ShardFollower
from quota_center.store.etcd import EtcdStore
from quota_center.store.etcd_shards import EtcdShards, Layout, group_prefix
from quota_common.clock import FakeClock
from quota_common.errors import Moving, WrongGroup
from quota_common.model import Kind, Promotion, Report
from quota_common.shards import ShardMap
from quota_testing.inprocess import issued_incarnation
from quota_testing.servers import etcd_server

INCARNATION = issued_incarnation(1)
BUDGET = 100


@pytest.fixture(scope="module")
def etcd() -> Iterator[list[str]]:
    with etcd_server() as server:
        yield [server.address]


class Group:
    def __init__(self, center: Center, follower: ShardFollower, store: EtcdStore) -> None:
        self.center, self.follower, self.store = center, follower, store


@pytest.fixture
async def groups(etcd: list[str]) -> AsyncIterator[tuple[dict[str, Group], EtcdShards]]:
    """Groups a and b under a fresh base prefix and shards key, with a stored map giving each half the slots."""
    base = f"/test/{uuid.uuid4().hex}"
    stores = {name: await EtcdStore.connect(etcd, group_prefix(name, base)) for name in ("a", "b")}
    shards = EtcdShards(stores["a"], f"{base}/shards/map")
    implicit = await shards.read()
    assert await shards.replace(implicit, Layout(ShardMap.even(["a", "b"], version=1)), "test")
    made = {}
    for name, store in stores.items():
        center = Center(store, FakeClock(), CenterSettings(group=name, lease_ttl_s=10.0))
        await center.start()
        follower = ShardFollower(center, EtcdShards(store, f"{base}/shards/map"), base)
        await follower.step()
        made[name] = Group(center, follower, store)
    yield made, shards
    for store in stores.values():
        await store.close()


def owned_by(shard_map: ShardMap, group: str) -> str:
    return next(pid for pid in (f"promo-{i}" for i in range(100)) if shard_map.owner_of(pid) == group)


def new_promotion(promotion_id: str) -> Promotion:
    return Promotion(promotion_id, Kind.COUNT, "", BUDGET, 0, 10**13, ("eu",))


async def test_two_groups_serve_their_own_and_refuse_the_others(groups: tuple[dict[str, Group], EtcdShards]) -> None:
    made, shards = groups
    shard_map = (await shards.read()).shard_map
    for name, other in (("a", "b"), ("b", "a")):
        center = made[name].center
        await center.create_promotion(new_promotion(owned_by(shard_map, name)))
        with pytest.raises(WrongGroup) as refused:
            await center.create_promotion(new_promotion(owned_by(shard_map, other)))
        assert (refused.value.owner, refused.value.map_version) == (other, shard_map.version)
        assert [p.id for p in center.promotions()] == [owned_by(shard_map, name)]


async def test_a_slot_moves_only_after_its_regions_gave_back(groups: tuple[dict[str, Group], EtcdShards]) -> None:
    made, shards = groups
    a, b = made["a"], made["b"]
    before = await shards.read()
    promotion_id = owned_by(before.shard_map, "a")
    slot = before.shard_map.slot(promotion_id)
    await a.center.create_promotion(new_promotion(promotion_id))
    granted = (await a.center.acquire("eu", INCARNATION, promotion_id, 40, "r-1", demand=0)).grant.amount
    assert await shards.replace(before, before.next(moving={slot: "b"}), "test")

    await a.follower.step()
    with pytest.raises(Moving):
        await a.center.acquire("eu", INCARNATION, promotion_id, 5, "r-2", demand=0)
    (directive,) = await a.center.renew("eu", INCARNATION, {promotion_id: Report(granted, 0, 7, 0)})
    assert not isinstance(directive, Exception)
    assert directive.reclaim == granted - 7
    await b.follower.step()
    with pytest.raises(WrongGroup):  # b does not serve it before the map names b
        await b.center.acquire("eu", INCARNATION, promotion_id, 5, "r-3", demand=0)
    still = await a.follower.step()
    assert still.shard_map.owners[slot] == "a"  # the region still holds quota: nothing moved

    await a.center.return_quota("eu", INCARNATION, promotion_id, Report(granted, granted - 7, 7, 0))
    after = await a.follower.step()
    assert after.shard_map.owners[slot] == "b"
    assert slot not in after.moving
    with pytest.raises(WrongGroup) as refused:
        await a.center.acquire("eu", INCARNATION, promotion_id, 5, "r-4", demand=0)
    assert refused.value.owner == "b"

    await b.follower.step()
    usage = b.center.usage(promotion_id)
    assert usage.unallocated == BUDGET - 7
    more = await b.center.acquire("eu", INCARNATION, promotion_id, BUDGET, "r-5", demand=0)
    assert 7 <= more.grant.amount <= BUDGET - 7
    # The target's books go on from the copy: its commits compare the copy's version with the new key's.
    await b.center.return_quota("eu", INCARNATION, promotion_id, Report(granted + more.grant.amount, granted, 7, 0))
    audit = await shards.audit()
    assert [record["actor"] for record in audit] == ["test", "test", "center group a"]
