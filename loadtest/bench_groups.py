"""`quota bench groups`: grants per second that 1, 2 and 4 center groups serve on one etcd, and the ratio to
one group, measured in one run.

For each count: one etcd (shared), the shard map stored first (`ShardMap.even`), one center process per group
(`quota center serve --group NAME`, one replica each), a promotion per worker created at the group serving it
(learnt from the refusal of another, as the admin client does), then `--workers` concurrent loops of Acquire,
each at its promotion's group, for `--seconds`. Every grant is an etcd transaction, so this measures what the
groups can commit together; on a machine of few cores the groups share them, which caps the ratio.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

from quota_center.store.etcd import EtcdStore
from quota_center.store.etcd_shards import EtcdShards, Layout, shards_key
from quota_center.v1 import quota_center_pb2 as pb
from quota_center.v1 import quota_center_pb2_grpc as pb_grpc
from quota_common.shards import DEFAULT_GROUP, ShardMap
from quota_testing.launch import ServerProcess, center_process
from quota_testing.servers import etcd_server
from quota_testing.support import promotion as promotion_pb

COUNTS = (1, 2, 4)


def group_names(count: int) -> list[str]:
    return [DEFAULT_GROUP, *(f"g{i}" for i in range(1, count))]


async def _joined(channel: grpc.aio.Channel) -> pb.AgentIdentity:
    """The region's identity at this group, once its center leads (each group issues its own incarnations)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            joined = await pb_grpc.AllocationStub(channel).Join(pb.JoinRequest(region="eu"), timeout=5)
            return pb.AgentIdentity(region="eu", incarnation=joined.incarnation)
        except grpc.aio.AioRpcError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _grants(channel: grpc.aio.Channel, agent: pb.AgentIdentity, promotion_id: str, until: float) -> int:
    allocation, grants = pb_grpc.AllocationStub(channel), 0
    while time.perf_counter() < until:
        request = pb.AcquireRequest(agent=agent, promotion_id=promotion_id, amount=1, request_id=uuid.uuid4().hex)
        await allocation.Acquire(request, timeout=10)
        grants += 1
    return grants


async def store_even(etcd: str, base: str, names: list[str], who: str) -> ShardMap:
    """Stores a fresh map spreading the slots evenly over `names` (before their centers start), audited as `who`."""
    shard_map = ShardMap.even(names)
    store = await EtcdStore.connect([etcd], base)
    try:
        shards = EtcdShards(store, shards_key(base))
        assert await shards.replace(await shards.read(), Layout(shard_map), who)
    finally:
        await store.close()
    return shard_map


async def _measure(etcd: str, workdir: Path, count: int, workers: int, seconds: float) -> float:
    base = f"/bench/{uuid.uuid4().hex}"
    names = group_names(count)
    shard_map = await store_even(etcd, base, names, "quota bench groups")
    centers: dict[str, ServerProcess] = {}
    try:
        for name in names:
            (workdir / f"{count}-{name}").mkdir()
            extra = ("--group", name, "--election-ttl", "5")
            centers[name] = center_process(workdir / f"{count}-{name}", *extra, store=f"etcd://{etcd}{base}").start()
        channels = {name: grpc.aio.insecure_channel(center.address) for name, center in centers.items()}
        agents = {name: await _joined(channel) for name, channel in channels.items()}
        promotions = [f"bench-{count}-{worker}" for worker in range(workers)]
        for promotion_id in promotions:
            owner = shard_map.owner_of(promotion_id)
            request = pb.CreatePromotionRequest(promotion=promotion_pb(promotion_id, 2**50, ("eu",)))
            await pb_grpc.PromotionAdminStub(channels[owner]).CreatePromotion(request, timeout=10)
        started = time.perf_counter()
        loops = [
            _grants(channels[shard_map.owner_of(p)], agents[shard_map.owner_of(p)], p, started + seconds)
            for p in promotions
        ]
        total = sum(await asyncio.gather(*loops))
        rate = total / (time.perf_counter() - started)
        for channel in channels.values():
            await channel.close()
        return rate
    finally:
        for center in centers.values():
            center.stop()


async def bench_groups(seconds: float, workers: int, counts: tuple[int, ...] = COUNTS) -> dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="quota-bench-groups-") as workdir, etcd_server() as etcd:
        for count in counts:
            rate = await _measure(etcd.address, Path(workdir), count, workers, seconds)
            rows.append({"groups": count, "grants_per_s": round(rate, 1)})
    one = rows[0]["grants_per_s"] or 1.0
    for row in rows:
        row["ratio_to_one_group"] = round(row["grants_per_s"] / one, 2)
    return {"rows": rows, "workers": workers, "seconds_per_count": seconds}
