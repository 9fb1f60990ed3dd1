"""Moving a slot between center groups: the phases in order, refusals by phase, and no over-issue over random
histories of grants, spending, returns, expiries and migration steps."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota_center.shard_move import Holding, Phase, SlotMove, check, standing
from quota_common.errors import FailedPrecondition, Moving, WrongGroup
from quota_common.shards import ShardMap

PROMO = "promo-1"
MAP = ShardMap.even(["a", "b"], version=4)
SLOT = MAP.slot(PROMO)
SOURCE = MAP.owner_of(PROMO)
TARGET = "b" if SOURCE == "a" else "a"


def test_a_slot_drains_then_is_copied_then_flipped() -> None:
    move = SlotMove(SLOT, SOURCE, TARGET)
    busy = {PROMO: {"eu": Holding(5, True), "us": Holding(0, True)}}
    assert move.observe(busy).phase is Phase.DRAINING
    with pytest.raises(FailedPrecondition, match="draining: it must be drained"):
        move.copied()
    expired = {PROMO: {"eu": Holding(5, False), "us": Holding(0, True)}}
    drained = move.observe(expired)
    assert drained.phase is Phase.DRAINED
    with pytest.raises(FailedPrecondition):
        drained.flip(MAP)
    done, after = drained.copied().flip(MAP)
    assert done.phase is Phase.DONE
    assert after.owner_of(PROMO) == TARGET
    assert after.version == MAP.version + 1


def test_a_flip_over_a_map_that_moved_on_is_refused() -> None:
    copied = SlotMove(SLOT, SOURCE, TARGET, Phase.COPIED)
    with pytest.raises(FailedPrecondition, match="not the source"):
        copied.flip(MAP.with_owner(SLOT, TARGET))


def test_each_group_refuses_what_it_may_not_do() -> None:
    with pytest.raises(WrongGroup) as refused:
        check(TARGET, MAP, {}, PROMO, granting=False)
    assert refused.value.owner == SOURCE
    assert refused.value.map_version == MAP.version
    check(SOURCE, MAP, {}, PROMO, granting=True)
    draining = {SLOT: SlotMove(SLOT, SOURCE, TARGET)}
    check(SOURCE, MAP, draining, PROMO, granting=False)
    with pytest.raises(Moving, match=f"moving to center group '{TARGET}'"):
        check(SOURCE, MAP, draining, PROMO, granting=True)
    with pytest.raises(WrongGroup):
        check(TARGET, MAP, draining, PROMO, granting=True)
    sealed = {SLOT: SlotMove(SLOT, SOURCE, TARGET, Phase.DRAINED)}
    with pytest.raises(Moving):
        check(SOURCE, MAP, sealed, PROMO, granting=False)


@dataclass
class Books:
    """One group's books of the promotion: by region, granted and returned and consumed."""

    granted: dict[str, int] = field(default_factory=dict)
    returned: dict[str, int] = field(default_factory=dict)
    consumed: dict[str, int] = field(default_factory=dict)

    def held(self, region: str) -> int:
        return self.granted.get(region, 0) - self.returned.get(region, 0) - self.consumed.get(region, 0)

    def outstanding(self) -> int:
        return sum(self.granted.values()) - sum(self.returned.values())

    def add(self, counter: dict[str, int], region: str, amount: int) -> None:
        counter[region] = counter.get(region, 0) + amount


REGIONS = ("eu", "us", "ap")
STEPS = st.lists(
    st.tuples(
        st.sampled_from(["grant", "spend", "give-back", "expire", "start", "observe", "copy", "flip"]),
        st.sampled_from(REGIONS),
        st.integers(1, 40),
    ),
    max_size=60,
)


@given(STEPS, st.integers(0, 120))
def test_both_groups_together_never_grant_more_than_the_budget(steps: list[tuple[str, str, int]], budget: int) -> None:
    books = {SOURCE: Books(), TARGET: Books()}
    shard_map, moving = MAP, dict[int, SlotMove]()
    active = set(REGIONS)
    granted_ever = 0
    for action, region, amount in steps:
        owner = shard_map.owner_of(PROMO)
        move = moving.get(SLOT)
        if action == "grant":
            for group, group_books in books.items():
                if standing(group, shard_map, moving, PROMO).grants:
                    take = min(amount, budget - group_books.outstanding())
                    if take > 0:
                        group_books.add(group_books.granted, region, take)
                        granted_ever += take
        elif action in ("spend", "give-back") and region in active:
            # A region talks to the group the map names; its spending shows in the next report.
            own = books[owner]
            take = min(amount, own.held(region))
            own.add(own.consumed if action == "spend" else own.returned, region, take)
        elif action == "expire" and move is not None:
            active.discard(region)  # the source stopped extending leases of the moving slot
        elif action == "start" and move is None and owner == SOURCE:
            moving[SLOT] = SlotMove(SLOT, SOURCE, TARGET)
        elif action == "observe" and move is not None:
            src = books[SOURCE]
            moving[SLOT] = move.observe({PROMO: {r: Holding(src.held(r), r in active) for r in REGIONS}})
        elif action == "copy" and move is not None and move.phase is Phase.DRAINED:
            src = books[SOURCE]
            books[TARGET] = Books(dict(src.granted), dict(src.returned), dict(src.consumed))
            moving[SLOT] = move.copied()
        elif action == "flip" and move is not None and move.phase is Phase.COPIED:
            moving[SLOT], shard_map = move.flip(shard_map)
            active = set(REGIONS)  # regions renew with the target from now on
        serving = [g for g in books if standing(g, shard_map, moving, PROMO).grants]
        assert len(serving) <= 1
        # What regions hold plus what they spent never exceeds the budget, whoever granted it.
        returned = sum(books[shard_map.owner_of(PROMO)].returned.values())
        assert granted_ever - returned <= budget
