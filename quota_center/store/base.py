"""The center's durable state, behind one small protocol (SQLite embedded, etcd in production).

Contract, for every implementation:

- A promotion is one document (`PromotionState`) with a `version`. `commit_many` writes new
  documents (up to `MAX_BATCH` in one atomic write) only if every stored one is still at its
  expected version, else raises `Conflict` and writes nothing; so two writers can never both
  succeed on stale state.
- A grant is committed in the same atomic write as the document that counts it: after a
  crash either both are there or neither.
- Whatever `commit_many` or `create` returned from is durable (it survives `kill -9`).
- `find_grant` sees every committed grant; it is how a retried acquire gets the grant
  already made.
- Documents (`save_document`) are small named JSON values outside any promotion (the
  emergency switch); the last save wins.
- Every admin write (`create`, `save_document`, and `commit_many` given an `audit` record) appends
  its audit record in the same atomic write as the change: both or neither. A record whose `seq`
  is already stored raises `Conflict` and writes nothing (another center wrote since this one read
  the head). Records are never changed or removed; `audit_records` returns them by `seq`, as stored,
  without checking them (that is `quota_center.audit.verify`'s job, so tampering shows).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from quota_center.audit import AuditRecord
from quota_center.ledger import GrantRecord, PromotionState

MAX_BATCH = 50
"""Promotions per `commit_many`: etcd allows 128 operations per transaction, and each
promotion takes two (its document and its grant)."""

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
