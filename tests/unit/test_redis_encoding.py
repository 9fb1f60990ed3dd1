"""The Redis ledger writes order records and user keys as compact JSON by hand, for speed; they must
stay byte for byte what json.dumps writes, or a retry would not match the record its first try left
and a user's counter key would change under them."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from region_agent.ledger.base import Line
from region_agent.ledger.redis import _encode, _json_pair

ids = st.text(min_size=1, max_size=20)
lines = st.tuples(ids, st.integers(min_value=1, max_value=2**53 - 1), ids).map(lambda parts: Line(*parts))


@given(st.lists(lines, min_size=1, max_size=5).map(tuple))
def test_order_records_are_what_json_dumps_writes(order: tuple[Line, ...]) -> None:
    expected = json.dumps([[line.promotion_id, line.amount, line.user_id] for line in order], separators=(",", ":"))
    assert _encode(order) == expected


@given(ids, ids)
def test_pairs_in_keys_are_what_json_dumps_writes(first: str, second: str) -> None:
    assert _json_pair(first, second) == json.dumps([first, second], separators=(",", ":"))
