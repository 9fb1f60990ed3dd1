"""The follower of the shard map against scripted maps (no etcd): a watch that stalls does not keep a center on
an old map, changes that arrive while it takes one over are coalesced, and a flip lost to a fence is not retried
as if another change had won it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import pytest

from quota_center.center import Center
from quota_center.shard_follower import ShardFollower
from quota_center.store import etcd_shards
from quota_center.store.etcd_shards import EtcdShards, Layout
from quota_common.errors import NotLeader
from quota_common.shards import ShardMap
from quota_testing.support import eventually


def layout(version: int, moving: dict[int, str] | None = None) -> Layout:
    return Layout(ShardMap(version, ShardMap.even(["a", "b"]).owners), moving or {})


class Followed:
    """The parts of a center the follower drives; records each map it takes over."""

    def __init__(self) -> None:
        self.settings = SimpleNamespace(group="a")
        self.taken: list[int] = []

    def set_shards(self, shard_map: ShardMap, moving: object) -> None:
        pass

    async def take_over(self, shard_map: ShardMap) -> None:
        self.taken.append(shard_map.version)
        await asyncio.sleep(0)

    def slot_holdings(self, slot: int) -> dict[str, Any]:
        return {}

    async def sealed_states(self, slot: int) -> list[Any]:
        return []


class Scripted:
    """The map in etcd as the test scripts it: `stored` is what a read answers; the watch yields `watched`, then
    stays silent forever (a stalled stream)."""

    def __init__(self, stored: Layout, watched: list[Layout]) -> None:
        self.stored, self.watched = stored, watched
        self.replaced = 0

    async def share_incarnation_key(self, group: str, base: str) -> None:
        pass

    async def read(self, group: str) -> Layout:
        return self.stored

    async def watch(self, group: str) -> AsyncGenerator[Layout, None]:
        for each in self.watched:
            yield each
        await asyncio.Future()

    async def copy(self, states: object, target_prefix: str) -> None:
        pass

    async def replace(self, before: Layout, after: Layout, actor: str) -> bool:
        self.replaced += 1
        return False  # as when the group's leader key is gone: the map itself did not change


@contextlib.asynccontextmanager
async def following(center: Followed, shards: Scripted) -> AsyncIterator[ShardFollower]:
    follower = ShardFollower(cast(Center, center), cast(EtcdShards, shards))
    await follower.prepare()
    task = asyncio.create_task(follower.follow())
    try:
        yield follower
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_step_reads_the_map_even_while_the_watch_is_silent() -> None:
    center, shards = Followed(), Scripted(layout(1), [layout(1)])
    async with following(center, shards) as follower:

        async def took_first() -> bool:
            return center.taken == [1]

        await eventually(took_first, timeout_s=5)
        shards.stored = layout(2)  # written while the watch stalls
        await follower.step()
    assert center.taken[-1] == 2


async def test_changes_that_arrive_during_a_take_over_are_applied_once_newest_first() -> None:
    center, shards = Followed(), Scripted(layout(1), [layout(v) for v in range(1, 101)])

    async def took_newest() -> bool:
        return center.taken[-1:] == [100]

    async with following(center, shards):
        await eventually(took_newest, timeout_s=5)
    assert len(center.taken) <= 3, center.taken  # not one store load per change


async def test_a_flip_refused_while_the_map_stands_still_is_a_lost_leadership() -> None:
    center = Followed()
    shards = Scripted(layout(1, {0: "b"}), [])
    follower = ShardFollower(cast(Center, center), cast(EtcdShards, shards))
    await follower.prepare()
    with pytest.raises(NotLeader):
        await follower.step()  # nothing held: drained, copied, then the flip
    assert shards.replaced == 1


async def test_a_watch_that_ends_pauses_before_reading_the_map_again(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        await real_sleep(0)

    async def ended(*args: object, **kwargs: object) -> AsyncIterator[object]:
        for _ in ():
            yield _

    async def get(*args: object, **kwargs: object) -> object:
        return SimpleNamespace(kvs=[], header=SimpleNamespace(revision=7))

    client = SimpleNamespace(kv=SimpleNamespace(get=get), watch=SimpleNamespace(watch=ended))
    shards = EtcdShards(cast(Any, SimpleNamespace(client=client)), "/test/shards/map")
    monkeypatch.setattr(asyncio, "sleep", sleep)
    watching = shards.watch("a")
    try:
        for _ in range(3):
            await anext(watching)
    finally:
        await watching.aclose()
    assert pauses == [etcd_shards.REWATCH_S] * 2
