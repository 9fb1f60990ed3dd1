"""Which promotions a renewal must report, once one region lease covers all of them. Pure: no I/O, no clock.

A report is due when it would tell the center something: it differs from the last one the center took in
for this ledger life (a counter, the ledger's own figures, the below-floor count or the demand moved), or
an acquire or opening was asked for since that one (its grant may be booked with its answer lost, and the
renewal's answer resends it). Everything is due while the book `wants_all`: at the start of a ledger life,
after the center asked for a full report (a new leader), and while the center does not renew the region
lease (a center older than it renews only what is reported). The agent adds its own reasons (`Supply`).
"""

from __future__ import annotations

from collections.abc import Iterable

from quota_common.model import Report


class ReportBook:
    def __init__(self) -> None:
        self._taken: dict[str, Report] = {}
        """Per promotion, the last report the center took in."""
        self._suspect: dict[str, int] = {}
        """Per promotion, the number of the last ask (acquire or opening) since its report was taken in."""
        self.asks = 0
        """Acquires and openings asked so far; a report made after the first N clears only their suspicion."""
        self.wants_all = True

    def asked(self, promotion_ids: Iterable[str]) -> None:
        """An acquire or opening of these promotions is about to be sent."""
        self.asks += 1
        for promotion_id in promotion_ids:
            self._suspect[promotion_id] = self.asks

    def due(self, promotion_id: str, current: Report) -> bool:
        return self.wants_all or self._taken.get(promotion_id) != current or promotion_id in self._suspect

    def taken(self, promotion_id: str, report: Report, after_asks: int) -> None:
        """The center took in `report`, made once `after_asks` asks were sent: an ask since stays suspect."""
        self._taken[promotion_id] = report
        if self._suspect.get(promotion_id, after_asks + 1) <= after_asks:
            del self._suspect[promotion_id]

    def refused(self, promotion_id: str) -> None:
        self._taken.pop(promotion_id, None)

    def new_life(self) -> None:
        """A new ledger incarnation: nothing of the old one's reports stands."""
        self._taken.clear()
        self._suspect.clear()
        self.wants_all = True
