"""The catalog's pure parts: the revision index, the emergency switch, and the agent's promotion
cache fed by pages that arrive late, twice or out of order."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quota_center.catalog import RevisionIndex
from quota_common.model import EmergencyFreeze, Kind, Promotion
from quota_common.shards import DEFAULT_GROUP
from region_agent.cache import CatalogSnapshot, PromotionCache

QUICK = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

IDS = ("p0", "p1", "p2", "p3")
REGIONS = ("eu", "us", "ap")


def promotion(promotion_id: str, revision: int, budget: int = 100, start_ms: int = 0) -> Promotion:
    return Promotion(promotion_id, Kind.COUNT, "", budget, start_ms, start_ms + 1_000, ("eu",), revision=revision)


@dataclass(frozen=True)
class History:
    """Configuration changes in revision order: a promotion's new version, or a new emergency switch."""

    changes: list[Promotion | EmergencyFreeze]

    def pages(self, cuts: list[int]) -> list[CatalogSnapshot]:
        """The history cut at `cuts`; each page carries the switch as it stood at its last revision."""
        pages, emergency, start = [], EmergencyFreeze(), 0
        for end in [*sorted(set(cuts)), len(self.changes)]:
            if end <= start:
                continue
            chunk = self.changes[start:end]
            emergency = next((c for c in reversed(chunk) if isinstance(c, EmergencyFreeze)), emergency)
            promotions = [c for c in chunk if isinstance(c, Promotion)]
            pages.append(CatalogSnapshot(promotions, emergency, chunk[-1].revision))
            start = end
        return pages


@st.composite
def histories(draw: st.DrawFn) -> History:
    changes: list[Promotion | EmergencyFreeze] = []
    switch, revision = EmergencyFreeze(), 0
    for _ in range(draw(st.integers(min_value=1, max_value=30))):
        revision += draw(st.integers(min_value=1, max_value=3))
        if draw(st.integers(min_value=0, max_value=4)) == 0:
            region = draw(st.sampled_from(("", *REGIONS)))
            switched = switch.switched(region, draw(st.booleans()), revision)
            if switched is not None:
                switch = switched
                changes.append(switch)
                continue
        promotion_id = draw(st.sampled_from(IDS))
        changes.append(promotion(promotion_id, revision, budget=draw(st.integers(min_value=0, max_value=10**6))))
    return History(changes)


@QUICK
@given(history=histories(), data=st.data())
def test_pages_in_any_order_with_repeats_and_stale_puts_end_at_the_latest_versions(
    history: History, data: st.DataObject
) -> None:
    cuts = data.draw(st.lists(st.integers(min_value=1, max_value=len(history.changes)), max_size=8), label="cuts")
    pages = history.pages(cuts)
    versions = [c for c in history.changes if isinstance(c, Promotion)]
    deliveries: list[CatalogSnapshot | Promotion] = [*pages]
    deliveries += data.draw(st.lists(st.sampled_from(pages), max_size=6), label="repeats")
    if versions:
        deliveries += data.draw(st.lists(st.sampled_from(versions), max_size=8), label="puts")
    deliveries = data.draw(st.permutations(deliveries), label="order")
    by_revision = {p.revision: p for p in versions}
    cache = PromotionCache()

    for delivery in deliveries:
        before = {promotion_id: cache.get(promotion_id) for promotion_id in IDS}
        cursor, switch = cache.revision, cache.emergency
        if isinstance(delivery, CatalogSnapshot):
            cache.apply(delivery)
        else:
            cache.put([delivery])
        for promotion_id, held in before.items():
            now = cache.get(promotion_id)
            if held is not None:
                assert now is not None
                assert now.revision >= held.revision
            if now is not None:
                assert by_revision[now.revision] == now  # a version that existed, never a mix
        assert cache.revision >= cursor
        assert cache.emergency.revision >= switch.revision

    latest = {p.id: p for p in versions}
    assert {promotion_id: cache.get(promotion_id) for promotion_id in latest} == latest
    assert len(cache) == len(latest)
    switches = [c for c in history.changes if isinstance(c, EmergencyFreeze)]
    assert cache.emergency == (switches[-1] if switches else EmergencyFreeze())
    assert cache.revision == history.changes[-1].revision
    assert sorted(cache.snapshot().promotions, key=lambda p: p.id) == sorted(latest.values(), key=lambda p: p.id)


def test_put_does_not_move_the_cursor_and_apply_reports_only_what_changed() -> None:
    cache = PromotionCache()
    assert cache.put([promotion("p0", 4)]) == [promotion("p0", 4)]
    assert cache.revision == 0

    changed = cache.apply(CatalogSnapshot([promotion("p0", 3), promotion("p1", 5)], EmergencyFreeze(), 5))

    assert changed == [promotion("p1", 5)]
    assert cache.get("p0") == promotion("p0", 4)
    assert cache.revision == 5
    assert cache.apply(CatalogSnapshot([promotion("p1", 5)], EmergencyFreeze(), 2)) == []
    assert cache.revision == 5


def test_a_groups_snapshot_holds_only_the_entries_its_catalog_or_copy_brought() -> None:
    cache, none = PromotionCache(), EmergencyFreeze()
    cache.put([promotion("fetched", 4)])  # no catalog carried it yet
    cache.apply(CatalogSnapshot([promotion("p0", 3), promotion("moved", 5)], none, 5))
    cache.apply(CatalogSnapshot([promotion("p1", 2), promotion("moved", 7)], none, 7), "g1")  # moved to g1
    cache.apply(CatalogSnapshot([promotion("moved", 5)], none, 5))  # its former group's late page
    cache.apply(CatalogSnapshot([promotion("fetched", 3)], none, 8), "g1")  # g1 carries it, at an older version
    cache.put([promotion("p1", 9)])  # fetched anew: still g1's

    def held(group: str) -> dict[str, int]:
        return {p.id: p.revision for p in cache.snapshot(group).promotions}

    assert held(DEFAULT_GROUP) == {"p0": 3}
    assert held("g1") == {"p1": 9, "moved": 7, "fetched": 4}
    assert (cache.snapshot().revision, cache.snapshot("g1").revision) == (5, 8)


