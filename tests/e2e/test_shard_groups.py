"""Center groups on one real etcd: each serves the promotions of its slots and refuses the others' naming the
owner; a slot handed from one group to another drains, is copied and flipped, and the budget holds across
the move (what both groups granted, minus what came back, never above it)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from typing import TypeVar

import pytest

from quota_center.center import Center
from quota_center.center_agents import AcquireResult
from quota_center.center_core import CenterSettings
from quota_center.center_renewals import Directive
from quota_center.ledger import PromotionState
from quota_center.shard_follower import ShardFollower
from quota_center.store.etcd import EtcdStore
from quota_center.store.etcd_shards import EtcdShards, Layout, group_prefix, shards_key
from quota_common.clock import FakeClock
from quota_common.errors import Exhausted, Moving, NotLeader, QuotaError, WrongGroup
from quota_common.model import Kind, Promotion, Report
from quota_common.shards import Router, ShardMap, moves, rebalance
from quota_testing.inprocess import issued_incarnation
from quota_testing.servers import etcd_server
from quota_testing.support import eventually

INCARNATION = issued_incarnation(1)
INCARNATIONS = {"eu": INCARNATION, "us": issued_incarnation(1, "us")}
T = TypeVar("T")
BUDGET = 100


@pytest.fixture(scope="module")
def etcd() -> Iterator[list[str]]:
    with etcd_server() as server:
        yield [server.address]


class Group:
    def __init__(self, center: Center, follower: ShardFollower, store: EtcdStore, base: str) -> None:
        """`base`: the prefix of every group's store."""
        self.center, self.follower, self.store, self.base = center, follower, store, base


@contextlib.asynccontextmanager
async def running_groups(
    etcd: list[str], names: list[str], first: ShardMap
) -> AsyncIterator[tuple[dict[str, Group], EtcdShards]]:
    """Groups under a fresh base prefix and shards key, `first` stored as the map, each following it."""
    base = f"/test/{uuid.uuid4().hex}"
    stores = {name: await EtcdStore.connect(etcd, group_prefix(name, base)) for name in names}
    shards = EtcdShards(stores[names[0]], shards_key(base))
    assert await shards.replace(await shards.read(), Layout(first), "test")
    made = {}
    try:
        for name, store in stores.items():
            center = Center(store, FakeClock(), CenterSettings(group=name, lease_ttl_s=10.0))
            follower = ShardFollower(center, EtcdShards(store, shards_key(base)), base)
            await follower.prepare()
            await center.start()
            made[name] = Group(center, follower, store, base)
        yield made, shards
    finally:
        for store in stores.values():
            await store.close()


@pytest.fixture
async def groups(etcd: list[str]) -> AsyncIterator[tuple[dict[str, Group], EtcdShards]]:
    async with running_groups(etcd, ["a", "b"], ShardMap.even(["a", "b"], version=1)) as made:
        yield made


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
    # The catalog streams follow: the source no longer lists it to its regions, the target does.
    assert promotion_id not in [p.id for p in a.center.catalog_page("eu", 0, 100).promotions]
    assert promotion_id in [p.id for p in b.center.catalog_page("eu", 0, 100).promotions]
    renewal = await a.center.renew_region("eu", INCARNATION, {}, catalog_revision=0, full=False)
    assert promotion_id not in [notice.promotion.id for notice in renewal.notices]
    # Its copy stays in the source's store, never loaded again: a restarted source holds nothing of the slot.
    await a.follower.prepare()
    await a.center.start()
    assert a.center.slot_holdings(slot) == {}
    usage = b.center.usage(promotion_id)
    assert usage.unallocated == BUDGET - 7
    more = await b.center.acquire("eu", INCARNATION, promotion_id, BUDGET, "r-5", demand=0)
    assert 7 <= more.grant.amount <= BUDGET - 7
    # The target's books go on from the copy: its commits compare the copy's version with the new key's.
    await b.center.return_quota("eu", INCARNATION, promotion_id, Report(granted + more.grant.amount, granted, 7, 0))
    audit = await shards.audit()
    assert [record["actor"] for record in audit] == ["test", "test", "center group a"]


