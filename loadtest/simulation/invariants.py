"""The design's invariants (docs/design.md), judged at any moment of a `World`'s run against what order
services were told, what the center books and what the live ledgers hold:

- no over-issue: the center never books beyond a budget, and no region acknowledged (net of refunds)
  more than the center booked to it, over all its processes;
- exactly once: a live ledger spent exactly what its process acknowledged, each order once;
- grants apply once, and only to the life they were made to;
- counters never go back (judged at every commit, `witness.WitnessStore`), and the center never knows
  more of a life than its ledger did;
- a ledger never has less than nothing available.
"""

from __future__ import annotations

from loadtest.simulation.world import Life, World
from quota_center.ledger import GrantRecord, RegionAccount
from quota_common.model import Promotion


class InvariantBroken(Exception):
    """The servers' code broke an invariant: a bug to fix, with the seed that shows it."""


class Invariants:
    def __init__(self, world: World) -> None:
        self._world = world

    async def violations(self) -> list[str]:
        """What is broken now, or went back since the run began, one line each."""
        found = list(self._world.store.went_back)
        accounts: dict[tuple[str, str], RegionAccount] = {}
        for promotion in self._world.center.promotions():
            found += self._books(promotion, accounts)
        grants = {grant.grant_id: grant for grant in self._world.store.grants.values()}
        for region in self._world.regions:
            if region.live is not None:
                found += await self._ledger(region.live, accounts, grants)
        return found

    def _books(self, promotion: Promotion, accounts: dict[tuple[str, str], RegionAccount]) -> list[str]:
        found = []
        usage = self._world.center.usage(promotion.id)
        if usage.unallocated < 0:
            found.append(f"{promotion.id}: the center booked {-usage.unallocated} beyond the budget")
        acknowledged = {
            region.name: sum(life.net[promotion.id] for life in region.lives) for region in self._world.regions
        }
        if sum(acknowledged.values()) > promotion.budget:
            found.append(f"{promotion.id}: over-issue, {sum(acknowledged.values())} acknowledged of {promotion.budget}")
        for view in usage.regions:
            account = accounts[(promotion.id, view.region)] = view.account
            if acknowledged.get(view.region, 0) > account.outstanding:
                found.append(
                    f"{promotion.id}: {view.region} acknowledged {acknowledged[view.region]} but the center booked "
                    f"it only {account.outstanding}"
                )
        return found

    async def _ledger(
        self, life: Life, accounts: dict[tuple[str, str], RegionAccount], grants: dict[str, GrantRecord]
    ) -> list[str]:
        found = [f"{life.region}: grant {grant_id} applied twice" for grant_id in life.ledger.twice]
        applied: dict[str, int] = {}
        for grant_id, (promotion_id, amount) in life.ledger.applied.items():
            applied[promotion_id] = applied.get(promotion_id, 0) + amount
            made = grants.get(grant_id)
            if made is None or (made.region, made.incarnation, made.promotion_id, made.amount) != (
                life.region,
                life.incarnation,
                promotion_id,
                amount,
            ):
                found.append(f"{life.region}: applied grant {grant_id} ({amount} of {promotion_id}), not made to it")
        for promotion_id, balance in (await life.ledger.balances()).items():
            where = f"{promotion_id} in {life.region}"
            if balance.available < 0:
                found.append(f"{where}: {balance.available} available")
            if balance.granted != applied.get(promotion_id, 0):
                found.append(
                    f"{where}: granted {balance.granted}, but grants of {applied.get(promotion_id, 0)} applied"
                )
            if balance.deducted - balance.refunded != life.net[promotion_id]:
                found.append(
                    f"{where}: the ledger spent {balance.deducted - balance.refunded} net, order services were "
                    f"told {life.net[promotion_id]}"
                )
            account = accounts.get((promotion_id, life.region))
            if account is not None and account.incarnation == life.incarnation:
                known = (account.returned, account.deducted, account.refunded)
                held = (balance.returned, balance.deducted, balance.refunded)
                if account.granted < balance.granted or any(c > h for c, h in zip(known, held, strict=True)):
                    found.append(f"{where}: the center knows more than the ledger ({account} vs {balance})")
        return found
