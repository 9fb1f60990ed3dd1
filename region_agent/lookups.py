"""How often an agent asks the center about promotions it has not heard of: a token bucket, so that orders
naming ids nobody knows (a buggy or hostile order service, random ids) cost the center at most a steady
trickle of lookups per agent instead of one call per order. Promotions reach an agent through its catalog
(push and pull); a lookup only covers an order that arrives before its promotion does, and one that finds
its promotion is given back (the cache has it from then on), so the budget is spent by ids nobody knows.

    LookupBudget(per_s, burst, now)
      .spend(promotion_ids, now)   a lookup for each, all or none: LookupsSpent (nothing applied) when short
      .give_back(count)            lookups that found their promotion
"""

from __future__ import annotations

import logging
import math

from quota_common.errors import LookupsSpent

log = logging.getLogger(__name__)

LOOKUPS_PER_S = 20.0
"""Lookups of unheard-of promotions one agent makes a second, sustained."""
LOOKUP_BURST = 100
"""As many at once: a batch of promotions created just before their orders arrive."""
SAID_EVERY_S = 60.0
"""At most this often the agent logs that orders named more unheard-of promotions than it looks up."""


class LookupBudget:
    def __init__(self, per_s: float, burst: int, now: float) -> None:
        self._per_s = per_s
        self._burst = burst
        self._tokens = float(burst)
        self._at = now
        self._said_at = -math.inf

    def spend(self, promotion_ids: list[str], now: float) -> None:
        """Spends a lookup for each promotion at monotonic time `now` (never earlier than the last call's), or
        none when fewer are left: an order refused here wastes none that its retry will need."""
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._per_s)
        self._at = now
        short = len(promotion_ids) - self._tokens
        if short <= 0:
            self._tokens -= len(promotion_ids)
            return
        promotion_id = promotion_ids[0]
        if now - self._said_at >= SAID_EVERY_S:
            self._said_at = now
            log.warning(
                "orders name more promotions this agent has not heard of than the %.0f a second it looks up at "
                "the center (%r among them): they are answered UNAVAILABLE until the rate falls; check the "
                "promotion ids the order services send",
                self._per_s,
                promotion_id,
            )
        raise LookupsSpent(
            f"promotion {promotion_id!r} is not known to this agent, and orders name more such promotions than "
            f"the {self._per_s:.0f} a second it looks up at the center: nothing was applied; retry shortly, and "
            "check that the id is right",
            promotion_id,
            short / self._per_s,
        )

    def give_back(self, count: int) -> None:
        self._tokens = min(self._burst, self._tokens + count)