class Region:
    """A scripted region selling through the groups: it spends what it holds, reports its cumulative counters,
    gives back what a directive asks, and routes each call by the map it read, learning from refusals."""

    def __init__(self, name: str, made: dict[str, Group], shards: EtcdShards, router: Router) -> None:
        self.name, self.made, self.shards, self.router = name, made, shards, router
        self.counters: dict[str, Report] = {}
        self.exhausted: set[str] = set()
        self.requests = itertools.count()
        self.refusals: Counter[str] = Counter()

    def held(self, promotion_id: str) -> int:
        c = self.counters.get(promotion_id, Report(0, 0, 0, 0))
        return c.granted - c.returned - c.deducted

    async def routed(self, promotion_id: str, call: Callable[[Center], Awaitable[T]]) -> T:
        while True:
            try:
                return await call(self.made[self.router.route(promotion_id)].center)
            except WrongGroup as refused:
                if self.router.learn(promotion_id, refused.owner, refused.map_version):
                    self.refusals["stale map"] += 1
                    self.router.update((await self.shards.read()).shard_map)
                else:
                    self.refusals["owner catching up"] += 1
                    await asyncio.sleep(0.01)

    async def sell(self, promotion_id: str) -> None:
        c = self.counters.setdefault(promotion_id, Report(0, 0, 0, 0))
        try:
            if self.held(promotion_id) > 0:
                c = replace(c, deducted=c.deducted + min(3, self.held(promotion_id)))
                self.counters[promotion_id] = c
                renewing = functools.partial(_renew, self.name, promotion_id, c)
                (directive,) = await self.routed(promotion_id, renewing)
                assert not isinstance(directive, Exception), directive
                if (give := min(directive.reclaim, self.held(promotion_id))) > 0:
                    c = self.counters[promotion_id] = replace(c, returned=c.returned + give)
                    returning = functools.partial(_return, self.name, promotion_id, c)
                    await self.routed(promotion_id, returning)
            elif promotion_id not in self.exhausted:
                asking = functools.partial(_acquire, self.name, promotion_id, f"{self.name}-{next(self.requests)}")
                grant = (await self.routed(promotion_id, asking)).grant
                self.counters[promotion_id] = replace(c, granted=c.granted + grant.amount)
        except Exhausted:
            self.exhausted.add(promotion_id)
        except Moving:
            self.refusals["moving"] += 1

    def done(self, promotion_ids: list[str]) -> bool:
        return all(p in self.exhausted and self.held(p) == 0 for p in promotion_ids)


async def _renew(region: str, promotion_id: str, counters: Report, center: Center) -> list[Directive | QuotaError]:
    return await center.renew(region, INCARNATIONS[region], {promotion_id: counters})


async def _return(region: str, promotion_id: str, counters: Report, center: Center) -> int:
    return await center.return_quota(region, INCARNATIONS[region], promotion_id, counters)


async def _acquire(region: str, promotion_id: str, request_id: str, center: Center) -> AcquireResult:
    return await center.acquire(region, INCARNATIONS[region], promotion_id, 10, request_id, demand=60)


