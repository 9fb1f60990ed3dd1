"""Two center groups become four under load, and four become two, with real agent processes in front of them:
orders go through the client to the agents of two regions, the agents follow each promotion to the group that
serves it (one stream and one renewal per group), and `quota shards resize` moves half the slots while they
sell. Four to two moves promotions into groups the agents already follow (their catalog cursors there are past
the revisions the promotions had at their source). The chaos checker
judges the recorded history against the centers' books: every violation count 0, every budget sold exactly,
no unknown left, and the centers count nothing as held once the agents gave back.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from loadtest.chaos.books import Books, PromotionBooks, RegionBooks
from loadtest.chaos.calls import ONE_ATTEMPT, AgentCalls
from loadtest.chaos.checker import judge
from loadtest.chaos.history import History, NemesisEvent, Status
from loadtest.chaos.workload import Recorder
from quota_admin.client import AdminClient, CenterUnreachable
from quota_center.store.etcd import EtcdStore
from quota_center.store.etcd_shards import EtcdShards, Layout, shards_key
from quota_center.v1 import quota_center_pb2 as pb
from quota_center.v1 import quota_center_pb2_grpc as pb_grpc
from quota_client import AsyncQuotaClient
from quota_common.shards import ShardMap, rebalance
from quota_common.transport import Transport
from quota_testing.inprocess import issued_incarnation
from quota_testing.launch import ServerProcess, agent_process, center_process, kill_all, run_quota
from quota_testing.servers import RunningServer, etcd_server
from quota_testing.support import create_when_leading, promotion
from region_agent.ledger.base import Line

pytestmark = pytest.mark.e2e

GROUPS = ["default", "g1", "g2", "g3"]
"""Every group's center runs throughout; the map names some of them before the resize and others after."""
RESIZES = [(GROUPS[:2], GROUPS), (GROUPS, GROUPS[:2])]
REGIONS = ("eu", "us")
BUDGET = 150
CLIENTS = 4
RESIZE_AT = 0.2
"""Share of the whole budget sold before the resize is stored: the move happens while the rest sells."""
SELL_PATIENCE_S = 90.0
"""A bound, not a measure: the test fails if the promotions have not sold out and moved by then."""
RENEW_INTERVAL_S = "0.5"
LEASE_TTL_S = "2"


@pytest.fixture
def etcd() -> Iterator[RunningServer]:
    with etcd_server() as server:
        yield server


def _promotions(before: list[str], after: list[str]) -> list[str]:
    """From each group of `before`, up to two promotions that move and two that stay."""
    old, new = ShardMap.even(before), rebalance(ShardMap.even(before), after)
    ids = [f"promo-{i}" for i in range(200)]
    chosen = []
    for group in before:
        mine = [p for p in ids if old.owner_of(p) == group]
        chosen += [p for p in mine if new.owner_of(p) != group][:2] + [p for p in mine if new.owner_of(p) == group][:2]
    return chosen


async def _store_map(endpoint: str, base: str, layout: Layout | None = None) -> Layout:
    """Stores `layout` over whatever is stored (None: only reads); returns the layout stored now."""
    store = await EtcdStore.connect([endpoint], base)
    try:
        shards = EtcdShards(store, shards_key(base))
        if layout is not None:
            assert await shards.replace(await shards.read(), layout, "test")
        return await shards.read()
    finally:
        await store.close()


def _sold(admin: AdminClient, promotion_id: str) -> int:
    usage = admin.call(lambda stub: stub.GetUsage, pb.GetUsageRequest(promotion_id=promotion_id))
    return sum(region.consumed for region in usage.regions)


async def _sell(
    name: str, recorder: Recorder, agents: dict[str, AgentCalls], ids: list[str], done: asyncio.Event
) -> None:
    """One order service: orders of one unit of a random promotion in a random region, until `done`."""
    rng = random.Random(name)
    for number in range(1_000_000):
        if done.is_set():
            return
        region = rng.choice(REGIONS)
        line = Line(rng.choice(ids), 1, f"{region}-user-{rng.randrange(20)}")
        await recorder.attempt(name, [agents[region].deduct(f"{name}-{number}", (line,))])
        await asyncio.sleep(rng.uniform(0.002, 0.01))


async def _watch_sales(
    admin: AdminClient, endpoint: str, base: str, ids: list[str], done: asyncio.Event, workdir: Path, after: list[str]
) -> int:
    """Stores the resize to `after` once RESIZE_AT of the budget sold, and sets `done` once every promotion sold
    out and no slot is being handed over; returns how many slots the resize planned."""
    planned, sold = 0, 0
    deadline = time.monotonic() + SELL_PATIENCE_S
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            try:
                sold = sum([await asyncio.to_thread(_sold, admin, pid) for pid in ids])
            except CenterUnreachable:  # a slot sealed for its hand-over answers nothing for a moment
                continue
            if not planned and sold >= RESIZE_AT * BUDGET * len(ids):
                out = await asyncio.to_thread(
                    run_quota, "shards", "resize", "--store", f"etcd://{endpoint}{base}", "--groups", ",".join(after),
                    "--yes", cwd=workdir,
                )  # fmt: skip
                assert out.returncode == 0, out.stderr
                planned = int(out.stdout.split(" of ")[0])
            layout = await _store_map(endpoint, base)
            if planned and not layout.moving and sold == BUDGET * len(ids):
                return planned
        raise AssertionError(f"not sold out and moved within {SELL_PATIENCE_S} s: sold {sold}, planned {planned}")
    finally:
        done.set()


