"""The region's Redis copy of the promotion cache with two center groups: the real agent on a real Redis
(ledger and cache tier), the real centers of two groups through the in-memory port, on the fake clock.

Each group's catalog has a copy of its own in the region's Redis, with its own cursor, so an agent that starts
while a group is away serves that group's promotions from what another agent of the region learnt; the default
group's copy keeps the keys of a deployment of one group; a promotion that moved between groups is served as
the group it moved to says, whatever its former group's copy still holds."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
import redis.asyncio as redis

from quota_center.center import Center
from quota_center.center_core import CenterSettings
from quota_center.issuer import KEY_DOCUMENT
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
    tag = f"{{quota:{region.name}}}:catalog"
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
    assert await region.client.hkeys(f"{tag}:group:g1:promotions") == [theirs.id.encode()]
    assert await region.client.get(f"{tag}:group:g1:cursor") == b"%d" % follower.cache.revision_of("g1")


async def test_a_promotion_moved_to_another_group_is_served_as_that_group_says(region: Region) -> None:
    promotion_id = owned_by(DEFAULT_GROUP)
    before = await region.create(promotion_id)
    first, _ = await region.agent()  # the default group's copy holds the promotion
    # The default group hands the promotion's slot to g1 (copied, then the map flipped), and g1 freezes it.
    region.stores["g1"].promotions[promotion_id] = region.stores[DEFAULT_GROUP].promotions[promotion_id]
    moved = MAP.with_owner(MAP.slot(promotion_id), "g1")
    for center in region.centers.values():
        await center.take_over(moved)
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
