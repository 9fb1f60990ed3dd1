"""The Redis ledger on a real Redis Cluster of three masters, beyond the contract it passes there too:
each region's scripts run on the master of its slot, whichever that is and whatever the masters
forgot, and a slot that moves to another master while orders flow loses and doubles nothing."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from quota_common.errors import ConfigError, LedgerUnreachable
from quota_testing.servers import RestartableServer, redis_cluster
from region_agent.app import open_ledger
from region_agent.ledger.base import Line
from region_agent.ledger.redis import RedisLedger
from region_agent.ledger.redis_acl import region_tag
from region_agent.ledger.script_link import LuaScript, ScriptLink

WRITE_AND_ECHO = LuaScript("redis.call('SET', KEYS[1], ARGV[1])\nreturn ARGV[1]")
HANG_GUARD_S = 120
"""Ends a test that would otherwise hang; no test here asserts how fast anything is."""


@asynccontextmanager
async def admin(node: RestartableServer) -> AsyncIterator[redis.Redis]:
    client = redis.Redis(host=node.host, port=node.port)
    try:
        yield client
    finally:
        await client.aclose()


async def call(client: redis.Redis, *command: str | int | bytes) -> Any:
    """A command redis-py has no typed method for."""
    return await client.execute_command(*command)  # type: ignore[no-untyped-call]


async def node_id(client: redis.Redis) -> str:
    return str((await call(client, "CLUSTER", "MYID")).decode())


async def slot_map(nodes: list[RestartableServer]) -> dict[int, RestartableServer]:
    """Which master serves each slot, as the masters say."""
    slots: dict[int, RestartableServer] = {}
    for node in nodes:
        async with admin(node) as client:
            myself = await node_id(client)
            for start, end, master, *_ in await call(client, "CLUSTER", "SLOTS"):
                if master[2].decode() == myself:
                    slots.update(dict.fromkeys(range(start, end + 1), node))
    return slots


def slot_of(region: str) -> int:
    return key_slot(region_tag(region).encode())


def region_on(slots: dict[int, RestartableServer], node: RestartableServer) -> str:
    """A region name whose slot `node` serves."""
    while slots[slot_of(region := f"cell-{uuid.uuid4().hex}")] is not node:
        pass
    return region


async def count_keys(node: RestartableServer, slot: int) -> int:
    async with admin(node) as client:
        return int(await call(client, "CLUSTER", "COUNTKEYSINSLOT", slot))


async def test_each_region_runs_on_the_master_of_its_slot_even_after_every_master_forgot_the_scripts(
    cluster_nodes: list[RestartableServer],
) -> None:
    slots = await slot_map(cluster_nodes)
    regions = [region_on(slots, node) for node in cluster_nodes]
    client = RedisCluster(host=cluster_nodes[0].host, port=cluster_nodes[0].port)
    ledgers = [RedisLedger(client, region) for region in regions]
    try:
        for round_ in range(2):
            for ledger in ledgers:
                await ledger.apply_grant(f"g{round_}", "a", 10, await ledger.incarnation())
                assert (await ledger.deduct(f"o{round_}", (Line("a", 4, "u"),))).available_after == (6 + 6 * round_,)
            for node in cluster_nodes:
                async with admin(node) as forgetful:
                    await forgetful.script_flush()
        for region, node in zip(regions, cluster_nodes, strict=True):
            assert await count_keys(node, slot_of(region)) > 0
    finally:
        for ledger in ledgers:
            await ledger.aclose()
        await client.aclose()


async def test_a_slot_moving_to_another_master_mid_load_loses_and_doubles_no_deduction(
    cluster_nodes: list[RestartableServer],
) -> None:
    region = f"moving-{uuid.uuid4().hex}"
    slot = slot_of(region)
    source = (await slot_map(cluster_nodes))[slot]
    target = next(node for node in cluster_nodes if node is not source)
    client = RedisCluster(host=cluster_nodes[0].host, port=cluster_nodes[0].port)
    ledger = RedisLedger(client, region)
    acknowledged: set[str] = set()
    after_the_move: set[str] = set()
    warmed, moved, stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
    keys = (f"order-{n}" for n in itertools.count())

    async def order_service() -> None:
        while not stop.is_set():
            key = next(keys)
            while True:  # a retry with the same key, as the agent's callers are told to
                try:
                    outcome = await ledger.deduct(key, (Line("a", 1, f"user-{key}"),))
                    break
                except LedgerUnreachable:
                    await asyncio.sleep(0.01)
            assert outcome.accepted
            assert key not in acknowledged
            acknowledged.add(key)
            if len(acknowledged) >= 300:
                warmed.set()
            if moved.is_set():
                after_the_move.add(key)
                if len(after_the_move) >= 200:
                    stop.set()

    async def migrate() -> None:
        await warmed.wait()
        async with admin(source) as src, admin(target) as dst:
            source_id = await node_id(src)
            target_id = await node_id(dst)
            await call(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            await call(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            while batch := await call(src, "CLUSTER", "GETKEYSINSLOT", slot, 50):
                await call(src, "MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *batch)
                await asyncio.sleep(0)  # orders go on between batches: some meet ASK and TRYAGAIN
            for node in (target, source, *(n for n in cluster_nodes if n not in (source, target))):
                async with admin(node) as each:
                    await call(each, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        moved.set()

    try:
        await ledger.apply_grant("g", "a", 1_000_000, await ledger.incarnation())
        async with asyncio.timeout(HANG_GUARD_S):
            await asyncio.gather(migrate(), *(order_service() for _ in range(8)))
        balance = await ledger.balance("a")
        left_behind, arrived = await count_keys(source, slot), await count_keys(target, slot)
        for key in sorted(acknowledged)[:50]:
            assert (await ledger.deduct(key, (Line("a", 1, f"user-{key}"),))).replayed
    finally:
        await ledger.aclose()
        await client.aclose()

    assert balance.deducted == len(acknowledged)
    assert balance.kept == 1_000_000 - len(acknowledged)
    assert len(after_the_move) >= 200
    assert (left_behind, arrived > len(acknowledged)) == (0, True)


async def test_an_agent_takes_a_cluster_by_any_node_and_a_plain_url_to_it_is_refused_with_the_fix(
    cluster_nodes: list[RestartableServer],
) -> None:
    region = f"joined-{uuid.uuid4().hex}"
    home = (await slot_map(cluster_nodes))[slot_of(region)]
    elsewhere = next(node for node in cluster_nodes if node is not home)

    ledger, tier = await open_ledger(f"redis+cluster://{elsewhere.address}", region, 60)
    try:
        await ledger.apply_grant("g", "a", 5, await ledger.incarnation())
        assert (await ledger.deduct("o", (Line("a", 2, "u"),))).available_after == (3,)
        assert tier is not None
    finally:
        await ledger.aclose()
    with pytest.raises(ConfigError, match=r"node of a Redis Cluster.*use redis\+cluster://"):
        await open_ledger(f"redis://{elsewhere.address}", region, 60)


async def test_a_script_for_a_slot_on_its_way_to_another_master_follows_ask_there(
    cluster_nodes: list[RestartableServer],
) -> None:
    key = f"{{fresh-{uuid.uuid4().hex}}}:record"
    slot = key_slot(key.encode())
    source = (await slot_map(cluster_nodes))[slot]
    target = next(node for node in cluster_nodes if node is not source)
    async with admin(source) as src, admin(target) as dst:
        source_id, target_id = (
            await node_id(src),
            await node_id(dst),
        )
        await call(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        await call(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        client = RedisCluster(host=source.host, port=source.port)
        link = ScriptLink(client)
        try:
            # The source has no key of the slot: it answers ASK, and the target takes the script after ASKING.
            assert await link.run(WRITE_AND_ECHO, [key], ["written"]) == b"written"
            assert (await count_keys(source, slot), await count_keys(target, slot)) == (0, 1)
        finally:
            await link.aclose()
            await client.aclose()
            for node in cluster_nodes:
                async with admin(node) as each:
                    await call(each, "CLUSTER", "SETSLOT", slot, "NODE", target_id)


async def test_when_a_regions_master_dies_its_replica_takes_over_and_the_region_serves_on() -> None:
    region = f"failover-{uuid.uuid4().hex}"
    with redis_cluster(3, replicas=1, node_timeout_ms=1000) as nodes:
        master = (await slot_map(nodes))[slot_of(region)]
        survivor = next(node for node in nodes if node is not master)
        client = RedisCluster(host=survivor.host, port=survivor.port)
        ledger = RedisLedger(client, region)
        try:
            await ledger.apply_grant("g", "a", 100, await ledger.incarnation())
            before = [await ledger.deduct(f"before-{n}", (Line("a", 1, "u"),)) for n in range(5)]
            async with admin(master) as dying:
                assert await call(dying, "WAIT", 1, 5000) == 1  # its replica has every write: none is lost
            master.kill()

            async def serving() -> None:
                while True:
                    try:
                        await ledger.deduct("after", (Line("a", 1, "u"),))
                        return
                    except LedgerUnreachable:
                        await asyncio.sleep(0.1)

            async with asyncio.timeout(HANG_GUARD_S):
                await serving()
            replayed = [await ledger.deduct(f"before-{n}", (Line("a", 1, "u"),)) for n in range(5)]
            balance = await ledger.balance("a")
        finally:
            await ledger.aclose()
            await client.aclose()

    assert all(outcome.accepted for outcome in before)
    assert all(outcome.replayed for outcome in replayed)
    assert (balance.deducted, balance.kept) == (6, 94)