async def test_two_groups_become_four_under_load_without_over_issue(etcd: list[str]) -> None:
    first = ShardMap.even(["g0", "g1"], version=1)
    async with running_groups(etcd, ["g0", "g1", "g2", "g3"], first) as (made, shards):
        promotion_ids = [f"sale-{i}" for i in range(24)]
        for promotion_id in promotion_ids:
            await made[first.owner_of(promotion_id)].center.create_promotion(
                Promotion(promotion_id, Kind.COUNT, "", BUDGET, 0, 10**13, ("eu", "us"))
            )
        regions = [Region(name, made, shards, Router(first)) for name in ("eu", "us")]

        async def sell(region: Region) -> None:
            while not region.done(promotion_ids):
                for promotion_id in promotion_ids:
                    await region.sell(promotion_id)
                    spent = sum(r.counters.get(promotion_id, Report(0, 0, 0, 0)).deducted for r in regions)
                    assert spent <= BUDGET
                await asyncio.sleep(0)

        async def migrate() -> int:
            before = await shards.read()
            plan = rebalance(before.shard_map, ["g0", "g1", "g2", "g3"])
            moving = {slot: to for slot, (_, to) in moves(before.shard_map, plan).items()}
            assert await shards.replace(before, before.next(moving=moving), "test")
            steps = 0
            while (await shards.read()).moving:
                for group in made.values():
                    await group.follower.step()
                steps += 1
                await asyncio.sleep(0.01)
            return steps

        moved = sum(1 for p in promotion_ids if first.owner_of(p) != rebalance(first, list(made)).owner_of(p))
        steps, *_ = await asyncio.wait_for(asyncio.gather(migrate(), *(sell(r) for r in regions)), 120)
        for group in made.values():
            await group.follower.step()

        final = (await shards.read()).shard_map
        sold = {p: sum(r.counters[p].deducted for r in regions) for p in promotion_ids}
        served = {p: made[final.owner_of(p)].center.usage(p) for p in promotion_ids}
        refusals = sum((r.refusals for r in regions), Counter[str]())
        print(
            f"\n2 -> 4 groups under load: {moved} of {len(promotion_ids)} promotions moved in {steps} follower rounds; "
            f"sold {sum(sold.values())} of {BUDGET * len(promotion_ids)}; refusals {dict(refusals)}; "
            f"over-issued {sum(max(0, s - BUDGET) for s in sold.values())}; map version {final.version}"
        )
        assert moved > 0
        assert Counter(final.owners) == dict.fromkeys(made, 256)
        assert sold == dict.fromkeys(promotion_ids, BUDGET)  # an exact sell-out: nothing over, nothing lost
        for promotion_id, usage in served.items():
            assert usage.unallocated == 0
            assert sum(view.account.consumed for view in usage.regions) == BUDGET, promotion_id
        assert sorted(p.id for g in made.values() for p in g.center.promotions()) == sorted(promotion_ids)


async def test_a_deposed_leader_neither_copies_nor_flips(etcd: list[str]) -> None:
    """The hand-over's writes are fenced like the store's: a leader whose leadership is gone (here a leader key
    that was never created at that revision) writes nothing under the target's prefix and flips no slot."""
    base = f"/test/{uuid.uuid4().hex}"
    source = await EtcdStore.connect(etcd, group_prefix("a", base))
    target = await EtcdStore.connect(etcd, group_prefix("b", base))
    try:
        source.fence(f"{base}/leader-gone", 12345)
        shards = EtcdShards(source, shards_key(base))
        before = await shards.read()
        assert not await shards.replace(before, Layout(ShardMap.even(["a", "b"], version=1)), "deposed")
        assert (await shards.read()) == before
        with pytest.raises(NotLeader):
            await shards.copy([PromotionState(new_promotion("promo-1"))], group_prefix("b", base))
        assert await target.load_all() == []
    finally:
        await source.close()
        await target.close()


async def _copy(shards: EtcdShards, source: Group, slot: int, target: str) -> None:
    """The copy step of a hand-over, as the source's follower takes it (the slot holds nothing)."""
    await shards.copy(await source.center.sealed_states(slot), group_prefix(target, source.base))


async def _flip(shards: EtcdShards, before: Layout, slot: int, target: str) -> None:
    """The flip step of a hand-over: the map one version on, naming `target` as the slot's owner."""
    owners = list(before.shard_map.owners)
    owners[slot] = target
    assert await shards.replace(before, before.next(owners=owners), "test")


