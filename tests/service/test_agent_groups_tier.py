"""The region's Redis copy of the promotion cache with two center groups: the real agent on a real Redis
(ledger and cache tier), the real centers of two groups through the in-memory port, on the fake clock.

Each group's catalog has a copy of its own in the region's Redis, with its own cursor, so an agent that starts
while a group is away serves that group's promotions from what another agent of the region learnt; the default
group's copy keeps the keys of a deployment of one group, and each copy holds its own group's promotions only,
even after a full re-save; a promotion that moved between groups is served as the group it moved to says,
whatever its former group's copy still holds."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace

import pytest
import redis.asyncio as redis

from quota_center.center import Center
from quota_center.center_core import CenterSettings
from quota_center.issuer import KEY_DOCUMENT
from quota_center.shard_move import Phase, SlotMove
from quota_common.clock import FakeClock
from quota_common.errors import Rejected, RejectReason
from quota_common.model import Kind, Promotion, promotion_document
from quota_common.shards import DEFAULT_GROUP, ShardMap
from quota_testing.direct_center import DirectCenter
from quota_testing.inprocess import TEST_INCARNATION_KEY
from quota_testing.memory_store import MemoryStore
from quota_testing.servers import RunningServer, redis_server
from region_agent.agent import Agent, AgentSettings
from region_agent.cache_redis import RedisCacheTier
from region_agent.center_groups import CenterGroups
from region_agent.ledger.base import Line
from region_agent.ledger.redis import RedisLedger
from region_agent.ledger.redis_acl import region_tag

HOUR_MS = 3_600_000
GROUPS = [DEFAULT_GROUP, "g1"]
MAP = ShardMap.even(GROUPS)


def owned_by(group: str, prefix: str = "promo") -> str:
    return next(pid for pid in (f"{prefix}-{i}" for i in range(100)) if MAP.owner_of(pid) == group)


@pytest.fixture(scope="module")
def redis_address() -> Iterator[RunningServer]:
    with redis_server() as server:
        yield server


@dataclass
class Region:
    """A region of its own in the module's Redis, its agents following both groups' centers."""

    name: str
    client: redis.Redis
    clock: FakeClock
    stores: dict[str, MemoryStore]
    centers: dict[str, Center]
    started: list[tuple[Agent, RedisLedger]] = field(default_factory=list)

    @property
    def tier(self) -> RedisCacheTier:
        return RedisCacheTier(self.client, self.name)

    async def create(self, promotion_id: str) -> Promotion:
        now = self.clock.wall_ms()
        promotion = Promotion(promotion_id, Kind.COUNT, "", 100, now - HOUR_MS, now + HOUR_MS, (self.name,))
        return await self.centers[MAP.owner_of(promotion_id)].create_promotion(promotion)

    def copy(self, group: str) -> str:
        """The prefix of `group`'s copy's keys in the region's Redis."""
        tag = f"{region_tag(self.name)}:catalog"
        return tag if group == DEFAULT_GROUP else f"{tag}:group:{group}"

    async def hand_over(self, slot: int, target: str) -> None:
        """A slot's move, as the source group's follower makes it once the regions gave back what they held: the
        source seals the slot and copies its promotions to the target's store (each a new record, as
        EtcdShards.copy writes it), then every group takes the map naming the target over."""
        source = MAP.owners[slot]
        self.centers[source].set_shards(MAP, {slot: SlotMove(slot, source, target, Phase.DRAINED)})
        for state in await self.centers[source].sealed_states(slot):
            self.stores[target].promotions[state.promotion.id] = replace(state, version=1).encoded()
        moved = MAP.with_owner(slot, target)
        for center in self.centers.values():
            await center.take_over(moved)

    async def agent(self, away: tuple[str, ...] = ()) -> tuple[Agent, dict[str, DirectCenter]]:
        """A new agent of the region, started while the groups `away` cannot be reached, and its ports."""
        ports = {group: DirectCenter(center, self.name) for group, center in self.centers.items()}
        for group in away:
            ports[group].down = True
        settings = AgentSettings(
            self.name,
            renew_interval_s=3_600,
            pull_interval_s=3_600,
            push=False,
            opening_lookahead_s=0,
            return_on_shutdown=False,  # the region's ledger outlives its agents
        )
        ledger = RedisLedger(self.client, self.name)
        agent = Agent(settings, ledger, CenterGroups(ports), self.clock, self.tier)
        self.started.append((agent, ledger))
        await agent.start()
        return agent, ports


@pytest.fixture
async def region(redis_address: RunningServer) -> AsyncIterator[Region]:
    clock, stores, centers = FakeClock(), {}, {}
    for group in GROUPS:
        stores[group] = MemoryStore()
        await stores[group].save_document(KEY_DOCUMENT, {"key": TEST_INCARNATION_KEY.hex()})  # one key, as on etcd
        centers[group] = Center(stores[group], clock, CenterSettings(group=group))
        await centers[group].start()
        centers[group].set_shards(MAP, {})
    client = redis.Redis(host=redis_address.host, port=redis_address.port)
    made = Region(f"r{uuid.uuid4().hex[:8]}", client, clock, stores, centers)
    try:
        yield made
    finally:
        for agent, ledger in made.started:
            await agent.stop()
            await ledger.aclose()
        await client.aclose()


