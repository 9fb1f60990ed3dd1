"""What a center group does about the shard map: follow it (`set_shards`), serve the slots it gains
(`take_over`), and give one away: report what its regions hold (`slot_holdings`) and, once sealed, hand over
a final copy of its promotions (`sealed_states`). The steps and their order are `shard_move`'s; the app's
follower (`shard_follower`) drives them."""

from __future__ import annotations

from quota_center.center_core import CenterCore
from quota_center.ledger import PromotionState
from quota_center.shard_move import Holding, SlotMove
from quota_common.shards import ShardMap


class CenterShards(CenterCore):
    def set_shards(self, shard_map: ShardMap, moving: dict[int, SlotMove]) -> None:
        """The shard map and the slots in migration as they stand now."""
        self._shards, self._moving = shard_map, dict(moving)
        self._note_draining()
        self._publish()  # streams wake up: a promotion may have arrived or left

    async def take_over(self, shard_map: ShardMap) -> None:
        """Adopts `shard_map`: the promotions of slots it newly gives this group are read from the store (their
        copies were written there before the map changed) and given fresh revisions of this group's catalog
        (`_renumbered`), and those of slots it took away are forgotten. One that fails leaves every change that
        takes a catalog revision refused until a take-over completes (`_next_revision`)."""
        self._require_leader()
        group = self.settings.group
        gained = {s for s, owner in enumerate(shard_map.owners) if owner == group and self._shards.owners[s] != group}
        lost = {s for s, owner in enumerate(shard_map.owners) if owner != group and self._shards.owners[s] == group}
        if gained:
            # Read before the lock (a full read of the store): nothing else writes these documents, which the
            # source sealed and no replica of this group serves yet.
            arrived = [s for s in await self._store.load_all() if shard_map.slot(s.promotion.id) in gained]
            # Configuration changes wait: one committed meanwhile would take a revision this renumbering gives too.
            async with self._configuring:
                try:
                    renumbered = await self._renumbered(arrived)
                except BaseException:
                    # Some may be stored at their new revisions already (a batch written, or one whose answer
                    # was lost): a change taking one of those too would hide the promotion from an agent whose
                    # cursor passed it, once a later leader serves what is stored.
                    self._take_over_owed = True
                    raise
                grace = self._clock.monotonic() + self.settings.lease_ttl_s
                for state in renumbered:
                    self._states[state.promotion.id] = state
                    self._note_lives(state)
                    for region in state.accounts:
                        self._lease_expiry[(state.promotion.id, region)] = grace
                    self._changed(state.promotion)
        self._take_over_owed = False
        if lost:  # the shard follower adopts the map every second, mostly the one it has: no scan then
            for promotion_id in [pid for pid in self._states if shard_map.slot(pid) in lost]:
                del self._states[promotion_id]
                self._contested.discard(promotion_id)
        self.set_shards(shard_map, {s: m for s, m in self._moving.items() if shard_map.owners[s] == m.source})

    def slot_holdings(self, slot: int) -> dict[str, dict[str, Holding]]:
        """By promotion of the slot, by region: what the region holds and whether its lease still runs."""
        self._require_leader()
        now = self._clock.monotonic()
        holdings: dict[str, dict[str, Holding]] = {}
        for promotion_id, state in self._states.items():
            if self._shards.slot(promotion_id) == slot:
                holdings[promotion_id] = {
                    region: Holding(account.held, self._lease_ends(promotion_id, region) > now)
                    for region, account in state.accounts.items()
                }
        return holdings

    async def sealed_states(self, slot: int) -> list[PromotionState]:
        """Copies of the slot's promotions, taken under their locks once the slot is sealed (`set_shards`
        with its move DRAINED): a call that passed its check before the seal has committed, and none after it
        may, so the copies are final. Each is marked as numbered by this group's catalog, so whichever leader of
        the target serves it first gives it a revision of the target's own (`CenterCore.start`, `take_over`)."""
        ids = [pid for pid in self._states if self._shards.slot(pid) == slot]

        async def take() -> list[PromotionState]:
            copies = [self._states[pid].copy() for pid in ids]
            for state in copies:
                state.numbered_by = self.settings.group
            return copies

        return await self._exclusively(ids, take)

    def _lease_ends(self, promotion_id: str, region: str) -> float:
        expiry = self._lease_expiry.get((promotion_id, region), 0.0)
        return max(expiry, self._region_lease.get(region, expiry))
