"""A promotion's usage over time, by region: sampled points, coarser as they age, bounded in size. Pure.

Each point holds cumulative figures (consumed so far, granted minus returned so far), so a coarser bucket
keeps the last point that fell in it: nothing of what happened is lost, only when it happened gets
blurrier. Buckets are aligned to the epoch and each step divides the next, so downsampling again later
keeps the same points.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS


@dataclass(frozen=True)
class Tier:
    younger_than_ms: int | None
    """Points younger than this fall in this tier (None: every older point)."""
    step_ms: int


TIERS = (Tier(HOUR_MS, 10_000), Tier(48 * HOUR_MS, 5 * MINUTE_MS), Tier(None, HOUR_MS))
"""10 s points for the last hour, 5 min points for two days, hourly beyond."""
REGION_POINTS = 2_000
"""The most points one region keeps: the tiers above fill about 940, the rest are weeks of hourly points."""
PROMOTION_POINTS = 8_000
"""The most points a promotion keeps over all its regions, so its stored document stays small."""


Point = tuple[int, int, int]
"""(at_ms, consumed, granted): when; net deductions so far; granted minus returned so far (what the region held
or spent). A plain tuple of ints, not a class, because the garbage collector stops tracking such a tuple (never
an instance of a class, a NamedTuple's included): a center holds a point per pair every 10 s for the last hour,
millions at 100,000 pairs, and a full collection walks every tracked object (see `quota_common.gc_policy`)."""


def bucket(at_ms: int, now_ms: int) -> tuple[int, int]:
    """The tier a point of `at_ms` is in at `now_ms`, and its bucket within the tier."""
    age = now_ms - at_ms
    for index, tier in enumerate(TIERS):
        if tier.younger_than_ms is None or age < tier.younger_than_ms:
            return index, at_ms // tier.step_ms
    raise AssertionError("the last tier takes every age")


def downsample(points: Sequence[Point], now_ms: int, limit: int) -> list[Point]:
    """The last point of each bucket, oldest first, at most `limit` (the newest); `points` oldest first."""
    kept: list[Point] = []
    for point in points:
        if kept and bucket(kept[-1][0], now_ms) == bucket(point[0], now_ms):
            kept[-1] = point
        else:
            kept.append(point)
    return kept[-limit:] if limit > 0 else []


def region_limit(regions: int) -> int:
    return min(REGION_POINTS, PROMOTION_POINTS // max(regions, 1))


def _at(point: Point) -> int:
    return point[0]


def _merge_aged(series: list[Point], since_ms: int, now_ms: int) -> None:
    """What `downsample` at `now_ms` keeps of `series`, in place, for a series downsampled at `since_ms` (not
    later) with points appended since. A point's bucket changes only when its age crosses a tier's bound, and
    only such points (next to their older neighbour) and the appended ones can share a bucket now: the
    stretches around them are downsampled, not the whole series, so a sample costs the same after weeks."""
    windows = [(len(series) - 2, len(series))]
    for tier in TIERS:
        if tier.younger_than_ms is not None:
            first = bisect.bisect_right(series, since_ms - tier.younger_than_ms, key=_at)
            last = bisect.bisect_right(series, now_ms - tier.younger_than_ms, key=_at)
            if first < last:
                windows.append((first - 1, last))
    merged: list[tuple[int, int]] = []
    for start, end in sorted((max(start, 0), end) for start, end in windows):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    for start, end in reversed(merged):  # the newest first, so the older stretches' indices still hold
        series[start:end] = downsample(series[start:end], now_ms, end - start)


@dataclass
class PromotionHistory:
    regions: dict[str, list[Point]] = field(default_factory=dict)
    _downsampled_at_ms: int | None = field(default=None, init=False, repr=False, compare=False)
    """When every series was last downsampled here (None: never, as after loading: the next record downsamples
    every series whole)."""

    def record(self, samples: Iterable[tuple[str, Point]], now_ms: int) -> bool:
        """Adds one sample per region and downsamples every region; returns whether any figure changed
        since the region's previous point (a point that only repeats the figures need not be stored)."""
        changed = False
        since = self._downsampled_at_ms
        for region, point in samples:
            series = self.regions.setdefault(region, [])
            if series and series[-1][0] >= point[0]:
                # A wall clock that stepped back: the newest sample wins over points it would follow.
                series[:] = [p for p in series if p[0] < point[0]]
            changed |= not series or series[-1][1:] != point[1:]
            series.append(point)
        limit = region_limit(len(self.regions))
        for series in self.regions.values():
            if since is None or now_ms < since:
                series[:] = downsample(series, now_ms, limit)
            else:
                _merge_aged(series, since, now_ms)
                del series[: max(0, len(series) - limit)]
        self._downsampled_at_ms = now_ms
        return changed

    def to_document(self) -> dict[str, Any]:
        return {region: [list(p) for p in series] for region, series in self.regions.items()}

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> PromotionHistory:
        return cls({region: [(at, used, granted) for at, used, granted in rows] for region, rows in document.items()})