async def deduct(agent: Agent, key: str, promotion_id: str) -> None:
    await agent.deduct(key, agent.settings.region, (Line(promotion_id, 1, "user"),))


async def test_an_agent_started_while_a_group_is_away_serves_its_promotions_from_the_regions_copy(
    region: Region,
) -> None:
    for n in range(5):  # the default group's catalog runs well ahead of g1's: the revisions are not comparable
        await region.create(owned_by(DEFAULT_GROUP, f"early-{n}"))
    promotions = {group: owned_by(group) for group in GROUPS}
    for promotion_id in promotions.values():
        await region.create(promotion_id)
    first, _ = await region.agent()
    for group, promotion_id in promotions.items():
        await deduct(first, f"first-{group}", promotion_id)  # its allotment lands in the region's ledger

    second, ports = await region.agent(away=("g1",))
    await deduct(second, "second-g1", promotions["g1"])  # from g1's copy and the region's allotment

    cursors = {group: second.cache.revision_of(group) for group in GROUPS}
    assert cursors == {group: first.cache.revision_of(group) for group in GROUPS}
    assert cursors[DEFAULT_GROUP] > cursors["g1"] > 0
    # g1's catalog resumes from g1's cursor: a change there is not behind the default group's.
    ports["g1"].down = False
    late = await region.create(owned_by("g1", "late"))
    assert late.revision < cursors[DEFAULT_GROUP]
    await second.catalogs[1].pull()
    assert second.cache.get(late.id) == late


async def test_the_default_groups_copy_keeps_the_keys_of_one_group(region: Region) -> None:
    # A region's copy as agents of one group wrote it: the default group's catalog, under its keys.
    before = await region.create(owned_by(DEFAULT_GROUP))
    tag = region.copy(DEFAULT_GROUP)
    await region.client.hset(f"{tag}:promotions", before.id, json.dumps(promotion_document(before)))
    await region.client.hset(f"{tag}:revisions", before.id, before.revision)
    await region.client.set(f"{tag}:cursor", before.revision)

    upgraded, _ = await region.agent(away=tuple(GROUPS))  # every group away: the copy is all it has
    assert upgraded.cache.get(before.id) == before
    assert upgraded.cache.revision_of(DEFAULT_GROUP) == before.revision

    # Agents that follow both groups keep the default group's copy where agents of one group read it, and
    # only that group's promotions in it; g1's has keys of its own.
    theirs = await region.create(owned_by("g1"))
    follower, _ = await region.agent()
    assert await region.client.hkeys(f"{tag}:promotions") == [before.id.encode()]
    assert await region.client.get(f"{tag}:cursor") == b"%d" % follower.cache.revision_of(DEFAULT_GROUP)
    assert await region.client.hkeys(f"{region.copy('g1')}:promotions") == [theirs.id.encode()]
    assert await region.client.get(f"{region.copy('g1')}:cursor") == b"%d" % follower.cache.revision_of("g1")


async def test_a_full_re_save_writes_each_groups_copy_with_that_groups_promotions_only(region: Region) -> None:
    served = {group: {(await region.create(owned_by(group, f"{group}-{n}"))).id for n in range(3)} for group in GROUPS}
    agent, _ = await region.agent()
    lost = [key async for key in region.client.scan_iter(f"{region.copy(DEFAULT_GROUP)}:*")]
    await region.client.delete(*lost)  # the region's Redis lost the copies: the next write finds their cursors behind

    for group in GROUPS:
        served[group].add((await region.create(owned_by(group, f"{group}-later"))).id)
    for catalog in agent.catalogs:
        await catalog.pull()

    for group in GROUPS:
        stored = set(await region.client.hkeys(f"{region.copy(group)}:promotions"))
        assert stored == {promotion_id.encode() for promotion_id in served[group]}
        assert await region.client.get(f"{region.copy(group)}:cursor") == b"%d" % agent.cache.revision_of(group)


async def test_a_promotion_moved_to_another_group_is_served_as_that_group_says(region: Region) -> None:
    promotion_id = owned_by(DEFAULT_GROUP)
    before = await region.create(promotion_id)
    first, _ = await region.agent()  # the default group's copy holds the promotion
    # The default group hands the promotion's slot to g1 (sealed, copied, then the map flipped), g1 freezes it.
    await region.hand_over(MAP.slot(promotion_id), "g1")
    frozen = await region.centers["g1"].set_frozen(promotion_id, True)
    for catalog in first.catalogs:
        await catalog.pull()

    second, _ = await region.agent(away=tuple(GROUPS))

    stale = {p.id: p for p in (await region.tier.load()).promotions}[promotion_id]
    assert stale == before, "the default group's copy still holds the promotion as it was before the move"
    assert second.cache.get(promotion_id) == frozen
    with pytest.raises(Rejected) as refused:
        await deduct(second, "after-the-move", promotion_id)
    assert refused.value.reason is RejectReason.FROZEN
