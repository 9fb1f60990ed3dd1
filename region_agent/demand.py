"""Measured demand: an exponentially decayed rate, pure and driven by the caller's clock."""

from __future__ import annotations

import math


class RateMeter:
    """Units per second, each observation weighted by exp(-age / tau).

    O(1) per observation and always current: the estimate decays on its own when demand
    stops, so an idle region's demand reads as low without anyone resetting it.
    """

    def __init__(self, tau_s: float = 1.0) -> None:
        self._tau = tau_s
        self.peak = 0.0
        """The rate as of the last observation: it only decays from there, so no later rate is higher. An
        attribute, not a property: the order path reads it on every order."""
        self._at: float | None = None

    def observe(self, amount: int, now: float) -> None:
        self.peak = self._decayed(now) + amount / self._tau
        self._at = now

    def rate(self, now: float) -> float:
        return self._decayed(now)

    def _decayed(self, now: float) -> float:
        if self._at is None:
            return 0.0
        return self.peak * math.exp(-max(0.0, now - self._at) / self._tau)
