"""The thin shell around `shard_move` on a leading center of a group. `follow` watches the map in etcd and
keeps the center's current as each change is written (taking over the slots handed to its group at once);
one `step` moves each slot its group is giving away one phase on when it can: drain (the center asks its
regions), seal, copy, flip. The app runs `follow` and calls `step` every `interval_s` while it leads; a step
that fails (etcd away, a map changed under it) changes nothing the next step cannot redo: the copy is
idempotent, the flip a compare-and-swap.

Each step also reads the map itself: a watch can stall without a word (a partitioned etcd member keeps the
stream open and sends nothing), so the watch only makes a change arrive sooner; a stalled one delays it by
one step at most. Both hold one lock, and a map older than the one followed last is ignored, so a change
delivered late (by the watch or by a read) never takes the center back to a map it already left. Changes the
watch delivers while the center is still taking over an earlier one are coalesced: only the newest is applied
(a 2 -> 4 move flips hundreds of slots one at a time, and each take-over reads the group's store).
"""

from __future__ import annotations

import asyncio
import logging

from quota_center.center import Center
from quota_center.shard_move import Phase, SlotMove
from quota_center.store.etcd import DEFAULT_PREFIX
from quota_center.store.etcd_shards import EtcdShards, Layout, group_prefix
from quota_common.errors import NotLeader
from quota_common.shards import SLOTS

log = logging.getLogger(__name__)

FLIP_TRIES = SLOTS
"""Flips of one slot in one step, each by the map as read after the last lost its compare-and-swap. A lost one
means another change of the map won (another group's flip, mostly), so this bounds nothing that makes progress:
it only ends the step if the map kept changing for a whole map's worth of hand-overs."""


class ShardFollower:
    def __init__(self, center: Center, shards: EtcdShards, base_prefix: str = DEFAULT_PREFIX) -> None:
        self._center = center
        self._shards = shards
        self._base = base_prefix
        self._group = center.settings.group
        self._leaving: dict[int, SlotMove] = {}
        """This group's outgoing moves, with the phase each reached (the layout in etcd holds only targets)."""
        self._latest: Layout | None = None
        """The newest layout followed (watched, or written by this group's own flip); None before `prepare`."""
        self._lock = asyncio.Lock()

    async def prepare(self) -> None:
        """The map as stored, and the deployment's incarnation key, before the center serves after winning its
        group's election (the slots it was giving away start draining again: a conservative restart, the copy
        being repeatable)."""
        self._leaving, self._latest = {}, None
        # Before the center loads its key (`start`): one ledger life of an agent is good at every group.
        await self._shards.share_incarnation_key(self._group, self._base)
        layout = await self._shards.read(self._group)
        self._center.set_shards(layout.shard_map, self._moves(layout))
        self._latest = layout

    async def follow(self) -> None:
        """Follows the map as it changes, until cancelled (the app runs it while the center leads)."""
        pending: list[Layout] = []
        arrived = asyncio.Event()

        async def receive() -> None:
            async for layout in self._shards.watch(self._group):
                if not pending or layout.shard_map.version >= pending[0].shard_map.version:
                    pending[:] = [layout]
                    arrived.set()

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(receive())
            while True:
                await arrived.wait()
                arrived.clear()
                layout = pending.pop()
                async with self._lock:
                    await self._follow(layout)

    async def step(self) -> Layout:
        """One round, by the newer of the map as read now and as last watched; returns the layout as it stands
        after it."""
        async with self._lock:
            await self._follow(await self._shards.read(self._group))
            assert self._latest is not None, "set by _follow"
            layout = self._latest
            for slot in sorted(self._leaving):
                layout = await self._advance(layout, slot)
            return layout

    async def _follow(self, layout: Layout) -> None:
        if self._latest is not None and layout.shard_map.version < self._latest.shard_map.version:
            return  # delivered late: the center already follows a newer map
        self._latest = layout
        moves = self._moves(layout)
        self._leaving = {slot: move for slot, move in moves.items() if move.source == self._group}
        await self._center.take_over(layout.shard_map)
        self._center.set_shards(layout.shard_map, moves)

    def _moves(self, layout: Layout) -> dict[int, SlotMove]:
        """Every slot in migration, with the phase this group reached for those it gives away."""
        moves: dict[int, SlotMove] = {}
        for slot, target in layout.moving.items():
            known = self._leaving.get(slot)
            fresh = SlotMove(slot, layout.shard_map.owners[slot], target)
            moves[slot] = known if known is not None and known.target == target else fresh
        return moves

    async def _advance(self, layout: Layout, slot: int) -> Layout:
        move = self._leaving[slot].observe(self._center.slot_holdings(slot))
        self._set(layout, slot, move)  # DRAINED seals the slot before its copy is taken
        if move.phase is Phase.DRAINED:
            states = await self._center.sealed_states(slot)
            await self._shards.copy(states, group_prefix(move.target, self._base))
            move = move.copied()
            self._set(layout, slot, move)
            log.info("slot %d: %d promotions copied to group %s", slot, len(states), move.target)
        if move.phase is not Phase.COPIED:
            return layout
        # A sealed slot refuses every call of its promotions (a whole renewal naming one of them too): when
        # another group's flip changed the map first, flip again by the map as it is now, not a step later.
        for _ in range(FLIP_TRIES):
            _, shard_map = move.flip(layout.shard_map)
            after = Layout(shard_map, {s: t for s, t in layout.moving.items() if s != slot})
            if await self._shards.replace(layout, after, f"center group {self._group}"):
                break
            lost = layout
            layout = await self._shards.read(self._group)
            if layout.shard_map.version == lost.shard_map.version:
                # No other change won: the fence did (this center's leader key is gone), and it will not yield.
                raise NotLeader(None)
        else:
            return layout  # the next step redoes the flip
        del self._leaving[slot]
        await self._follow(after)
        log.info("slot %d: handed over to group %s (shard map version %d)", slot, move.target, shard_map.version)
        return after

    def _set(self, layout: Layout, slot: int, move: SlotMove) -> None:
        self._leaving[slot] = move
        self._center.set_shards(layout.shard_map, self._moves(layout))
