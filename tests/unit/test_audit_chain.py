"""The audit trail's hash chain: every kind of tampering a verifier must see, and none where there is none."""

from __future__ import annotations

import json
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from quota_center.audit import GENESIS, AuditRecord, Change, digest, seal, verify


def _trail(length: int) -> list[AuditRecord]:
    records: list[AuditRecord] = []
    for n in range(length):
        change = Change("spiffe://quota/owner/alice", "SetBudget", f"r-{n}", "p", {"budget": n}, {"budget": n + 1})
        records.append(seal(records[-1] if records else None, change, 1_000 + n))
    return records


@given(st.integers(min_value=0, max_value=20))
def test_a_trail_as_sealed_verifies(length: int) -> None:
    records = _trail(length)

    assert verify(records) == []
    assert [record.seq for record in records] == list(range(1, length + 1))
    assert all(record.hash == digest(record.body) for record in records)


def test_the_first_record_chains_to_genesis_and_each_next_to_the_one_before() -> None:
    first, second = _trail(2)

    assert first.fields()["prev"] == GENESIS
    assert second.fields()["prev"] == first.hash


@given(st.integers(min_value=3, max_value=12), st.data())
def test_an_edited_record_is_found_even_with_its_hash_recomputed(length: int, data: st.DataObject) -> None:
    records = _trail(length)
    at = data.draw(st.integers(min_value=0, max_value=length - 1))
    fields = records[at].fields()
    fields["after"] = {"budget": 10**15}
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"))

    edited = [*records[:at], replace(records[at], body=body), *records[at + 1 :]]
    rehashed = [*records[:at], AuditRecord(records[at].seq, body, digest(body)), *records[at + 1 :]]

    assert any(f"record {at + 1}:" in problem for problem in verify(edited))
    if at < length - 1:
        assert any(f"record {at + 2}:" in problem for problem in verify(rehashed))


@given(st.integers(min_value=3, max_value=12), st.data())
def test_a_deleted_record_is_found(length: int, data: st.DataObject) -> None:
    records = _trail(length)
    at = data.draw(st.integers(min_value=0, max_value=length - 2))

    assert verify([*records[:at], *records[at + 1 :]]) != []


@given(st.integers(min_value=3, max_value=12), st.data())
def test_two_records_swapped_in_place_are_found(length: int, data: st.DataObject) -> None:
    records = _trail(length)
    at = data.draw(st.integers(min_value=0, max_value=length - 2))
    first, second = records[at], records[at + 1]
    # Moved as a store would hold them: each body and hash under the other's key (seq).
    swapped = [*records[:at], replace(second, seq=first.seq), replace(first, seq=second.seq), *records[at + 2 :]]

    assert verify(swapped) != []


def test_a_body_that_is_not_json_is_reported_not_raised() -> None:
    records = _trail(3)
    broken = [records[0], AuditRecord(2, "not json", digest("not json")), records[2]]

    assert verify(broken) == [
        "record 2: its body is not a JSON object (edited)",
        "record 3: it does not chain to the one before (a record before it was edited, deleted or moved)",
    ]
