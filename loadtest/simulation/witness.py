"""The servers' own storage, watched: the center's in-memory store and the agents' in-process ledger, each
remembering what the invariants (`invariants.py`) judge that cannot be read back from them afterwards.
They change nothing of what they watch."""

from __future__ import annotations

import json
from collections.abc import Sequence

from quota_center.audit import AuditRecord
from quota_center.ledger import PromotionState, RegionAccount
from quota_center.store.base import Commit
from quota_common.clock import Clock
from quota_testing.memory_store import MemoryStore
from region_agent.ledger.memory import InProcessLedger


class WitnessStore(MemoryStore):
    """Judges every commit against the state it replaces: the counters the center keeps never go back
    (per incarnation, and summed over them), whatever order reports arrive in."""

    def __init__(self) -> None:
        super().__init__()
        self.went_back: list[str] = []

    async def commit_many(self, commits: Sequence[Commit], audit: AuditRecord | None = None) -> None:
        before = {state.promotion.id: self.promotions[state.promotion.id] for state, _, _ in commits}
        await super().commit_many(commits, audit)
        for state, _, _ in commits:
            old = PromotionState.from_document(json.loads(before[state.promotion.id]))
            for region, account in state.accounts.items():
                if (went := _went_back(old.accounts.get(region, RegionAccount()), account)) is not None:
                    self.went_back.append(f"{state.promotion.id}/{region}: {went}")


def _went_back(old: RegionAccount, new: RegionAccount) -> str | None:
    def totals(a: RegionAccount) -> tuple[int, ...]:
        return a.total_granted, a.total_returned, a.written_off, a.retired_consumed, len(a.retired_incarnations)

    def counters(a: RegionAccount) -> tuple[int, ...]:
        return a.granted, a.returned, a.deducted, a.refunded

    if any(n < o for n, o in zip(totals(new), totals(old), strict=True)):
        return f"totals went back from {totals(old)} to {totals(new)}"
    if old.incarnation == new.incarnation and any(n < o for n, o in zip(counters(new), counters(old), strict=True)):
        return f"counters of {new.incarnation} went back from {counters(old)} to {counters(new)}"
    return None


class WitnessLedger(InProcessLedger):
    """Remembers the grants it applied: the checks tell a grant applied twice, or to a life it was not made to."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.applied: dict[str, tuple[str, int]] = {}
        """Grant id -> (promotion id, amount), for every grant this ledger took in."""
        self.twice: list[str] = []
        """Grant ids the ledger took in a second time."""

    async def apply_grant(self, grant_id: str, promotion_id: str, amount: int, incarnation: str) -> bool:
        applied = await super().apply_grant(grant_id, promotion_id, amount, incarnation)
        if applied and grant_id in self.applied:
            self.twice.append(grant_id)
        if applied:
            self.applied[grant_id] = (promotion_id, amount)
        return applied
