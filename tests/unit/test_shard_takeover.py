"""A promotion moved into an established center group reaches the agents that follow that group's catalog,
whichever of the group's leaders first serves it: the one that saw the map change, or the next one when that
leader died between the flip and the end of its take-over (or between its batches); and no change of the
group's catalog takes a revision below an agent's cursor or one a moved promotion takes too, nor while a
take-over that failed may have stored some at revisions not served yet. Renumbering writes stay under the
store's bound on a request's bytes. Two groups on in-memory stores; the copy is written as `EtcdShards.copy`
writes it (a new document at version 1)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import pytest

from quota_center.audit import AuditRecord
from quota_center.center import Center
from quota_center.center_core import CenterSettings
from quota_center.ledger import RegionAccount
from quota_center.store.base import MAX_BATCH_BYTES, MAX_REPORT_BATCH, Commit
from quota_common.clock import FakeClock
from quota_common.errors import Unavailable
from quota_common.model import Kind, Promotion
from quota_common.shards import ShardMap
from quota_testing.memory_store import MemoryStore

BEFORE = ShardMap.even(["a", "b"], version=1)


class Dying(MemoryStore):
    """A group's store as its leader writes it: the leader dies after `commits` more writes (None: never);
    while `answers_lost` is set, each write lands but its caller hears of a failure (an etcd answer lost on
    the way); while `slow` is set, a write waits for it (`waiting` set meanwhile). `written` keeps the bytes
    of the documents of every write."""

    def __init__(self) -> None:
        super().__init__()
        self.commits: int | None = None
        self.answers_lost = False
        self.slow: asyncio.Event | None = None
        self.waiting = asyncio.Event()
        self.written: list[int] = []

    async def commit_many(self, commits: Sequence[Commit], audit: AuditRecord | None = None) -> None:
        if self.commits == 0:
            raise Unavailable("the leader died here")
        if self.commits is not None:
            self.commits -= 1
        if self.slow is not None:
            self.waiting.set()
            await self.slow.wait()
        await super().commit_many(commits, audit)
        self.written.append(sum(len(state.encoded()) for state, _, _ in commits))
        if self.answers_lost:
            raise Unavailable("the store's answer was lost")


async def leader(store: MemoryStore, group: str, shard_map: ShardMap) -> Center:
    """A newly elected leader of `group`: the map as stored (`ShardFollower.prepare`), then the store."""
    center = Center(store, FakeClock(), CenterSettings(group=group))
    center.set_shards(shard_map, {})
    await center.start()
    return center


@dataclass(frozen=True)
class Counted(ShardMap):
    """A map that notes every promotion looked up in it."""

    looked_up: list[str] = field(default_factory=list, compare=False)

    def slot(self, promotion_id: str) -> int:
        self.looked_up.append(promotion_id)
        return super().slot(promotion_id)


def ids_of(group: str, count: int, prefix: str = "p") -> list[str]:
    return [pid for pid in (f"{prefix}-{i}" for i in range(count * 8)) if BEFORE.owner_of(pid) == group][:count]


async def create(center: Center, promotion_ids: list[str]) -> None:
    for promotion_id in promotion_ids:
        await center.create_promotion(Promotion(promotion_id, Kind.COUNT, "", 100, 0, 10**13, ("eu",)))


async def hand_over(source: Center, target: MemoryStore, promotion_ids: list[str]) -> ShardMap:
    """The copy of the promotions' slots to `target`'s store, then the map naming the target: what follows
    when the source group's follower has drained and sealed them."""
    slots = sorted({BEFORE.slot(pid) for pid in promotion_ids})
    for slot in slots:
        for state in await source.sealed_states(slot):
            target.promotions[state.promotion.id] = replace(state, version=1).encoded()
    owners = list(BEFORE.owners)
    for slot in slots:
        owners[slot] = "b"
    return ShardMap(BEFORE.version + 1, tuple(owners))


def carried(center: Center, cursor: int) -> list[str]:
    """What an agent of `center`'s group whose catalog cursor is `cursor` is sent next."""
    return [p.id for p in center.catalog_page("eu", cursor, 1000).promotions]