async def test_a_group_takes_over_a_slot_as_soon_as_the_watched_map_names_it(
    groups: tuple[dict[str, Group], EtcdShards],
) -> None:
    made, shards = groups
    a, b = made["a"], made["b"]
    before = await shards.read()
    promotion_id = owned_by(before.shard_map, "a")
    await a.center.create_promotion(new_promotion(promotion_id))
    slot = before.shard_map.slot(promotion_id)
    # An operator's hand-over of a slot with nothing held: the copy, then the map naming b. No step runs after it.
    await _copy(shards, a, slot, "b")
    following = asyncio.create_task(b.follower.follow())
    try:
        await _flip(shards, before, slot, "b")

        async def served() -> bool:
            return b.center.serves(promotion_id) and promotion_id in [p.id for p in b.center.promotions()]

        await eventually(served, timeout_s=10)
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following


async def test_a_watch_whose_changes_were_compacted_away_reads_the_map_again(
    groups: tuple[dict[str, Group], EtcdShards],
) -> None:
    made, shards = groups
    watching = shards.watch("a")
    first = await anext(watching)
    second = first.next(moving={0: "b"})
    third = second.next(moving={})
    assert await shards.replace(first, second, "test")
    assert await shards.replace(second, third, "test")
    kv = made["a"].store.client.kv
    assert kv is not None
    head = (await kv.get("/")).header.revision
    await kv.compact(head)  # the watch will start at the revision after `first`, which is gone now
    try:
        assert await asyncio.wait_for(anext(watching), 10) == third  # read again: nothing in between was missed
    finally:
        await watching.aclose()


async def _moved_into_established_b(made: dict[str, Group], shards: EtcdShards) -> tuple[str, int]:
    """A promotion of group a (revision 1 there) copied to group b, which serves three of its own (revisions 1
    to 3), and its slot flipped to b: the promotion's id, and the cursor of an agent up to date on b's catalog."""
    a, b = made["a"], made["b"]
    before = await shards.read()
    moved = owned_by(before.shard_map, "a")
    await a.center.create_promotion(new_promotion(moved))
    residents = [pid for pid in (f"resident-{i}" for i in range(100)) if before.shard_map.owner_of(pid) == "b"]
    for promotion_id in residents[:3]:
        await b.center.create_promotion(new_promotion(promotion_id))
    cursor = b.center.catalog_page("eu", 0, 100).revision
    await _copy(shards, a, before.shard_map.slot(moved), "b")
    await _flip(shards, before, before.shard_map.slot(moved), "b")
    return moved, cursor


async def test_a_promotion_moved_into_an_established_group_reaches_that_groups_catalog_readers(
    groups: tuple[dict[str, Group], EtcdShards],
) -> None:
    made, shards = groups
    b = made["b"]
    moved, cursor = await _moved_into_established_b(made, shards)
    await b.follower.step()

    page = b.center.catalog_page("eu", cursor, 100)
    assert moved in [p.id for p in page.promotions], "the agent's next pull carries the promotion moved in"
    assert b.center.promotion(moved).revision > cursor
    await b.follower.prepare()
    await b.center.start()  # the new revision was stored: a restarted leader serves it as well
    assert b.center.promotion(moved).revision > cursor


async def test_a_target_leader_that_dies_before_its_take_over_is_followed_by_one_that_renumbers(
    etcd: list[str], groups: tuple[dict[str, Group], EtcdShards]
) -> None:
    made, shards = groups
    b = made["b"]
    moved, cursor = await _moved_into_established_b(made, shards)
    # b's leader loses its leadership before its follower saw the flip: its late take-over commits nothing.
    b.store.fence(f"{b.base}/leader-gone", 12345)
    with pytest.raises(NotLeader):
        await b.follower.step()

    successor = await EtcdStore.connect(etcd, group_prefix("b", b.base))
    try:
        center = Center(successor, FakeClock(), CenterSettings(group="b"))
        await ShardFollower(center, EtcdShards(successor, shards_key(b.base)), b.base).prepare()
        await center.start()
        assert [p.id for p in center.catalog_page("eu", cursor, 100).promotions] == [moved]
        assert center.promotion(moved).revision > cursor
    finally:
        await successor.close()
