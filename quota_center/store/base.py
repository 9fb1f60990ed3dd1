"""The center's durable state, behind one small protocol (SQLite embedded, etcd in production).

Contract, for every implementation:

- A promotion is one document (`PromotionState`) with a `version`. `commit` writes the new
  document only if the stored one is still at `expected_version`, else raises `Conflict`
  and writes nothing; so two writers can never both succeed on stale state.
- A grant is committed in the same atomic write as the document that counts it: after a
  crash either both are there or neither.
- Whatever `commit` or `create` returned from is durable (it survives `kill -9`).
- `find_grant` sees every committed grant; it is how a retried acquire gets the grant
  already made.
"""

from __future__ import annotations

from typing import Protocol

from quota_center.ledger import GrantRecord, PromotionState


class Store(Protocol):
    async def load_all(self) -> list[PromotionState]:
        """Every promotion, to rebuild the center's state after a start or a failover."""
        ...

    async def load(self, promotion_id: str) -> PromotionState | None: ...

    async def create(self, state: PromotionState) -> None:
        """Stores a new promotion; AlreadyExists if the id is taken."""
        ...

    async def commit(self, state: PromotionState, expected_version: int, grant: GrantRecord | None = None) -> None:
        """Replaces the document at `expected_version` by `state` (whose version the caller
        has bumped), and records `grant` with it."""
        ...

    async def find_grant(self, promotion_id: str, region: str, request_id: str) -> GrantRecord | None: ...

    async def close(self) -> None: ...
