"""The real agent against two real center groups through the in-memory port, on the fake clock: each
promotion's calls go to the group that serves it (learnt from a refusal when the agent had not heard of it),
each group renews its own promotions' leases, and one group's outage leaves the other's promotions selling."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from typing import cast

import grpc
import pytest
from click.testing import CliRunner

from quota_center.center import Center
from quota_center.center_core import CenterSettings
from quota_center.issuer import KEY_DOCUMENT
from quota_cli.main import main
from quota_common.clock import FakeClock
from quota_common.errors import Rejected, RejectReason, Superseded, Unavailable, WrongGroup
from quota_common.model import Kind, Promotion, Report
from quota_common.policy import RefillSettings
from quota_common.rpc import Context
from quota_common.shards import DEFAULT_GROUP, ShardMap
from quota_testing.direct_center import DirectCenter
from quota_testing.inprocess import TEST_INCARNATION_KEY
from quota_testing.memory_store import MemoryStore
from region_agent import server as agent_server
from region_agent.agent import Agent, AgentSettings
from region_agent.cache import PromotionCache
from region_agent.center_groups import CenterGroups, Owners
from region_agent.center_port import CenterPort, RegionLease, RenewAnswer
from region_agent.floor import BelowFloorCount
from region_agent.ledger.base import Line
from region_agent.ledger.memory import InProcessLedger
from region_agent.metrics import AgentMetrics
from region_agent.server import RegionAgentServicer
from region_agent.supply import Supply
from region_agent.v1 import region_agent_pb2 as pb

HOUR_MS = 3_600_000
MAP = ShardMap.even(["a", "b"])
QUIET = AgentSettings("eu", renew_interval_s=3_600, pull_interval_s=3_600, push=False, opening_lookahead_s=0)


def owned_by(group: str) -> str:
    return next(pid for pid in (f"promo-{i}" for i in range(100)) if MAP.owner_of(pid) == group)


@dataclass
class Groups:
    clock: FakeClock
    centers: dict[str, Center]
    ports: dict[str, DirectCenter]
    agent: Agent

    def consumed(self, group: str, promotion_id: str) -> int:
        return self.centers[group].spent(promotion_id)


@pytest.fixture
async def groups() -> AsyncIterator[Groups]:
    clock = FakeClock()
    centers = {}
    for name in ("a", "b"):
        store = MemoryStore()
        await store.save_document(KEY_DOCUMENT, {"key": TEST_INCARNATION_KEY.hex()})  # one key, as on etcd
        center = Center(store, clock, CenterSettings(group=name))
        await center.start()
        center.set_shards(MAP, {})
        now = clock.wall_ms()
        promotion = Promotion(owned_by(name), Kind.COUNT, "", 100, now - HOUR_MS, now + HOUR_MS, ("eu",))
        await center.create_promotion(promotion)
        centers[name] = center
    ports = {name: DirectCenter(center, "eu") for name, center in centers.items()}
    agent = Agent(QUIET, InProcessLedger(clock), CenterGroups(ports), clock)
    await agent.start()
    yield Groups(clock, centers, ports, agent)
    await agent.stop()


async def _supply(groups: Groups, routes: CenterGroups, ledger: InProcessLedger) -> Supply:
    """The agent's supply alone, joined: the openings and renewals its loops would run, called by the test. It
    joins as the successor of the fixture's agent, whose renewals hold the region."""
    supply = Supply("eu", RefillSettings(), ledger, routes, groups.clock, PromotionCache(), 10.0, BelowFloorCount())
    supply.incarnation = await ledger.incarnation(lambda _: routes.join(groups.agent.incarnation))
    return supply


async def _deduct(agent: Agent, key: str, promotion_id: str) -> None:
    await agent.deduct(key, "eu", (Line(promotion_id, 1, "user"),))