@QUICK
@given(
    records=st.lists(st.tuples(st.sampled_from(IDS), st.integers(min_value=1, max_value=5)), min_size=0, max_size=40),
)
def test_changed_after_is_every_id_changed_since_in_revision_order(records: list[tuple[str, int]]) -> None:
    index, revision = RevisionIndex(), 0
    last: dict[str, int] = {}
    for promotion_id, gap in records:
        revision += gap
        index.record(promotion_id, revision)
        last[promotion_id] = revision

    for after in range(revision + 2):
        expected = sorted((i for i, r in last.items() if r > after), key=last.__getitem__)
        assert list(index.changed_after(after)) == expected
    index.clear()
    assert list(index.changed_after(0)) == []


def test_changed_after_from_zero_lists_every_id_once() -> None:
    index = RevisionIndex()
    for revision, promotion_id in enumerate(["a", "b", "a", "c", "b"], start=1):
        index.record(promotion_id, revision)

    assert list(index.changed_after(0)) == ["a", "c", "b"]
    assert list(index.changed_after(3)) == ["c", "b"]
    assert list(index.changed_after(5)) == []


def test_a_switch_that_changes_nothing_takes_no_revision() -> None:
    off = EmergencyFreeze()
    assert off.switched("", False, 1) is None
    assert off.switched("eu", False, 1) is None

    eu = off.switched("eu", True, 7)
    assert eu == EmergencyFreeze(False, frozenset({"eu"}), 7)
    assert eu.switched("eu", True, 8) is None

    everywhere = eu.switched("", True, 8)
    assert everywhere == EmergencyFreeze(True, frozenset({"eu"}), 8)
    assert everywhere.switched("", True, 9) is None
    assert everywhere.switched("eu", False, 9) == EmergencyFreeze(True, frozenset(), 9)


def test_everywhere_covers_every_region_and_a_region_list_only_its_regions() -> None:
    regions = EmergencyFreeze(False, frozenset({"eu", "ap"}), 3)
    assert [regions.covers(r) for r in ("eu", "ap", "us", "")] == [True, True, False, False]
    assert all(EmergencyFreeze(True, frozenset(), 4).covers(r) for r in ("eu", "us", "anything"))
    assert not any(EmergencyFreeze().covers(r) for r in REGIONS)


def test_lifting_the_global_switch_keeps_the_freeze_of_a_single_region() -> None:
    both = EmergencyFreeze().switched("eu", True, 1)
    assert both is not None
    both = both.switched("", True, 2)
    assert both is not None

    lifted = both.switched("", False, 3)

    assert lifted is not None
    assert (lifted.covers("eu"), lifted.covers("us")) == (True, False)


@QUICK
@given(
    switches=st.lists(st.tuples(st.sampled_from(("", *REGIONS)), st.booleans()), max_size=20),
)
def test_the_switch_follows_every_change_and_survives_its_document(switches: list[tuple[str, bool]]) -> None:
    switch, everywhere, revision = EmergencyFreeze(), False, 0
    frozen: set[str] = set()
    for region, freeze in switches:
        changes = (everywhere != freeze) if not region else ((region in frozen) != freeze)
        switched = switch.switched(region, freeze, revision + 1)
        assert (switched is not None) == changes
        if switched is None:
            continue
        revision += 1
        if region:
            frozen = frozen | {region} if freeze else frozen - {region}
        else:
            everywhere = freeze
        switch = switched
        assert (switch.everywhere, switch.regions, switch.revision) == (everywhere, frozenset(frozen), revision)
        for r in REGIONS:
            assert switch.covers(r) == (everywhere or r in frozen)

    assert EmergencyFreeze.from_document(json.loads(json.dumps(switch.to_document()))) == switch


@pytest.mark.parametrize(
    ("after_ms", "until_ms", "expected"),
    [
        (100, 300, ["at-200", "at-300"]),  # the lower bound is exclusive, the upper inclusive
        (99, 100, ["at-100"]),
        (100, 199, []),
        (0, 10_000, ["at-100", "at-200", "at-300"]),
        (300, 10_000, []),
    ],
)
def test_starting_lists_promotions_opening_after_the_lower_bound_up_to_the_upper(
    after_ms: int, until_ms: int, expected: list[str]
) -> None:
    cache = PromotionCache()
    cache.put(promotion(f"at-{start}", 1, start_ms=start) for start in (100, 200, 300))

    assert sorted(p.id for p in cache.starting(after_ms, until_ms)) == expected


def test_the_switch_a_renewal_carries_applies_only_when_newer_and_moves_no_cursor() -> None:
    cache = PromotionCache()
    cache.apply(CatalogSnapshot([promotion("p0", 3)], EmergencyFreeze(regions=frozenset({"eu"}), revision=5), 5))

    assert not cache.take_emergency(EmergencyFreeze(revision=4))  # an older answer, delayed
    assert cache.emergency.covers("eu")
    assert cache.take_emergency(EmergencyFreeze(everywhere=True, revision=9))
    assert cache.emergency.covers("us")
    assert cache.revision == 5
