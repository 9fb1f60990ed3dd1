"""The center's Store contract in memory, for tests that run `Center` thousands of times.

Documents are kept as JSON text, as the real stores keep them, so nothing the center holds
aliases what was committed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from quota_center.ledger import GrantRecord, PromotionState
from quota_center.store.base import Commit
from quota_common.errors import AlreadyExists, Conflict


class MemoryStore:
    def __init__(self) -> None:
        self.promotions: dict[str, str] = {}
        self.grants: dict[tuple[str, str, str], GrantRecord] = {}
        self._documents: dict[str, str] = {}

    async def load_all(self) -> list[PromotionState]:
        return [PromotionState.from_document(json.loads(text)) for text in self.promotions.values()]

    async def load(self, promotion_id: str) -> PromotionState | None:
        text = self.promotions.get(promotion_id)
        return None if text is None else PromotionState.from_document(json.loads(text))

    async def create(self, state: PromotionState) -> None:
        if state.promotion.id in self.promotions:
            raise AlreadyExists(f"promotion {state.promotion.id!r} already exists")
        self.promotions[state.promotion.id] = json.dumps(state.to_document())

    async def commit_many(self, commits: Sequence[Commit]) -> None:
        for state, expected_version, _ in commits:
            stored = json.loads(self.promotions[state.promotion.id])
            if stored["version"] != expected_version:
                raise Conflict(f"promotion {state.promotion.id} moved past version {expected_version}")
        for state, _, grant in commits:
            self.promotions[state.promotion.id] = json.dumps(state.to_document())
            if grant is not None:
                self.grants[(grant.promotion_id, grant.region, grant.request_id)] = grant

    async def load_document(self, name: str) -> dict[str, Any] | None:
        text = self._documents.get(name)
        return None if text is None else dict(json.loads(text))

    async def save_document(self, name: str, document: dict[str, Any]) -> None:
        self._documents[name] = json.dumps(document)

    async def find_grant(self, promotion_id: str, region: str, request_id: str) -> GrantRecord | None:
        return self.grants.get((promotion_id, region, request_id))

    async def close(self) -> None:
        pass
