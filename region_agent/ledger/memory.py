"""The embedded default: the regional ledger in this process's memory.

Nothing survives a restart, so every start is a new incarnation and the center writes
off what the previous one held (counted in usage, never granted again). Atomicity comes
free: methods run on the event loop without awaiting in between.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from quota_common.clock import Clock, SystemClock
from quota_common.errors import LedgerLost
from quota_common.incarnation import new_incarnation
from region_agent.ledger.base import (
    NO_LIMITS,
    RETENTION_S,
    Balance,
    DeductOutcome,
    Issuer,
    Joined,
    Line,
    OrderView,
    RefundOutcome,
    Settle,
    SettleOutcome,
    UserLimit,
)
from region_agent.ledger.local import LocalLedger


class InProcessLedger:
    outlives_agent = False

    def __init__(self, clock: Clock | None = None, retention_s: float = RETENTION_S) -> None:
        self._ledger = LocalLedger(max(1, round(retention_s * 1000)))
        self._clock = clock or SystemClock()
        self._incarnation = ""
        self._after_earlier_life = True
        """Until the center says otherwise, an earlier process of the region may have held orders."""

    async def aclose(self) -> None:
        """Nothing to release: it lives in this process's memory."""

    async def incarnation(self, issue: Issuer | None = None) -> str:
        """Taken once, when first asked: this ledger lives as long as its process."""
        if not self._incarnation:
            # Without the center, nothing says whether a process before this one held orders: it may have.
            unsigned = Joined(new_incarnation(time.time_ns()), after_earlier_life=True)
            joined = unsigned if issue is None else await issue("")
            # Several callers may have joined at once while the center was away: the first answer stays.
            if not self._incarnation:
                self._incarnation, self._after_earlier_life = joined.incarnation, joined.after_earlier_life
        return self._incarnation

    async def find_order(
        self, order_key: str, lines: tuple[Line, ...], reserve: bool = False, placer: str = ""
    ) -> DeductOutcome | None:
        return self._ledger.find_order(order_key, lines, reserve, placer)

    async def get_order(self, order_key: str, placer: str = "") -> OrderView | None:
        return self._ledger.get_order(order_key, self._clock.wall_ms(), placer)

    async def life_lost(self) -> bool:
        """Whether the center said, when this life joined, that the region had an earlier one: this ledger
        began with its process, and whatever a process before it held went with that process (the center
        wrote it off). Without the center's word (a ledger run without a center), it cannot know: True."""
        return self._after_earlier_life

    async def deduct(
        self,
        order_key: str,
        lines: tuple[Line, ...],
        limits: Mapping[str, UserLimit] = NO_LIMITS,
        hold_ms: int = 0,
        placer: str = "",
    ) -> DeductOutcome:
        return self._ledger.deduct(order_key, lines, limits, hold_ms, self._clock.wall_ms(), placer)

    async def settle(self, order_key: str, how: Settle, placer: str = "") -> SettleOutcome:
        return self._ledger.settle(order_key, how, self._clock.wall_ms(), placer)

    async def expire_reservations(self) -> int:
        return self._ledger.expire(self._clock.wall_ms())

    async def refund(self, order_key: str, refund_id: str, lines: tuple[Line, ...], placer: str = "") -> RefundOutcome:
        return self._ledger.refund(order_key, refund_id, lines, self._clock.wall_ms(), placer)

    async def apply_grant(self, grant_id: str, promotion_id: str, amount: int, incarnation: str) -> bool:
        if incarnation != self._incarnation:
            raise LedgerLost(f"grant {grant_id} was made to incarnation {incarnation}, not this ledger's")
        return self._ledger.apply_grant(grant_id, promotion_id, amount)

    async def return_quota(self, promotion_id: str, amount: int) -> int:
        return self._ledger.return_quota(promotion_id, amount)

    async def claim_refill(self, promotion_id: str, holder: str, ttl_s: float) -> bool:
        """One agent per in-process ledger: its own single-flight refills are claim enough."""
        return True

    async def release_refill(self, promotion_id: str, holder: str) -> None:
        return None

    async def balance(self, promotion_id: str) -> Balance:
        return self._ledger.balance(promotion_id)

    async def balances(self) -> dict[str, Balance]:
        return self._ledger.balances()
