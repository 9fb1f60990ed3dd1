"""A promotion's usage history: bounded, ordered, coarser as it ages, never losing the latest point, and
keeping the last (cumulative) figures of every bucket it merges."""

from __future__ import annotations

import gc
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from quota_center.history import HOUR_MS, PROMOTION_POINTS, Point, PromotionHistory, bucket, downsample, region_limit

NOW = 1_700_000_000_000


@st.composite
def series(draw: st.DrawFn) -> list[Point]:
    """Sampled points up to NOW, oldest first, with cumulative figures."""
    gaps = draw(st.lists(st.integers(1, 20 * HOUR_MS), min_size=1, max_size=300))
    at, consumed, granted, points = NOW, 0, 0, []
    for gap in gaps:
        consumed += draw(st.integers(0, 5))
        granted += draw(st.integers(0, 5))
        points.append((at, consumed, granted))
        at -= gap
    return points[::-1]


@given(series(), st.integers(1, 500), st.integers(0, 3 * HOUR_MS))
def test_downsampling_is_bounded_ordered_keeps_the_latest_and_each_buckets_last(
    points: list[Point], limit: int, later: int
) -> None:
    now = NOW + later

    kept = downsample(points, now, limit)

    assert len(kept) <= limit
    assert kept[-1] == points[-1]
    assert all(a[0] < b[0] for a, b in itertools.pairwise(kept))
    assert set(kept) <= set(points)
    buckets = {bucket(p[0], now): p for p in points}  # the last point of each bucket
    assert kept == sorted(buckets.values(), key=lambda p: p[0])[-limit:]


@given(series())
def test_downsampling_again_later_keeps_what_it_would_keep_at_once(points: list[Point]) -> None:
    later = NOW + 5 * HOUR_MS

    assert downsample(downsample(points, NOW, 10_000), later, 10_000) == downsample(points, later, 10_000)


def test_a_day_of_samples_every_10_seconds_becomes_coarser_as_it_ages() -> None:
    history = PromotionHistory()
    for tick in range(8_640):
        at = NOW + tick * 10_000
        history.record([("eu", (at, tick, tick * 2))], at)

    eu = history.regions["eu"]
    last_hour = [p for p in eu if p[0] > eu[-1][0] - HOUR_MS]
    assert len(last_hour) == 360
    assert 360 + 23 * 12 - 1 <= len(eu) <= 360 + 23 * 12 + 1
    assert eu[-1] == (NOW + 8_639 * 10_000, 8_639, 17_278)


def test_a_promotion_with_many_regions_stays_within_its_bound() -> None:
    history = PromotionHistory()
    regions = [f"r{n}" for n in range(40)]
    for tick in range(400):
        at = NOW + tick * 10_000
        history.record([(region, (at, tick, tick)) for region in regions], at)

    assert sum(len(points) for points in history.regions.values()) <= PROMOTION_POINTS


def test_only_new_figures_are_a_change_and_a_clock_stepping_back_keeps_the_newest_sample() -> None:
    history = PromotionHistory()

    assert history.record([("eu", (NOW, 1, 5))], NOW)
    assert not history.record([("eu", (NOW + 20_000, 1, 5))], NOW + 20_000)
    assert history.record([("eu", (NOW + 10_000, 2, 5))], NOW + 10_000)
    assert history.regions["eu"] == [(NOW, 1, 5), (NOW + 10_000, 2, 5)]
    assert PromotionHistory.from_document(history.to_document()) == history


def _recorded_whole(history: dict[str, list[Point]], samples: list[tuple[str, Point]], now: int) -> None:
    """What `record` did before it downsampled only the stretches that aged: every series whole, every time."""
    for region, point in samples:
        history[region] = [*(p for p in history.get(region, []) if p[0] < point[0]), point]
    limit = region_limit(len(history))
    for region, points in history.items():
        history[region] = downsample(points, now, limit)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.integers(-30_000, 60_000), st.integers(0, HOUR_MS), st.integers(0, 50 * HOUR_MS)),
            st.lists(st.sampled_from(["eu", "us", "ap"]), max_size=3, unique=True),
            st.integers(0, 3),
        ),
        min_size=1,
        max_size=300,
    )
)
def test_recording_keeps_exactly_what_downsampling_every_series_whole_keeps(
    steps: list[tuple[int, list[str], int]],
) -> None:
    """Samples seconds, minutes or days apart (the clock stepping back now and then), of some regions, so
    points age across the tiers' bounds and merge there."""
    history, whole, now, figure = PromotionHistory(), dict[str, list[Point]](), NOW, 0
    for gap, regions, more in steps:
        now += gap
        figure += more
        samples = [(region, (now, figure, figure)) for region in regions]
        history.record(samples, now)
        _recorded_whole(whole, samples, now)
        assert history.regions == whole


def test_a_recorded_point_is_left_alone_by_the_garbage_collector() -> None:
    history = PromotionHistory()
    history.record([("eu", (NOW, 1, 5))], NOW)
    restored = PromotionHistory.from_document(history.to_document())
    gc.collect()  # a collection untracks a tuple holding only untracked values; never a class's instance

    assert not gc.is_tracked(history.regions["eu"][0])
    assert not gc.is_tracked(restored.regions["eu"][0])
