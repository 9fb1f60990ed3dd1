"""The catalog's durable parts on real backends: the store's batched commits and named documents
(SQLite, a single etcd and a 3-member etcd cluster, as in test_store_contract.py) and the
region's promotion cache tier on a real redis-server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis
from redis.typing import EncodableT, KeyT

from quota_center.ledger import GrantRecord, PromotionState, RegionAccount
from quota_center.store.base import MAX_BATCH, Commit, Store
from quota_common.errors import Conflict, Unavailable
from quota_common.model import EmergencyFreeze, Kind, Promotion
from quota_testing.servers import RunningServer
from quota_testing.support import next_audit
from region_agent.cache import CatalogSnapshot
from region_agent.cache_redis import CHUNK_ENTRIES, RedisCacheTier
from region_agent.ledger.redis_acl import region_tag
from tests.contract.conftest import StoreFactory


def _state(promotion_id: str, budget: int = 100) -> PromotionState:
    promotion = Promotion(promotion_id, Kind.COUNT, "", budget, 0, 10_000, ("eu", "us"))
    return PromotionState(promotion, {"eu": RegionAccount(incarnation="i-1")})


def _granted(promotion_id: str, amount: int, version: int = 2) -> Commit:
    """The promotion after granting `amount` to eu, replacing version `version - 1`."""
    state = _state(promotion_id)
    state.accounts["eu"].granted, state.version = amount, version
    return state, version - 1, GrantRecord(f"g-{promotion_id}", f"r-{promotion_id}", promotion_id, "eu", "i-1", amount)


async def _created(store: Store, *ids: str) -> None:
    for promotion_id in ids:
        await store.create(_state(promotion_id), await next_audit(store))


async def test_commit_many_writes_every_document_and_grant(open_store: StoreFactory) -> None:
    store = await open_store()
    await _created(store, "p1", "p2", "p3")
    without_grant = _state("p3", budget=50)
    without_grant.version = 2
    commits = [_granted("p1", 10), _granted("p2", 20), (without_grant, 1, None)]

    await store.commit_many(commits)

    assert await store.load_all() == [commits[0][0], commits[1][0], without_grant]
    assert await store.find_grant("p1", "eu", "r-p1") == commits[0][2]
    assert await store.find_grant("p2", "eu", "r-p2") == commits[1][2]
    assert await store.find_grant("p3", "eu", "r-p3") is None


@pytest.mark.parametrize("stale_at", [0, 1, 2])
async def test_one_stale_version_in_a_batch_writes_nothing_of_it(open_store: StoreFactory, stale_at: int) -> None:
    store = await open_store()
    ids = ["p1", "p2", "p3"]
    await _created(store, *ids)
    winner = _granted(ids[stale_at], 5)
    await store.commit_many([winner])
    batch = [_granted(promotion_id, 30) for promotion_id in ids]  # all expect version 1

    with pytest.raises(Conflict):
        await store.commit_many(batch)

    expected = [winner[0] if n == stale_at else _state(promotion_id) for n, promotion_id in enumerate(ids)]
    assert await store.load_all() == expected
    for n, promotion_id in enumerate(ids):
        assert await store.find_grant(promotion_id, "eu", f"r-{promotion_id}") == (winner[2] if n == stale_at else None)


async def test_a_batch_naming_a_missing_promotion_conflicts_and_writes_nothing(open_store: StoreFactory) -> None:
    store = await open_store()
    await _created(store, "p1")

    with pytest.raises(Conflict):
        await store.commit_many([_granted("p1", 10), _granted("ghost", 10)])

    assert await store.load_all() == [_state("p1")]
    assert await store.find_grant("p1", "eu", "r-p1") is None
    assert await store.load("ghost") is None


async def test_a_full_batch_commits_and_survives_reopening(open_store: StoreFactory) -> None:
    store = await open_store()
    ids = [f"p{n:03d}" for n in range(MAX_BATCH)]
    await _created(store, *ids)
    commits = [_granted(promotion_id, n + 1) for n, promotion_id in enumerate(ids)]

    await store.commit_many(commits)
    await store.close()
    reopened = await open_store()

    assert await reopened.load_all() == [state for state, _, _ in commits]
    assert [await reopened.find_grant(i, "eu", f"r-{i}") for i in ids] == [grant for _, _, grant in commits]


async def test_documents_load_back_as_saved_and_the_last_save_wins(open_store: StoreFactory) -> None:
    store = await open_store()
    first: dict[str, Any] = {"everywhere": False, "regions": ["eu", "ap"], "revision": 3, "note": "冻结"}
    second: dict[str, Any] = {"everywhere": True, "regions": [], "revision": 4}

    assert await store.load_document("switch") is None
    await store.save_document("switch", first, await next_audit(store))
    await store.save_document("switch/eu", {"revision": 1}, await next_audit(store))
    assert await store.load_document("switch") == first
    await store.save_document("switch", second, await next_audit(store))
    await store.close()
    reopened = await open_store()

    assert await reopened.load_document("switch") == second
    assert await reopened.load_document("switch/eu") == {"revision": 1}
    assert await reopened.load_document("other") is None
    assert await reopened.load_all() == []


# The region's cache tier on Redis


@pytest.fixture
async def tier(redis_address: RunningServer) -> AsyncIterator[RedisCacheTier]:
    client = redis.Redis(host=redis_address.host, port=redis_address.port)
    try:
        yield RedisCacheTier(client, f"test-{uuid.uuid4().hex}")
    finally:
        await client.aclose()


def _promotion(promotion_id: str, revision: int, budget: int = 100) -> Promotion:
    return Promotion(promotion_id, Kind.AMOUNT, "EUR", budget, 0, 10_000, ("eu",), revision=revision)


def _by_id(snapshot: CatalogSnapshot) -> dict[str, Promotion]:
    return {promotion.id: promotion for promotion in snapshot.promotions}


async def test_an_empty_tier_loads_an_empty_snapshot(tier: RedisCacheTier) -> None:
    snapshot = await tier.load()

    assert (list(snapshot.promotions), snapshot.emergency, snapshot.revision) == ([], EmergencyFreeze(), 0)


async def test_what_was_saved_loads_back(tier: RedisCacheTier) -> None:
    emergency = EmergencyFreeze(False, frozenset({"eu"}), 3)
    promotions = [_promotion("p1", 1), _promotion("p2", 2, budget=7)]

    assert await tier.save(CatalogSnapshot(promotions, emergency, 4), since=0)

    snapshot = await tier.load()
    assert _by_id(snapshot) == {"p1": promotions[0], "p2": promotions[1]}
    assert (snapshot.emergency, snapshot.revision) == (emergency, 4)


async def test_the_newer_revision_wins_whatever_the_order_of_the_saves(tier: RedisCacheTier) -> None:
    new_switch, old_switch = EmergencyFreeze(True, frozenset(), 6), EmergencyFreeze(False, frozenset({"eu"}), 2)
    await tier.save(CatalogSnapshot([_promotion("p1", 5, budget=50), _promotion("p2", 1)], new_switch, 6), since=0)

    await tier.save(CatalogSnapshot([_promotion("p1", 3, budget=30), _promotion("p2", 4, budget=40)], old_switch, 4), 0)

    snapshot = await tier.load()
    assert _by_id(snapshot) == {"p1": _promotion("p1", 5, budget=50), "p2": _promotion("p2", 4, budget=40)}
    assert snapshot.emergency == new_switch
    assert snapshot.revision == 6


async def test_changes_that_do_not_continue_from_the_cursor_are_kept_but_do_not_move_it(tier: RedisCacheTier) -> None:
    assert await tier.save(CatalogSnapshot([_promotion("p1", 5)], EmergencyFreeze(), 5), since=0)
    gap = CatalogSnapshot([_promotion("p2", 9)], EmergencyFreeze(True, frozenset(), 8), 9)

    assert not await tier.save(gap, since=7)

    snapshot = await tier.load()
    assert _by_id(snapshot) == {"p1": _promotion("p1", 5), "p2": _promotion("p2", 9)}
    assert snapshot.emergency == gap.emergency
    assert snapshot.revision == 5
    assert await tier.save(CatalogSnapshot([_promotion("p1", 5), _promotion("p2", 9)], gap.emergency, 9), since=0)
    assert (await tier.load()).revision == 9


async def test_changes_continuing_from_the_cursor_move_it(tier: RedisCacheTier) -> None:
    await tier.save(CatalogSnapshot([_promotion("p1", 5)], EmergencyFreeze(), 5), since=0)

    assert await tier.save(CatalogSnapshot([_promotion("p2", 8)], EmergencyFreeze(), 8), since=5)
    assert await tier.save(CatalogSnapshot([], EmergencyFreeze(), 6), since=3)  # behind: stays at 8

    assert (await tier.load()).revision == 8


async def test_regions_keep_separate_tiers(tier: RedisCacheTier, redis_address: RunningServer) -> None:
    await tier.save(CatalogSnapshot([_promotion("p1", 1)], EmergencyFreeze(), 1), since=0)
    client = redis.Redis(host=redis_address.host, port=redis_address.port)
    try:
        other = await RedisCacheTier(client, f"test-{uuid.uuid4().hex}").load()
    finally:
        await client.aclose()

    assert (list(other.promotions), other.revision) == ([], 0)


async def test_each_center_group_keeps_a_copy_a_switch_and_a_cursor_of_its_own(tier: RedisCacheTier) -> None:
    frozen_everywhere = EmergencyFreeze(True, frozenset(), 8)
    assert await tier.save(CatalogSnapshot([_promotion("p1", 9)], frozen_everywhere, 9), since=0)

    # g1's catalog revisions are its own: 2 is not behind the default group's 9, and 5 is not past it.
    assert await tier.save(CatalogSnapshot([_promotion("p2", 2)], EmergencyFreeze(), 2), since=0, group="g1")
    assert not await tier.save(CatalogSnapshot([_promotion("p3", 5)], EmergencyFreeze(), 5), since=4, group="g1")

    default, g1, g2 = await tier.load(), await tier.load("g1"), await tier.load("g2")
    assert (_by_id(default), default.emergency, default.revision) == ({"p1": _promotion("p1", 9)}, frozen_everywhere, 9)
    assert (set(_by_id(g1)), g1.emergency, g1.revision) == ({"p2", "p3"}, EmergencyFreeze(), 2)
    assert (list(g2.promotions), g2.revision) == ([], 0)


class _Watched(redis.Redis):
    """A client of the module's Redis that notes, after each script call, what a reader of the default group's
    copy of `region` sees then (the cursor, how many promotions), and fails the call numbered `cut_at`."""

    def __init__(self, server: RunningServer, region: str, cut_at: int = 0) -> None:
        super().__init__(host=server.host, port=server.port)
        self._tag, self._cut_at = f"{region_tag(region)}:catalog", cut_at
        self.seen: list[tuple[int, int]] = []
        self.calls = 0

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: KeyT | EncodableT) -> Any:
        self.calls += 1
        if self.calls == self._cut_at:
            raise redis.ConnectionError("the connection broke")
        answer = await super().evalsha(sha, numkeys, *keys_and_args)
        cursor = int(await self.get(f"{self._tag}:cursor") or 0)
        self.seen.append((cursor, await self.hlen(f"{self._tag}:promotions")))
        return answer


def _many(count: int) -> CatalogSnapshot:
    return CatalogSnapshot([_promotion(f"p{n}", n + 1) for n in range(count)], EmergencyFreeze(), count)


async def test_a_large_save_is_written_in_chunks_and_moves_the_cursor_last(redis_address: RunningServer) -> None:
    region = f"test-{uuid.uuid4().hex}"
    client = _Watched(redis_address, region)
    try:
        tier = RedisCacheTier(client, region)
        assert await tier.save(CatalogSnapshot([_promotion("p0", 1)], EmergencyFreeze(), 1), since=0)
        client.seen.clear()
        everything = 2 * CHUNK_ENTRIES + 200

        assert await tier.save(_many(everything), since=1)

        # A reader between two calls finds the cursor where it was: it never claims entries not stored yet.
        assert client.seen == [(1, CHUNK_ENTRIES), (1, 2 * CHUNK_ENTRIES), (everything, everything)]
        assert len((await tier.load()).promotions) == everything
    finally:
        await client.aclose()


async def test_a_save_cut_off_midway_leaves_the_cursor_and_the_next_one_asks_for_everything(
    redis_address: RunningServer,
) -> None:
    region = f"test-{uuid.uuid4().hex}"
    client = _Watched(redis_address, region, cut_at=2)
    try:
        tier = RedisCacheTier(client, region)
        with pytest.raises(Unavailable):
            await tier.save(_many(2 * CHUNK_ENTRIES), since=0)

        assert client.seen == [(0, CHUNK_ENTRIES)]
        assert (await tier.load()).revision == 0
        # The saver's cache went on to the revision it tried to store: its next changes find the cursor behind.
        late = 2 * CHUNK_ENTRIES + 1
        assert not await tier.save(CatalogSnapshot([_promotion("late", late)], EmergencyFreeze(), late), since=late - 1)
    finally:
        await client.aclose()
