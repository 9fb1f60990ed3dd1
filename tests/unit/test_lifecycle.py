"""A promotion's life after creation, the pure rules: which fields an update may name, the window a budget owner
can rely on, regions removed keeping an account, ending now or at the start."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quota_center import allocation, ledger, lifecycle
from quota_center.ledger import PromotionState
from quota_center.lifecycle import Update
from quota_common.errors import FailedPrecondition, InvalidArgument
from quota_common.model import Kind, Promotion

NOW = 1_700_000_000_000
HOUR = 3_600_000


def state(start: int = NOW - HOUR, end: int = NOW + HOUR, regions: tuple[str, ...] = ("eu", "us")) -> PromotionState:
    return PromotionState(Promotion("sale", Kind.COUNT, "", 1000, start, end, regions, revision=4))


def snapshot(s: PromotionState) -> str:
    return json.dumps(s.to_document(), sort_keys=True)


def changed(s: PromotionState, now: int = NOW, **changes: object) -> bool:
    return lifecycle.update(s, Update(dict(changes), s.promotion.revision), 9, now)


def test_the_mask_names_model_fields() -> None:
    assert lifecycle.masked_fields(["end_time", "regions", "block_below_floor"]) == (
        "end_ms",
        "regions",
        "block_below_floor",
    )


@pytest.mark.parametrize(
    ("paths", "says"),
    [
        ([], "names no field"),
        (["budget"], "use SetBudget"),
        (["frozen"], "use SetFrozen"),
        (["archived"], "use ArchivePromotion"),
        (["revision"], "expected_revision"),
        (["id"], "never changes after creation"),
        (["kind"], "never changes after creation"),
        (["currency"], "never changes after creation"),
        (["pacing"], "never changes after creation"),
        (["hourly_cap"], "never changes after creation"),
        (["owner"], "never changes after creation"),
        (["end_ms"], "'end_ms', not a field UpdatePromotion changes (start_time, end_time"),
        (["x" * 500], "(500 bytes)"),
        (["regions", "regions"], "names regions twice"),
    ],
)
def test_a_mask_naming_what_update_does_not_change_is_refused_naming_it(paths: list[str], says: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        lifecycle.masked_fields(paths)

    assert says in refused.value.message


def test_a_running_sale_takes_new_limits_values_and_a_later_end_as_one_revision() -> None:
    s = state()

    assert changed(s, per_user_limit=2, max_per_order=1, face_value=500, end_ms=NOW + 5 * HOUR)

    assert (s.promotion.per_user_limit, s.promotion.max_per_order, s.promotion.face_value) == (2, 1, 500)
    assert (s.promotion.end_ms, s.promotion.revision) == (NOW + 5 * HOUR, 9)


def test_a_change_of_nothing_is_no_revision() -> None:
    s = state()
    before = snapshot(s)

    assert not changed(s, per_user_limit=0, regions=("eu", "us"))
    assert snapshot(s) == before


@pytest.mark.parametrize(
    ("window", "changes", "says"),
    [
        ((NOW - HOUR, NOW + HOUR), {"start_ms": NOW + HOUR // 2}, "the start of a running sale stays"),
        ((NOW + HOUR, NOW + 2 * HOUR), {"start_ms": NOW - 1}, "does not open retroactively"),
        ((NOW - HOUR, NOW + HOUR), {"end_ms": NOW}, "end the promotion"),
        ((NOW + HOUR, NOW + 2 * HOUR), {"end_ms": NOW + HOUR}, "must be after start_time"),
        ((NOW - 2 * HOUR, NOW - HOUR), {"per_user_limit": 1}, "an ended promotion is not changed or reopened"),
        ((NOW - 2 * HOUR, NOW - HOUR), {"end_ms": NOW + HOUR}, "an ended promotion is not changed or reopened"),
        ((NOW + HOUR, NOW + HOUR), {"end_ms": NOW + 2 * HOUR}, "an ended promotion is not changed or reopened"),
    ],
)
def test_a_window_a_budget_owner_would_not_expect_is_refused_and_changes_nothing(
    window: tuple[int, int], changes: dict[str, int], says: str
) -> None:
    s = state(*window)
    before = snapshot(s)

    with pytest.raises((FailedPrecondition, InvalidArgument)) as refused:
        changed(s, **changes)

    assert says in refused.value.message
    assert snapshot(s) == before


def test_a_start_not_reached_yet_moves_and_so_may_the_end() -> None:
    s = state(NOW + HOUR, NOW + 2 * HOUR)

    assert changed(s, start_ms=NOW + 3 * HOUR, end_ms=NOW + 4 * HOUR)

    assert (s.promotion.start_ms, s.promotion.end_ms) == (NOW + 3 * HOUR, NOW + 4 * HOUR)


def test_a_stale_revision_and_an_archived_promotion_change_nothing() -> None:
    s = state()
    with pytest.raises(FailedPrecondition, match="at revision 4, not 3: read it again"):
        lifecycle.update(s, Update({"per_user_limit": 1}, 3), 9, NOW)
    s.promotion = replace(s.promotion, archived=True)
    before = snapshot(s)

    with pytest.raises(FailedPrecondition, match="archived"):
        changed(s, per_user_limit=1)
    with pytest.raises(FailedPrecondition, match="archived"):
        lifecycle.end(s, 9, NOW)
    assert snapshot(s) == before


def test_regions_are_checked_as_at_creation() -> None:
    with pytest.raises(InvalidArgument, match="at least one region"):
        changed(state(), regions=())


def test_a_removed_region_keeps_an_account_and_is_asked_for_everything_it_holds() -> None:
    s = state()
    s.account("us").granted = 30

    assert changed(s, regions=("eu", "ap"))

    assert set(s.accounts) == {"us"}  # ap takes quota as usual; eu never held any and stays without an account
    assert allocation.reclaim(s, "us", {"us": 100, "eu": 0}, 2.0, NOW) == 30


def test_a_removed_region_that_never_held_quota_still_hears_of_it() -> None:
    s = state()

    assert changed(s, regions=("eu",))

    assert s.accounts["us"].outstanding == 0
    assert s.unallocated == 1000


def test_ending_a_running_sale_ends_it_now_once() -> None:
    s = state()

    assert lifecycle.end(s, 9, NOW)
    assert (s.promotion.end_ms, s.promotion.revision) == (NOW, 9)
    assert s.promotion.has_ended(NOW)
    assert not lifecycle.end(s, 10, NOW + 1)
    assert s.promotion.revision == 9


def test_ending_a_sale_not_started_leaves_an_empty_window_at_its_start() -> None:
    s = state(NOW + HOUR, NOW + 2 * HOUR)

    assert lifecycle.end(s, 9, NOW)

    assert (s.promotion.start_ms, s.promotion.end_ms) == (NOW + HOUR, NOW + HOUR)
    assert s.promotion.has_ended(NOW)
    assert s.promotion.has_ended(NOW + 3 * HOUR)
    assert s.grantable(NOW + HOUR) == 0


def test_an_ended_promotion_grants_nothing_and_takes_back_what_regions_hold() -> None:
    s = state()
    s.account("eu").granted = 40
    lifecycle.end(s, 9, NOW)

    with pytest.raises(FailedPrecondition, match="ended at"):
        allocation.grant(s, "eu", "eu-1", 5, ("g", "r"), {"eu": 60}, 2.0, NOW)
    assert allocation.reclaim(s, "eu", {"eu": 600}, 2.0, NOW) == 40


def test_the_pending_book_keeps_an_update_as_json() -> None:
    update = Update({"regions": ("eu", "ap"), "end_ms": NOW, "block_below_floor": True}, 7)

    assert Update.from_request(json.loads(json.dumps(update.to_request()))) == update


_VALUES = st.fixed_dictionaries(
    {},
    optional={
        "start_ms": st.integers(NOW - 3 * HOUR, NOW + 3 * HOUR),
        "end_ms": st.integers(NOW - 3 * HOUR, NOW + 3 * HOUR),
        "regions": st.lists(st.sampled_from(["eu", "us", "ap"]), min_size=0, max_size=3).map(tuple),
        "per_user_limit": st.integers(0, 5),
        "max_per_order": st.integers(0, 5),
    },
)


@settings(max_examples=300, deadline=None, database=None)
@given(
    start=st.integers(NOW - 2 * HOUR, NOW + 2 * HOUR),
    length=st.integers(1, 2 * HOUR),
    changes=_VALUES,
)
def test_whatever_is_asked_an_applied_change_keeps_the_promises(
    start: int, length: int, changes: dict[str, object]
) -> None:
    s = state(start, start + length)
    before = s.promotion
    held = {region: account.outstanding for region, account in s.accounts.items()}

    try:
        applied = lifecycle.update(s, Update(changes, s.promotion.revision), 9, NOW)
    except (FailedPrecondition, InvalidArgument):
        return

    after = s.promotion
    assert applied == (after != before)
    if applied:
        assert after.start_ms < after.end_ms
        assert after.end_ms > NOW or after.end_ms == before.end_ms
        assert after.start_ms == before.start_ms or (before.start_ms > NOW and after.start_ms >= NOW)
        assert not before.has_ended(NOW)
        assert set(before.regions) - set(after.regions) <= set(s.accounts)
    assert {region: s.accounts[region].outstanding for region in held} == held
    assert s.unallocated == before.budget


def test_a_promotion_created_before_the_id_rule_is_changed_as_before() -> None:
    """Only a create refuses an id with surrounding spaces: one that exists keeps its id and its owner's calls."""
    spaced = state()
    spaced.promotion = replace(spaced.promotion, id=" sale")

    with pytest.raises(InvalidArgument, match="starts or ends with a space"):
        ledger.check_creatable(spaced.promotion, NOW)
    assert changed(spaced, per_user_limit=2)
    assert spaced.promotion.per_user_limit == 2
