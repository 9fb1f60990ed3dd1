"""The center's durable state, behind one small protocol (SQLite embedded, etcd in production).

Contract, for every implementation:

- A promotion is one document (`PromotionState`) with a `version`. `commit_many` writes new
  documents (up to `MAX_BATCH` in one atomic write) only if every stored one is still at its
  expected version, else raises `Conflict` and writes nothing; so two writers can never both
  succeed on stale state.
- A grant is committed in the same atomic write as the document that counts it: after a
  crash either both are there or neither. A grant whose (promotion, region, request id) is
  already stored makes the whole write fail with `Conflict`: the center books grants without
  reading first, and a retried acquire that memory did not recognise lands here.
- Whatever `commit_many` or `create` returned from is durable (it survives `kill -9`).
- `find_grant` sees every committed grant; it is how a retried acquire gets the grant
  already made once a commit said it exists.
- Documents (`save_document`) are small named JSON values outside any promotion (the
  emergency switch); the last save wins.
- Every admin write (`create`, `save_document`, and `commit_many` given an `audit` record) appends
  its audit record in the same atomic write as the change: both or neither. A record whose `seq`
  is already stored raises `Conflict` and writes nothing (another center wrote since this one read
  the head). Records are never changed or removed; `audit_records` returns them by `seq`, as stored,
  without checking them (that is `quota_center.audit.verify`'s job, so tampering shows).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from quota_center.audit import AuditRecord
from quota_center.ledger import GrantRecord, PromotionState

MAX_BATCH = 50
"""Promotions per `commit_many` with grants: etcd allows 128 operations per transaction (its
--max-txn-ops, counted for the compares and the writes apiece), and each promotion takes two of
each (its document and its grant), beside the leader's fence."""
MAX_REPORT_BATCH = 100
"""Promotions per `commit_many` without grants (reports taken in): one compare and one write each."""
MAX_BATCH_BYTES = 1 << 20
"""Documents per `commit_many` stay below this many bytes together: etcd refuses a request above
--max-request-bytes (1.5 MiB by default), and keys, compares and framing need the rest."""

T = TypeVar("T")


def batches(items: Sequence[T], weigh: Callable[[T], int], max_items: int, max_bytes: int) -> list[list[T]]:
    """`items` in order, cut into runs of at most `max_items` whose weights add up to at most `max_bytes`
    (one heavier item alone makes a run of its own)."""
    runs: list[list[T]] = []
    run: list[T] = []
    size = 0
    for item in items:
        weight = weigh(item)
        if run and (len(run) == max_items or size + weight > max_bytes):
            runs.append(run)
            run, size = [], 0
        run.append(item)
        size += weight
    if run:
        runs.append(run)
    return runs


Commit = tuple[PromotionState, int, GrantRecord | None]
"""A new document, the version it replaces, and the grant it counts (if any)."""


class Store(Protocol):
    async def load_all(self) -> list[PromotionState]:
        """Every promotion, to rebuild the center's state after a start or a failover."""
        ...

    async def load(self, promotion_id: str) -> PromotionState | None: ...

    async def create(self, state: PromotionState, audit: AuditRecord) -> None:
        """Stores a new promotion with its audit record; AlreadyExists if the id is taken."""
        ...

    async def commit_many(self, commits: Sequence[Commit], audit: AuditRecord | None = None) -> None:
        """Replaces each document at its expected version by the new state (whose version the
        caller has bumped) and records its grant with it: up to MAX_BATCH promotions, all or none;
        with the audit record of the admin write it is, if it is one."""
        ...

    async def load_document(self, name: str) -> dict[str, Any] | None: ...

    async def save_document(self, name: str, document: dict[str, Any], audit: AuditRecord | None = None) -> None:
        """Saves `document` under `name`, with the audit record of the admin write it is, if it is one."""
        ...

    async def audit_records(self, after_seq: int = 0, limit: int = 1000) -> list[AuditRecord]:
        """Up to `limit` records with seq above `after_seq`, in seq order, exactly as stored."""
        ...

    async def audit_head(self) -> AuditRecord | None:
        """The record with the highest seq; None when there is none."""
        ...

    async def find_grant(self, promotion_id: str, region: str, request_id: str) -> GrantRecord | None: ...

    async def close(self) -> None: ...
