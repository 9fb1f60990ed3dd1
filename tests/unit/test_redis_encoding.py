"""The Redis ledger writes order records and user keys as compact JSON by hand, for speed; they must
stay byte for byte what json.dumps writes, or a retry would not match the record its first try left
and a user's counter key would change under them."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from region_agent.ledger.base import Line
from region_agent.ledger.redis import _decode, _encode, _json_pair

ids = st.text(min_size=1, max_size=20)
amounts = st.integers(min_value=1, max_value=2**53 - 1)
unpriced = st.tuples(ids, amounts, ids).map(lambda parts: Line(*parts))
priced = st.tuples(ids, amounts, ids, amounts).flatmap(
    lambda parts: st.integers(min_value=0, max_value=parts[3]).map(lambda discount: Line(*parts, discount))
)
lines = unpriced | priced


def _fields(line: Line) -> list[object]:
    """A line as its record holds it: without prices when it states none, as records did before prices."""
    fields: list[object] = [line.promotion_id, line.amount, line.user_id]
    return [*fields, line.unit_price, line.discount] if line.unit_price else fields


@given(st.lists(lines, min_size=1, max_size=5).map(tuple))
def test_order_records_are_what_json_dumps_writes_and_read_back_whole(order: tuple[Line, ...]) -> None:
    expected = json.dumps([_fields(line) for line in order], separators=(",", ":"))
    assert _encode(order) == expected
    assert _decode(expected) == order


@given(ids, ids)
def test_pairs_in_keys_are_what_json_dumps_writes(first: str, second: str) -> None:
    assert _json_pair(first, second) == json.dumps([first, second], separators=(",", ":"))