def test_a_refusal_judged_by_an_older_map_does_not_move_a_promotion() -> None:
    owners = Owners(["a", "b", "c"])
    assert owners.owner("p") == "a"  # never heard of: the first group is asked
    assert owners.told("p", "b", map_version=5)
    assert not owners.told("p", "a", map_version=4), "a group that has not caught up with version 5"
    assert owners.owner("p") == "b"
    owners.served("c", ["p"])  # c's catalog carries it: c took it over
    assert owners.owner("p") == "c"
    assert owners.told("p", "b", map_version=6)
    assert owners.of("b", ["p", "q"]) == ["p"]


async def test_two_calls_refused_at_once_both_follow_the_refusal() -> None:
    ports = {"a": cast(CenterPort, object()), "b": cast(CenterPort, object())}
    groups = CenterGroups(ports)
    both_sent = asyncio.Barrier(2)

    async def send(port: CenterPort) -> str:
        if port is ports["a"]:
            await both_sent.wait()  # neither refusal is heard before both calls went to a
            raise WrongGroup.of("p", "b", map_version=5)
        return "served by b"

    # The first refusal moves "p" to b; the second names b too, which the agent already knows.
    assert list(await asyncio.gather(groups.call("p", send), groups.call("p", send))) == ["served by b"] * 2


async def test_an_opening_refused_by_a_former_owner_is_opened_at_the_new_one(groups: Groups) -> None:
    clock, b = groups.clock, groups.centers["b"]
    start = clock.wall_ms() + 30_000
    upcoming = next(p for p in (f"sale-{i}" for i in range(100)) if MAP.owner_of(p) == "b")
    created = await b.create_promotion(Promotion(upcoming, Kind.COUNT, "", 100, start, start + HOUR_MS, ("eu",)))
    ledger = InProcessLedger(clock)
    supply = await _supply(groups, CenterGroups(groups.ports), ledger)
    supply.cache.put([created])  # as the agent knew it when a served it, before a move to b

    await supply.open_upcoming(lookahead_s=60)  # sent to a, which refuses it: the lookup finds b
    await supply.open_upcoming(lookahead_s=60)

    assert (await ledger.balances())[upcoming].granted > 0


async def test_a_former_owners_region_lease_does_not_extend_a_promotion_it_refuses(groups: Groups) -> None:
    clock, moved = groups.clock, owned_by("b")
    routes = CenterGroups(groups.ports)
    supply = await _supply(groups, routes, InProcessLedger(clock))
    (item,) = await supply.track([moved])
    await supply.renew_group("b")
    lease_until = item.lease_until
    routes.owners.served("a", [moved])  # as if a still served it: its catalog named it last
    clock.advance(5)

    await supply.renew_group("a")  # refuses the report of `moved` (b serves it) and renews the region lease

    assert item.lease_until == lease_until


async def test_the_agents_catalog_metrics_are_labelled_by_group(groups: Groups) -> None:
    metrics = AgentMetrics("eu")
    await metrics.watch(groups.agent)()
    samples = {
        (sample.name, sample.labels.get("group")): sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name.startswith("quota_agent_catalog_")
    }

    for group in ("a", "b"):
        assert samples[("quota_agent_catalog_revision", group)] == groups.agent.cache.revision_of(group) > 0
        assert samples[("quota_agent_catalog_staleness_seconds", group)] == 0  # both pulled at start; no time passed
        assert ("quota_agent_catalog_stream_up", group) in samples


async def _b_unreachable(groups: Groups) -> None:
    """a answers and streams; b stopped answering 10 s ago, after the lease b granted ran out (14 s ago: the
    first pull at start, the last word b said)."""
    agent, outage = groups.agent, groups.ports["b"]
    await _deduct(agent, "a-0", owned_by("a"))
    await _deduct(agent, "b-0", owned_by("b"))
    await agent.renew_once()
    agent.catalogs[0].stream_alive = True  # as a's watch loop sets it while a's stream is open
    outage.down = True
    for step_s in (4.0, CenterSettings().lease_ttl_s):
        groups.clock.advance(step_s)
        with pytest.raises(Unavailable):
            await agent.renew_once()  # a renews; b does not answer
    await agent.catalogs[0].pull()