def _books(admin: AdminClient, ids: list[str]) -> Books:
    """The centers' books after the agents stopped: their ledgers died with them, so they keep nothing."""
    books = {}
    for pid in ids:
        usage = admin.call(lambda stub: stub.GetUsage, pb.GetUsageRequest(promotion_id=pid))
        regions = {
            r.region: RegionBooks(r.consumed, 0, r.granted, r.returned, r.written_off, r.held) for r in usage.regions
        }
        books[pid] = PromotionBooks(usage.promotion.budget, regions=regions)
    return books


@pytest.mark.parametrize(("before", "after"), RESIZES, ids=["2-to-4", "4-to-2"])
async def test_groups_resize_while_real_agents_sell(
    etcd: RunningServer, tmp_path: Path, before: list[str], after: list[str]
) -> None:
    base = f"/test/{uuid.uuid4().hex}"
    await _store_map(etcd.address, base, Layout(ShardMap.even(before)))
    processes: list[ServerProcess] = []
    try:
        for group in GROUPS:
            (tmp_path / group).mkdir()
            extra = ("--group", group, "--lease-ttl", LEASE_TTL_S)
            processes.append(center_process(tmp_path / group, *extra, store=f"etcd://{etcd.address}{base}"))
        await asyncio.gather(*(asyncio.to_thread(center.start) for center in processes))
        groups = [f"{group}={center.address}" for group, center in zip(GROUPS, processes, strict=True)]
        admin = AdminClient(groups, 10.0, Transport())
        ids = _promotions(before, after)
        created = []
        for pid in ids:
            request = pb.CreatePromotionRequest(promotion=promotion(pid, BUDGET, REGIONS))
            await asyncio.to_thread(create_when_leading, admin, request)
            created.append(NemesisEvent("budget", pid, time.monotonic(), None, BUDGET))

        agents = {
            region: agent_process(tmp_path, region, ",".join(groups), "--renew-interval", RENEW_INTERVAL_S)
            for region in REGIONS
        }
        processes += agents.values()
        await asyncio.gather(*(asyncio.to_thread(agent.start) for agent in agents.values()))
        clients = {
            region: AsyncQuotaClient(agent.address, region, policy=ONE_ATTEMPT) for region, agent in agents.items()
        }
        calls = {region: AgentCalls(region, f"{region}-0", client) for region, client in clients.items()}
        recorder, done = Recorder(), asyncio.Event()
        try:
            watching = asyncio.create_task(_watch_sales(admin, etcd.address, base, ids, done, tmp_path, after))
            await asyncio.gather(*(_sell(f"client-{n}", recorder, calls, ids, done) for n in range(CLIENTS)))
            planned = await watching
            await recorder.resolve(time.monotonic() + 30)
        finally:
            for client in clients.values():
                await client.close()
        for agent in agents.values():
            await asyncio.to_thread(agent.stop, 30.0)
        books = await asyncio.to_thread(_books, admin, ids)
        # Lives at a new group: one the default group issued is good there, one made under another key is not.
        joined = await _join(processes[GROUPS.index("default")].address, "ap")
        new_group = processes[GROUPS.index("g2")].address
        accepted = await _renew_at(new_group, "ap", joined)
        forged = await _renew_at(new_group, "ap", issued_incarnation(time.time_ns(), "ap"))
    finally:
        kill_all(processes)

    history = History(tuple(recorder.operations), tuple(created))
    verdict = judge(history, books)  # nothing froze: no allowance applies
    counts = verdict.counts()
    refused = Counter(op.outcome.reason for op in history.operations if op.outcome.status is not Status.OK)
    ok = sum(op.outcome.status is Status.OK for op in history.operations)
    print(f"\n{len(history.operations)} orders, {ok} ok, not ok by reason {dict(refused)}; {planned} slots moved")
    assert counts == dict.fromkeys(counts, 0), [v.message for v in verdict.violations[:5]]
    layout = await _store_map(etcd.address, base)
    assert Counter(layout.shard_map.owners) == dict.fromkeys(after, len(layout.shard_map.owners) // len(after))
    assert planned == 512
    for pid, promotion_books in books.items():
        regions = promotion_books.regions.values()
        assert sum(r.consumed for r in regions) == BUDGET, pid  # sold exactly
        assert sum(r.outstanding + r.written_off for r in regions) == 0, pid  # nothing stranded
    assert accepted is grpc.StatusCode.OK
    assert forged is grpc.StatusCode.INVALID_ARGUMENT


async def _join(address: str, region: str) -> str:
    """A new ledger life of `region`, issued by the group at `address` (a region no promotion names: no books move)."""
    async with grpc.aio.insecure_channel(address) as channel:
        answer = await pb_grpc.AllocationStub(channel).Join(pb.JoinRequest(region=region), timeout=5)
    return str(answer.incarnation)


async def _renew_at(address: str, region: str, incarnation: str) -> grpc.StatusCode:
    """How the group at `address` answers a renewal (nothing reported) of `region`'s life `incarnation`."""
    identity = pb.AgentIdentity(region=region, incarnation=incarnation)
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            await pb_grpc.AllocationStub(channel).Renew(pb.RenewRequest(agent=identity), timeout=5)
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK
