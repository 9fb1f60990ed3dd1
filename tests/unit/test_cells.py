"""Cells (quota_common.cells): how a cell's name ties it to its region, and how users are routed to cells."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota_client.cells import routing_key
from quota_client.errors import InvalidRequest
from quota_client.model import Line
from quota_common.cells import cell_for, region_of, require_cells
from quota_common.errors import InvalidArgument
from quota_common.model import EmergencyFreeze, Kind, Promotion
from quota_common.validation import require_region, require_regions


def sample_promotion(regions: tuple[str, ...]) -> Promotion:
    return Promotion("p", Kind.COUNT, "", 1_000, 0, 3_600_000, regions)


CELLS = st.lists(st.text("abcdefghij0123456789", min_size=1, max_size=4), min_size=1, max_size=8, unique=True)


def test_a_cell_belongs_to_the_region_before_its_dot() -> None:
    assert [region_of(name) for name in ("eu", "eu.1", "us-east.blue")] == ["eu", "eu", "us-east"]


@pytest.mark.parametrize("name", ["eu", "eu.1", "us-east.cell_2"])
def test_regions_and_cells_are_valid_names(name: str) -> None:
    assert require_region("region", name) == name
    assert require_regions("regions", [name]) == (name,)


@pytest.mark.parametrize("name", ["", "eu.", ".1", "eu.1.2", "."])
def test_a_name_that_is_neither_a_region_nor_a_cell_is_refused(name: str) -> None:
    with pytest.raises(InvalidArgument, match="region"):
        require_region("region", name)


@pytest.mark.parametrize(
    ("cells", "why"),
    [
        ([], "empty"),
        (["eu"], "is a region, not a cell"),
        (["eu.1", "eu.1"], "twice"),
        (["eu.1", "us.1"], "mixes the cells of regions eu, us"),
    ],
)
def test_a_client_serves_the_cells_of_one_region(cells: list[str], why: str) -> None:
    with pytest.raises(InvalidArgument, match=why):
        require_cells("cells", cells)


def test_a_promotion_of_a_region_is_spent_in_its_cells_and_one_listing_a_cell_only_there() -> None:
    of_eu = sample_promotion(regions=("eu",))
    of_one_cell = sample_promotion(regions=("eu.1", "us"))

    assert [of_eu.allows(name) for name in ("eu", "eu.1", "eu.2", "us.1", "europe")] == [True, True, True, False, False]
    assert [of_one_cell.allows(name) for name in ("eu.1", "eu.2", "eu", "us.7")] == [True, False, False, True]


def test_an_emergency_freeze_of_a_region_covers_its_cells_and_one_of_a_cell_only_it() -> None:
    assert EmergencyFreeze(regions=frozenset({"eu"})).covers("eu.3")
    assert not EmergencyFreeze(regions=frozenset({"eu.1"})).covers("eu.2")
    assert not EmergencyFreeze(regions=frozenset({"eu"})).covers("us.1")


@given(CELLS, st.text(max_size=20), st.randoms())
def test_a_users_cell_depends_on_the_set_of_cells_not_their_order(
    cells: list[str], user: str, shuffle: random.Random
) -> None:
    shuffled = list(cells)
    shuffle.shuffle(shuffled)

    assert cell_for(user, cells) == cell_for(user, shuffled) in cells


@given(CELLS, st.text("xyz", min_size=1, max_size=4), st.text(max_size=20))
def test_adding_a_cell_moves_a_user_only_to_the_new_cell(cells: list[str], new: str, user: str) -> None:
    # `new`'s letters are none of the cells' (CELLS), so it is a cell more.
    assert cell_for(user, [*cells, new]) in (cell_for(user, cells), new)


def test_users_spread_over_the_cells() -> None:
    cells = ["eu.1", "eu.2", "eu.3", "eu.4"]
    users = [cell_for(f"user-{n}", cells) for n in range(4000)]

    # The hash is fixed, so these shares are too; a quarter each, give or take a few percent.
    assert all(800 <= users.count(cell) <= 1200 for cell in cells), {cell: users.count(cell) for cell in cells}


def test_an_order_is_routed_by_its_one_user_else_by_its_key() -> None:
    assert routing_key("o-1", [Line("a", 1, "u-7"), Line("b", 2, "u-7"), Line("c", 1, "")]) == "u-7"
    assert routing_key("o-1", [Line("a", 1, "")]) == "o-1"
    with pytest.raises(InvalidRequest, match="one order per user"):
        routing_key("o-1", [Line("a", 1, "u-7"), Line("b", 1, "u-8")])