async def test_get_status_names_the_group_the_agent_cannot_reach(groups: Groups) -> None:
    await _b_unreachable(groups)
    servicer = RegionAgentServicer(groups.agent, AgentMetrics("eu"))

    status = await servicer.GetStatus(pb.GetStatusRequest(), cast(Context, None))

    revision = groups.agent.cache.revision_of
    assert list(status.groups) == [
        pb.CenterGroupStatus(
            group="a",
            catalog_stream_alive=True,
            catalog_revision=revision("a"),
            catalog_staleness_ms=0,
            lease_remaining_ms=round(CenterSettings().lease_ttl_s * 1000),
            renewals_failing_ms=0,
            promotions=1,
        ),
        pb.CenterGroupStatus(
            group="b",
            catalog_stream_alive=False,
            catalog_revision=revision("b"),
            catalog_staleness_ms=14_000,
            lease_remaining_ms=0,
            renewals_failing_ms=10_000,
            promotions=1,
        ),
    ]
    assert revision("a") > 0
    assert revision("b") > 0
    assert not status.catalog_stream_alive, "as before there were groups: open only while every group's is"
    metrics = AgentMetrics("eu")
    await metrics.watch(groups.agent)()
    lease = {
        sample.labels["group"]: sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == "quota_agent_region_lease_remaining_seconds"
    }
    assert lease == {"a": CenterSettings().lease_ttl_s, "b": 0}
    groups.agent.catalogs[1].stream_alive = True
    assert (await servicer.GetStatus(pb.GetStatusRequest(), cast(Context, None))).catalog_stream_alive


async def test_agent_status_prints_first_which_group_is_in_trouble(groups: Groups) -> None:
    await _b_unreachable(groups)
    server = grpc.aio.server()
    agent_server.add_to_server(groups.agent, server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    try:
        args = ["agent", "status", "--agent", address, "--insecure"]
        shown, as_json = [await asyncio.to_thread(CliRunner().invoke, main, a) for a in (args, [*args, "--json"])]
    finally:
        await server.stop(None)

    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0].startswith(f"agent of region eu, ledger life {groups.agent.incarnation}: ")
    assert lines[1] == (
        "center group b: renewals failing for 10.0 s; region lease expired: orders for its 1 promotion(s) are refused"
    )
    rows = {cells[0]: cells[1:] for line in lines if len(cells := [c.strip() for c in line.split("│")[1:-1]]) == 7}
    assert rows["a"][0::2] == ["up", "0.0 s ago", "answered"]
    assert rows["b"][0::2] == ["down", "14.0 s ago", "failing 10.0 s"]
    assert rows["b"][3] == "none"
    document = json.loads(as_json.output)
    assert [g["renewals_failing_ms"] for g in document["groups"]] == [0, 10_000]
    assert document["catalog_stream_alive"] is False


class Refusing(DirectCenter):
    """Refuses every report, each time in other words (a refusal's text may count something)."""

    refusals = 0

    async def renew(
        self, incarnation: str, reports: Mapping[str, Report], region_lease: RegionLease | None = None
    ) -> RenewAnswer:
        answer = await super().renew(incarnation, reports, region_lease)
        self.refusals += 1
        refused = [replace(directive, refusal=f"refusal #{self.refusals}") for directive in answer.directives]
        return replace(answer, directives=refused)


async def test_with_one_group_a_refused_report_is_not_looked_up_again(groups: Groups) -> None:
    port = Refusing(groups.centers["a"], "eu")
    supply = await _supply(groups, CenterGroups.one(port), InProcessLedger(groups.clock))
    await supply.track([owned_by("a")])
    for _ in range(3):
        await supply.renew_group(DEFAULT_GROUP)
        for _ in range(5):
            await asyncio.sleep(0)  # what the refusal started in the background, if anything

    assert port.refusals == 3
    assert port.fetches == 1, "only the first sight of it: one group serves everything, nothing to find"


