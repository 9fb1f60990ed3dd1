"""The audit trail: who changed a promotion or the emergency switch, when, by which call, and what it
was before and after. Pure: the center seals each record, the store writes it in the same atomic
write as the change it describes, and anyone holding the records can verify them.

    seal(previous, change, at_ms) -> AuditRecord   the next record of the chain
    verify(records) -> list[str]                   what is wrong with a trail read in seq order

Each record's `body` is canonical JSON (sorted keys, no spaces) holding its `seq` (1, 2, ...) and the
`prev` hash of the record before (GENESIS for the first); its `hash` is the SHA-256 of the body. So an
edited body no longer matches its hash, a hash recomputed after an edit no longer matches the next
record's `prev`, and a deleted or moved record leaves a gap or a wrong `seq` in the order the store
keeps them. What the chain alone cannot show is the newest records cut off the end; the center logs
each record's seq and hash as it writes it, so the head can be compared with the logs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64
"""The `prev` of the first record."""


@dataclass(frozen=True)
class Change:
    """One admin write, as it will be recorded."""

    actor: str
    """Who: the caller's SPIFFE ID, or PLAINTEXT_ACTOR when the call came without TLS (loopback only)."""
    call: str
    """The RPC, e.g. "SetBudget"."""
    request_id: str
    promotion_id: str
    """"" for the emergency switch."""
    before: dict[str, Any] | None
    """The promotion (or the switch) before the change; None for a creation."""
    after: dict[str, Any]
    guard: tuple[str, ...] = ()
    """The guard rules that fired on the change ("name (outcome): message"), if any."""


PLAINTEXT_ACTOR = "plaintext caller (no certificate, loopback only)"


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    body: str
    hash: str

    def fields(self) -> dict[str, Any]:
        """The body's fields; ValueError when it is not a JSON object (a tampered record)."""
        value = json.loads(self.body)
        if not isinstance(value, dict):
            raise ValueError("the body is not a JSON object")
        return value


def digest(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def seal(previous: AuditRecord | None, change: Change, at_ms: int) -> AuditRecord:
    seq = 1 if previous is None else previous.seq + 1
    fields = {
        "seq": seq,
        "prev": GENESIS if previous is None else previous.hash,
        "at_ms": at_ms,
        "actor": change.actor,
        "call": change.call,
        "request_id": change.request_id,
        "promotion_id": change.promotion_id,
        "before": change.before,
        "after": change.after,
        "guard": list(change.guard),
    }
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return AuditRecord(seq, body, digest(body))


def verify(records: Iterable[AuditRecord]) -> list[str]:
    """Every problem of a trail given in the store's order (by seq), each naming the record; [] when
    every record is intact, in place, and chained to the one before."""
    problems: list[str] = []
    expected_seq, expected_prev = 1, GENESIS
    for record in records:
        where = f"record {record.seq}"
        if digest(record.body) != record.hash:
            problems.append(f"{where}: its body does not match its hash (edited)")
        try:
            fields = record.fields()
        except ValueError:
            problems.append(f"{where}: its body is not a JSON object (edited)")
            expected_seq, expected_prev = record.seq + 1, record.hash
            continue
        if record.seq != expected_seq:
            problems.append(f"{where}: expected record {expected_seq} here (records missing or moved)")
        if fields.get("seq") != record.seq:
            problems.append(f"{where}: its body says it is record {fields.get('seq')} (moved or edited)")
        if fields.get("prev") != expected_prev:
            problems.append(
                f"{where}: it does not chain to the one before (a record before it was edited, deleted or moved)"
            )
        expected_seq, expected_prev = record.seq + 1, record.hash
    return problems
