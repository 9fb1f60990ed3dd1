"""How often an agent asks the center about promotions it has not heard of: a token bucket, so that orders
naming ids nobody knows (a buggy or hostile order service, random ids) cost the center at most a steady
trickle of lookups per agent instead of one call per order. Promotions reach an agent through its catalog
(push and pull); a lookup only covers an order that arrives before its promotion does.

    LookupBudget(per_s, burst, now)
      .take(now) -> bool           True: one lookup spent; False: none left
      .spend(promotion_ids, now)   one lookup each, or Unavailable (nothing applied, retry) once none is left
"""

from __future__ import annotations

import logging
import math

from quota_common.errors import Unavailable

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

    def take(self, now: float) -> bool:
        """Spends one lookup if one is left at monotonic time `now` (never earlier than the last call's)."""
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._per_s)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def spend(self, promotion_ids: list[str], now: float) -> None:
        """Takes a lookup for each promotion the center is about to be asked about."""
        for promotion_id in promotion_ids:
            if self.take(now):
                continue
            if now - self._said_at >= SAID_EVERY_S:
                self._said_at = now
                log.warning(
                    "orders name more promotions this agent has not heard of than the %.0f a second it looks up "
                    "at the center (%r among them): they are answered UNAVAILABLE until the rate falls; check "
                    "the promotion ids the order services send",
                    self._per_s,
                    promotion_id,
                )
            raise Unavailable(
                f"promotion {promotion_id!r} is not known to this agent, and orders name more such promotions "
                f"than the {self._per_s:.0f} a second it looks up at the center: nothing was applied; retry "
                "shortly, and check that the id is right"
            )