async def test_each_promotion_is_acquired_from_and_reported_to_its_group(groups: Groups) -> None:
    for group in ("a", "b"):
        for n in range(5):
            await _deduct(groups.agent, f"{group}-{n}", owned_by(group))
    await groups.agent.renew_once()

    assert groups.consumed("a", owned_by("a")) == groups.consumed("b", owned_by("b")) == 5
    # Each group's catalog told the agent what that group serves: nothing was asked of the wrong one.
    assert groups.ports["a"].fetches == groups.ports["b"].fetches == 0


async def test_a_promotion_not_heard_of_is_found_through_the_refusal_of_the_wrong_group(groups: Groups) -> None:
    now = groups.clock.wall_ms()
    late = next(p for p in (f"late-{i}" for i in range(100)) if MAP.owner_of(p) == "b")
    await groups.centers["b"].create_promotion(
        Promotion(late, Kind.COUNT, "", 10, now - HOUR_MS, now + HOUR_MS, ("eu",))
    )

    await _deduct(groups.agent, "late-0", late)
    await groups.agent.renew_once()

    assert groups.ports["a"].fetches == 1, "asked of the first group, whose refusal named b"
    assert groups.ports["b"].fetches == 1
    assert groups.consumed("b", late) == 1


async def test_one_groups_outage_leaves_the_others_promotions_selling(groups: Groups) -> None:
    agent, outage = groups.agent, groups.ports["b"]
    await _deduct(agent, "a-0", owned_by("a"))
    await _deduct(agent, "b-0", owned_by("b"))
    await agent.renew_once()  # the agent hears the centers' lease TTL
    outage.down = True

    for step in range(4):  # past the lease TTL, renewing every interval
        groups.clock.advance(CenterSettings().lease_ttl_s / 2)
        with pytest.raises(Unavailable):
            await agent.renew_once()  # a renewed; b's failure is said once a's renewal is done
        await _deduct(agent, f"a-{step + 1}", owned_by("a"))

    with pytest.raises(Rejected) as expired:
        await _deduct(agent, "b-1", owned_by("b"))
    assert expired.value.reason is RejectReason.LEASE_EXPIRED
    outage.down = False
    await agent.renew_once()
    await _deduct(agent, "b-1", owned_by("b"))
    assert groups.consumed("a", owned_by("a")) == 5
    assert groups.consumed("b", owned_by("b")) == 1


async def test_a_newer_life_seen_by_one_group_retires_the_older_process(groups: Groups) -> None:
    await _deduct(groups.agent, "a-old", owned_by("a"))
    await _deduct(groups.agent, "b-old", owned_by("b"))
    ports = {name: DirectCenter(center, "eu") for name, center in groups.centers.items()}
    newer = Agent(QUIET, InProcessLedger(groups.clock), CenterGroups(ports), groups.clock)
    # The older process renews no more (cut off, say): once its lease ran out, one on another ledger may join.
    groups.clock.advance(groups.centers["a"].settings.lease_ttl_s + 1)
    await newer.start()  # joins at a; it tracks nothing yet, so its first renewal tells neither group its life
    try:
        assert newer.incarnation > groups.agent.incarnation
        await _deduct(newer, "b-new", owned_by("b"))  # b's books now know the newer life, a's do not

        with pytest.raises(Superseded):
            await groups.agent.renew_once()
        assert "older than the current one" in await groups.agent.wait_retired()
        with pytest.raises(Rejected):
            await _deduct(groups.agent, "a-late", owned_by("a"))  # retired at every group, a included
        await _deduct(newer, "a-new", owned_by("a"))  # the life a issued sells at both
        await newer.renew_once()
        # a took the older life's report before it knew the newer one; b, knowing it, refused it.
        assert (groups.consumed("a", owned_by("a")), groups.consumed("b", owned_by("b"))) == (2, 1)
    finally:
        await newer.stop()
