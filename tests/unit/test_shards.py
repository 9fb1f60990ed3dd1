"""The shard map: a stable slot per promotion, versioned owners, and resizes that move the fewest slots."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota_common.errors import WrongGroup
from quota_common.shards import SLOTS, Router, ShardMap, moves, rebalance, slot_of

GROUP_NAMES = st.lists(st.sampled_from([f"g{i}" for i in range(12)]), min_size=1, max_size=8, unique=True)


def test_a_slot_is_the_same_in_every_process_and_release() -> None:
    # Pinned values: a change of hash would silently move every promotion to another group.
    assert slot_of("promo-1") == 418
    assert slot_of("promo-1", 4) == slot_of("promo-1") % 4


def test_the_implicit_single_group_map_owns_everything() -> None:
    single = ShardMap.single()
    assert single.version == 0
    assert single.groups == ["default"]
    assert single.owner_of("anything") == "default"


def test_a_map_survives_its_document_and_refuses_a_broken_one() -> None:
    shard_map = ShardMap.even(["a", "b", "c"], version=7)
    assert ShardMap.from_document(shard_map.to_document()) == shard_map
    for broken in (b"{", b'{"version": 1}', b'{"version": 1, "owners": []}', b'{"version": 1, "owners": ["Bad"]}'):
        with pytest.raises(ValueError, match="stored shard map is unreadable"):
            ShardMap.from_document(broken)


def test_handing_a_slot_over_bumps_the_version() -> None:
    shard_map = ShardMap.even(["a", "b"], version=3)
    after = shard_map.with_owner(0, "b")
    assert after.version == 4
    assert after.owners[0] == "b"
    assert after.owners[1:] == shard_map.owners[1:]


@given(GROUP_NAMES, GROUP_NAMES)
def test_a_resize_is_even_and_moves_only_surplus_slots(before: list[str], after: list[str]) -> None:
    old = ShardMap.even(before, version=5, slots=64)
    new = rebalance(old, after)
    counts = Counter(new.owners)
    assert set(counts) == set(after)
    assert max(counts.values()) - min(counts.values()) <= 1
    assert new.version == 6
    old_counts = Counter(old.owners)
    for slot, (source, _) in moves(old, new).items():
        # A slot leaves a group only if the group left, or held more than it keeps.
        assert source not in after or old_counts[source] > counts[source], slot
    # The fewest moves: every group that stays keeps min(what it had, its share).
    assert len(moves(old, new)) == sum(max(0, old_counts[g] - counts.get(g, 0)) for g in old_counts)


def test_two_to_four_groups_moves_half_the_slots() -> None:
    old = ShardMap.even(["g0", "g1"])
    new = rebalance(old, ["g0", "g1", "g2", "g3"])
    moved = moves(old, new)
    assert len(moved) == SLOTS // 2
    assert {target for _, target in moved.values()} == {"g2", "g3"}


def test_a_refusal_names_the_owner_and_the_map_version() -> None:
    wrong = WrongGroup.of("promo-1", "g2", 9)
    assert wrong.owner == "g2"
    assert wrong.map_version == 9
    assert "'g2'" in wrong.message
    assert "version 9" in wrong.message


def test_a_router_with_a_stale_map_learns_from_a_refusal() -> None:
    old = ShardMap.even(["a", "b"], version=2)
    promotion_id = next(p for p in (f"p{i}" for i in range(50)) if old.owner_of(p) == "a")
    newer = old.with_owner(old.slot(promotion_id), "b")
    router = Router(old)
    assert router.route(promotion_id) == "a"
    assert router.learn(promotion_id, "b", newer.version)
    assert router.route(promotion_id) == "b"
    router.update(newer)
    assert router.route(promotion_id) == "b"
    router.update(old)  # an older read never undoes a newer one
    assert router.shard_map == newer
    # A refusal judged by an older map than the router's comes from a group behind: no re-read, same route.
    assert not router.learn(promotion_id, "a", old.version)
    assert router.route(promotion_id) == "b"