@pytest.fixture
async def established() -> tuple[Center, Dying, Center, int]:
    """Group a serving one promotion (revision 1), group b three of its own; an agent of b's catalog at 3."""
    a_store, b_store = MemoryStore(), Dying()
    a, b = await leader(a_store, "a", BEFORE), await leader(b_store, "b", BEFORE)
    await create(a, ids_of("a", 1))
    await create(b, ids_of("b", 3, "resident"))
    return a, b_store, b, b.catalog_page("eu", 0, 100).revision


async def test_the_next_leader_renumbers_a_promotion_its_dead_predecessor_never_took_over(
    established: tuple[Center, Dying, Center, int],
) -> None:
    a, b_store, _, cursor = established
    (moved,) = ids_of("a", 1)
    after = await hand_over(a, b_store, [moved])
    # b's leader dies before its follower sees the flip: the next one loads the map, then the store.
    b = await leader(b_store, "b", after)
    assert carried(b, cursor) == [moved]
    revision = b.promotion(moved).revision
    assert revision > cursor
    again = await leader(b_store, "b", after)  # stored so: a later leader neither loses it nor renumbers again
    assert again.promotion(moved).revision == revision
    assert carried(again, cursor) == [moved]


async def test_the_next_leaders_finish_a_renumbering_interrupted_between_its_batches(
    established: tuple[Center, Dying, Center, int],
) -> None:
    a, b_store, b, _ = established
    moved = ids_of("a", 2 * MAX_REPORT_BATCH + 50, "bulk")
    await create(a, moved)  # revisions 2 to 251 at a
    await create(b, ids_of("b", 2 * MAX_REPORT_BATCH + 60, "more"))
    cursor = b.catalog_page("eu", 0, 1000).revision  # 263: above every one of them
    after = await hand_over(a, b_store, moved)

    async def renumbered() -> int:
        return sum(s.promotion.revision > cursor for s in await b_store.load_all() if s.promotion.id in moved)

    b_store.commits = 1  # one batch of the take-over's renumbering commits, then the leader dies
    with pytest.raises(Unavailable):
        await b.take_over(after)
    b_store.commits = 1  # so does the next leader, one batch into renumbering the rest as it loads
    with pytest.raises(Unavailable):
        await leader(b_store, "b", after)
    assert await renumbered() == 2 * MAX_REPORT_BATCH

    b_store.commits = None
    b = await leader(b_store, "b", after)
    assert sorted(carried(b, cursor)) == sorted(moved)
    revisions = [b.promotion(pid).revision for pid in moved]
    assert len(set(revisions)) == len(moved)  # each its own catalog revision
    created = ids_of("b", 1, "later")
    await create(b, created)
    assert carried(b, max(revisions)) == created  # the catalog goes on above them


async def test_a_leader_of_a_group_that_handed_its_newest_promotion_away_numbers_above_it() -> None:
    """An agent's cursor on a group's catalog is at the highest revision it was ever sent there, which may be
    a promotion the group has since handed away: a new leader must not number new changes below it."""
    a_store, b_store = MemoryStore(), MemoryStore()
    a = await leader(a_store, "a", BEFORE)
    await create(a, ids_of("a", 1, "old"))
    (moved,) = ids_of("a", 1, "newest")
    await create(a, [moved])
    cursor = a.catalog_page("eu", 0, 100).revision
    after = await hand_over(a, b_store, [moved])
    await a.take_over(after)

    a = await leader(a_store, "a", after)
    created = ids_of("a", 1, "next")
    await create(a, created)
    assert carried(a, cursor) == created


async def test_a_change_made_while_a_take_over_renumbers_takes_a_revision_of_its_own(
    established: tuple[Center, Dying, Center, int],
) -> None:
    a, b_store, b, cursor = established
    (moved,) = ids_of("a", 1)
    after = await hand_over(a, b_store, [moved])
    b_store.slow = asyncio.Event()
    taking = asyncio.create_task(b.take_over(after))
    await b_store.waiting.wait()  # the renumbering is being written
    created = ids_of("b", 1, "meanwhile")
    creating = asyncio.create_task(create(b, created))
    await asyncio.sleep(0.01)
    b_store.slow.set()
    await asyncio.gather(taking, creating)

    revisions = {pid: b.promotion(pid).revision for pid in [moved, *created]}
    assert len(set(revisions.values())) == 2, revisions
    assert sorted(carried(b, cursor)) == sorted(revisions)


