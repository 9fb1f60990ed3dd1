"""A promotion's state as the center copies and stores it: the hand-made copy and document (cheaper than
`copy.deepcopy` and `dataclasses.asdict`, which every commit paid) must say exactly what those said, and the
JSON text a commit writes is made once per version."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from quota_center.ledger import PromotionState
from quota_common.model import Kind, Promotion, promotion_document
from quota_common.policy import Pacing
from tests.unit.test_center_ledger import QUICK, center_states


def _as_before(state: PromotionState) -> dict[str, Any]:
    """The document as `dataclasses.asdict` made it before: the format stored documents have."""
    promotion = dataclasses.asdict(state.promotion)
    promotion.update(kind=state.promotion.kind.value, pacing=state.promotion.pacing.value)
    accounts = {region: dataclasses.asdict(account) for region, account in state.accounts.items()}
    document = {"promotion": promotion, "accounts": accounts, "version": state.version}
    if state.statement is not None:
        document["statement"] = state.statement
    return document


@QUICK
@given(state=center_states(), statement=st.none() | st.just({"final": {"eu": [1, 2]}}))
def test_the_document_is_the_one_dataclasses_made(state: PromotionState, statement: dict[str, Any] | None) -> None:
    state.statement = statement
    assert json.dumps(state.to_document()) == json.dumps(_as_before(state))
    assert state.encoded() == json.dumps(_as_before(state))


@QUICK
@given(state=center_states())
def test_a_copy_shares_nothing_a_change_could_reach(state: PromotionState) -> None:
    state.statement = {"final": {"eu": [1]}}
    before = copy.deepcopy(state)
    twin = state.copy()
    assert twin == state
    for account in twin.accounts.values():
        account.granted += 1
        account.recent_grants.append(("g-new", 1))
        account.retired_incarnations.append("i-new")
    twin.accounts["elsewhere"] = twin.account("elsewhere")
    twin.statement["final"]["eu"].append(2)  # type: ignore[index]
    assert state == before


def test_the_text_is_encoded_once_per_version_and_never_copied() -> None:
    promotion = Promotion("p1", Kind.AMOUNT, "EUR", 100, 0, 1_000, ("eu", "us"), pacing=Pacing.LINEAR)
    state = PromotionState(promotion)
    first = state.encoded()
    assert state.encoded() is first, "the same version is not encoded again"

    changed = state.copy()
    changed.account("eu").granted = 10
    changed.version += 1  # what a commit does before the store encodes
    assert json.loads(changed.encoded())["accounts"]["eu"]["granted"] == 10
    assert json.loads(changed.encoded())["version"] == 2
    assert state.encoded() is first, "the copy's change is not the original's"
    assert dataclasses.replace(changed, version=5).encoded() != changed.encoded()


@QUICK
@given(
    budget=st.integers(min_value=0, max_value=2**53),
    regions=st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=4, unique=True),
    pacing=st.sampled_from(Pacing),
    frozen=st.booleans(),
)
def test_a_promotions_document_is_the_one_dataclasses_made(
    budget: int, regions: list[str], pacing: Pacing, frozen: bool
) -> None:
    promotion = Promotion("p1", Kind.COUNT, "", budget, 0, 1, tuple(regions), frozen=frozen, pacing=pacing)
    expected = dataclasses.asdict(promotion)
    expected.update(kind=promotion.kind.value, pacing=pacing.value)
    assert promotion_document(promotion) == expected
    assert list(promotion_document(promotion)) == list(expected)
