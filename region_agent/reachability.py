"""Whether the center answers, as the renew loop sees it: one line when it is lost, one when it is back.

Pure and driven by the caller's clock. A renewal fails every fraction of a second while the center is
away; people need the moment it went and how long it stayed away, not a line per attempt.
"""

from __future__ import annotations

from quota_common.clock import Clock, iso


class Reachability:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lost_at: float | None = None
        """Monotonic time of the first failed renewal of the current outage; None: the center answers."""

    @property
    def lost(self) -> bool:
        return self._lost_at is not None

    def lost_for_s(self) -> float:
        """Seconds since the current outage began; 0 while the center answers."""
        return 0.0 if self._lost_at is None else self._clock.monotonic() - self._lost_at

    def failed(self, why: str) -> str | None:
        """The line to log when this failure starts an outage; None while one is under way."""
        if self._lost_at is not None:
            return None
        self._lost_at = self._clock.monotonic()
        return (
            f"lost the center at {iso(self._clock.wall_ms())} ({why}); spending what the region holds "
            "until its leases run out, renewing as soon as the center answers"
        )

    def answered(self) -> str | None:
        """The line to log when this answer ends an outage; None when there was none."""
        if self._lost_at is None:
            return None
        away_s, self._lost_at = self._clock.monotonic() - self._lost_at, None
        return f"the center is back after {away_s:.1f} s"
