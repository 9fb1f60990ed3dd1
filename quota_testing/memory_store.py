"""The center's Store contract in memory, for tests that run `Center` thousands of times.

Documents are kept as JSON text, as the real stores keep them, so nothing the center holds
aliases what was committed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from quota_center.audit import AuditRecord
from quota_center.ledger import GrantRecord, PromotionState
from quota_center.store.base import Commit
from quota_common.errors import AlreadyExists, Conflict


class MemoryStore:
    def __init__(self) -> None:
        self.promotions: dict[str, str] = {}
        self.grants: dict[tuple[str, str, str], GrantRecord] = {}
        self._documents: dict[str, str] = {}
        self.audit: dict[int, AuditRecord] = {}

    async def load_all(self) -> list[PromotionState]:
        return [PromotionState.from_document(json.loads(text)) for text in self.promotions.values()]

    async def load(self, promotion_id: str) -> PromotionState | None:
        text = self.promotions.get(promotion_id)
        return None if text is None else PromotionState.from_document(json.loads(text))

    async def create(self, state: PromotionState, audit: AuditRecord) -> None:
        if state.promotion.id in self.promotions:
            raise AlreadyExists(f"promotion {state.promotion.id!r} already exists")
        self._check_free(audit)
        self.promotions[state.promotion.id] = state.encoded()
        self.audit[audit.seq] = audit

    async def commit_many(self, commits: Sequence[Commit], audit: AuditRecord | None = None) -> None:
        for state, expected_version, _ in commits:
            stored = json.loads(self.promotions[state.promotion.id])
            if stored["version"] != expected_version:
                raise Conflict(f"promotion {state.promotion.id} moved past version {expected_version}")
        for _, _, grant in commits:
            if grant is not None and (grant.promotion_id, grant.region, grant.request_id) in self.grants:
                raise Conflict(f"request id {grant.request_id!r} already has a grant")
        if audit is not None:
            self._check_free(audit)
            self.audit[audit.seq] = audit
        for state, _, grant in commits:
            self.promotions[state.promotion.id] = state.encoded()
            if grant is not None:
                self.grants[(grant.promotion_id, grant.region, grant.request_id)] = grant

    async def load_document(self, name: str) -> dict[str, Any] | None:
        text = self._documents.get(name)
        return None if text is None else dict(json.loads(text))

    async def save_document(self, name: str, document: dict[str, Any], audit: AuditRecord | None = None) -> None:
        if audit is not None:
            self._check_free(audit)
            self.audit[audit.seq] = audit
        self._documents[name] = json.dumps(document)

    def _check_free(self, audit: AuditRecord) -> None:
        if audit.seq in self.audit:
            raise Conflict(f"audit record {audit.seq} was written by another center")

    async def audit_records(self, after_seq: int = 0, limit: int = 1000) -> list[AuditRecord]:
        return [self.audit[seq] for seq in sorted(self.audit) if seq > after_seq][:limit]

    async def audit_head(self) -> AuditRecord | None:
        return self.audit[max(self.audit)] if self.audit else None

    async def find_grant(self, promotion_id: str, region: str, request_id: str) -> GrantRecord | None:
        return self.grants.get((promotion_id, region, request_id))

    async def close(self) -> None:
        pass
