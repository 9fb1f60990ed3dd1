"""The leading center's usage history of every promotion: sampled from its books, kept in memory, and stored
as one document per promotion, written at most every `SAVE_EVERY_MS` and only when a figure changed, so it
survives a restart (a new leader reads each promotion's document the first time it needs it)."""

from __future__ import annotations

from collections.abc import Iterable

from quota_center.history import PromotionHistory
from quota_center.jobs import in_slices
from quota_center.ledger import PromotionState
from quota_center.store.base import Store

SAVE_EVERY_MS = 60_000
DEFAULT_INTERVAL_S = 10.0
"""How often the leading center samples (--history-interval)."""


def document_name(promotion_id: str) -> str:
    return f"history/{promotion_id}"


class HistoryBook:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._histories: dict[str, PromotionHistory] = {}
        self._unsaved: set[str] = set()
        self._saved_at_ms: dict[str, int] = {}

    def clear(self) -> None:
        """Forgets what memory holds (a deposed leader); what was not stored yet is lost, at most a minute."""
        self._histories.clear()
        self._unsaved.clear()
        self._saved_at_ms.clear()

    async def history(self, promotion_id: str) -> PromotionHistory:
        history = self._histories.get(promotion_id)
        if history is None:
            stored = await self._store.load_document(document_name(promotion_id))
            history = PromotionHistory() if stored is None else PromotionHistory.from_document(stored)
            self._histories[promotion_id] = history
        return history

    async def sample(self, states: Iterable[PromotionState], now_ms: int) -> None:
        """One point per region that ever held quota of each promotion, then the stores that are due. `states`
        is taken in slices, letting the event loop run between them (each state read as it is taken)."""
        async for state in in_slices(states):
            samples = [
                (region, (now_ms, account.consumed, account.outstanding))
                for region, account in sorted(state.accounts.items())
            ]
            if samples and (await self.history(state.promotion.id)).record(samples, now_ms):
                self._unsaved.add(state.promotion.id)
        await self._save_due(now_ms)

    async def _save_due(self, now_ms: int) -> None:
        for promotion_id in sorted(self._unsaved):
            if now_ms - self._saved_at_ms.get(promotion_id, now_ms - SAVE_EVERY_MS) < SAVE_EVERY_MS:
                continue
            await self._store.save_document(document_name(promotion_id), self._histories[promotion_id].to_document())
            self._unsaved.discard(promotion_id)
            self._saved_at_ms[promotion_id] = now_ms