Failed = tuple[list[str], ShardMap, Dying, Center, int]


@pytest.fixture
async def failed(established: tuple[Center, Dying, Center, int]) -> Failed:
    """40 of group a's promotions handed to b, whose take-over wrote their new revisions but heard of a failure
    (the store's answer lost): the moved ids, the map after the flip, b's store, b's leader (serving on) and the
    cursor of an agent up to date on b's catalog."""
    a, b_store, b, cursor = established
    moved = ids_of("a", 40, "bulk")
    await create(a, moved)
    after = await hand_over(a, b_store, moved)
    b_store.answers_lost = True
    with pytest.raises(Unavailable):
        await b.take_over(after)
    b_store.answers_lost = False
    return moved, after, b_store, b, cursor


async def test_a_take_over_that_failed_holds_back_every_catalog_revision_until_one_completes(failed: Failed) -> None:
    """A take-over whose write failed (or whose answer was lost) may have stored promotions at revisions this
    leader's catalog has not reached: a change taking one of them too would leave two at a revision, and a
    catalog page may end between them. Until the shard follower's next try completes, none is taken."""
    moved, after, _, b, cursor = failed
    (resident,) = ids_of("b", 1, "resident")
    with pytest.raises(Unavailable, match="has not finished taking over"):
        await b.set_frozen(resident, True)
    with pytest.raises(Unavailable, match="retry this change shortly"):
        await b.set_emergency_freeze("eu", True)
    with pytest.raises(Unavailable):
        await create(b, ids_of("b", 1, "meanwhile"))
    assert carried(b, cursor) == []

    await b.take_over(after)  # the follower's next step
    await b.set_frozen(resident, True)
    revisions = {pid: b.promotion(pid).revision for pid in [*moved, resident]}
    assert len(set(revisions.values())) == len(revisions), revisions
    assert sorted(carried(b, cursor)) == sorted(revisions)


async def test_the_successor_of_a_leader_whose_take_over_failed_misses_no_agent(failed: Failed) -> None:
    """The failed take-over's leader goes on serving, then is deposed before its follower tries again: its
    successor serves what is stored, the renumbered documents among it, and an agent up to date on the
    deposed leader's catalog must be sent every one of them."""
    moved, after, b_store, b, _ = failed
    with contextlib.suppress(Unavailable):
        await create(b, ids_of("b", 1, "meanwhile"))
    cursor = b.catalog_page("eu", 0, 1000).revision  # an agent up to date

    successor = await leader(b_store, "b", after)
    assert set(moved) <= set(carried(successor, cursor))


async def test_a_renumbering_writes_large_promotions_in_batches_under_the_stores_request_bound() -> None:
    """A promotion's document grows with its regions (each keeps its recent grants): a renumbering write of many
    such documents would exceed etcd's request bound, and the group's leader could never start."""
    a_store, b_store = MemoryStore(), Dying()
    a = await leader(a_store, "a", BEFORE)
    moved = ids_of("a", 12, "large")
    await create(a, moved)
    after = await hand_over(a, b_store, moved)
    grants = [(f"{'request-' * 16}{i}", 1) for i in range(32)]
    for promotion_id in moved:
        state = await b_store.load(promotion_id)
        assert state is not None
        state.accounts = {f"region-{r}": RegionAccount(recent_grants=grants) for r in range(30)}
        b_store.promotions[promotion_id] = state.encoded()
    assert sum(len(text) for text in b_store.promotions.values()) > MAX_BATCH_BYTES

    b = await leader(b_store, "b", after)
    assert sorted(carried(b, 0)) == sorted(moved)
    assert len(b_store.written) > 1
    assert max(b_store.written) <= MAX_BATCH_BYTES


async def test_adopting_the_map_it_follows_again_looks_no_promotion_up() -> None:
    """The shard follower adopts the map every second, mostly the one the center has: that must not scan every
    promotion (a million pairs' scan each second held the event loop, and the election's keepalive with it)."""
    shard_map = Counted(BEFORE.version, BEFORE.owners)
    a = await leader(MemoryStore(), "a", shard_map)
    ids = ids_of("a", 3)
    await create(a, ids)
    shard_map.looked_up.clear()

    await a.take_over(shard_map)

    assert shard_map.looked_up == []
    assert sorted(p.id for p in a.promotions()) == sorted(ids)
