"""Reconciliation as the center does it, at every renewal: a region's report is its ledger's own figures,
and one the center refuses (`ledger.check_report`) is a difference between the two books. Pure but for
`Discrepancies`, which keeps the latest finding per promotion and region in memory for the alerts.
"""

from __future__ import annotations

from quota_center.ledger import PromotionState, RegionAccount, merged_counters
from quota_common.model import Report
from quota_common.reconcile import Cause, Finding


def refused_report(state: PromotionState, region: str, report: Report) -> Finding | None:
    """The difference a refused report shows, with its amount; None when the report shows none (it was
    refused for another reason: the region may not spend the promotion, say)."""
    account = state.accounts.get(region, RegionAccount())

    def finding(cause: Cause, amount: int) -> Finding | None:
        return Finding(state.promotion.id, region, cause, amount) if amount > 0 else None

    if report.granted > account.granted:
        return finding(Cause.GRANT_NOT_MADE, report.granted - account.granted)
    overspent = max(
        report.refunded - report.deducted,
        report.returned + report.deducted - report.refunded - report.granted,
        -min(report.granted, report.returned, report.deducted, report.refunded),
    )
    if overspent > 0:
        return finding(Cause.REPORT_OVERSPENT, overspent)
    returned, deducted, refunded = merged_counters(account, report)
    contradiction = max(refunded - deducted, returned + deducted - refunded - account.granted)
    return finding(Cause.REPORT_CONTRADICTS, contradiction)


def inconsistent_ledger(promotion_id: str, region: str, report: Report) -> Finding | None:
    """A ledger whose available is not what its counters say (it was altered: Redis edited by hand, say),
    from the figures the report carries beside its counters; None when they agree or were not sent."""
    if report.available is None or report.held is None:
        return None
    derived = report.granted - report.returned - report.deducted + report.refunded - report.held
    gap = abs(report.available - derived)
    return Finding(promotion_id, region, Cause.LEDGER_INCONSISTENT, gap) if gap else None


class Discrepancies:
    """The differences the latest renewals showed, one per promotion and region: a refused report sets
    it, and so does an accepted one whose ledger disagrees with itself; an accepted one that agrees clears
    it. Soft state: a new leader learns them again at the next renewals."""

    def __init__(self) -> None:
        self._findings: dict[tuple[str, str], Finding] = {}

    def refused(self, state: PromotionState | None, region: str, report: Report) -> None:
        found = None if state is None else refused_report(state, region, report)
        if found is not None:
            self._findings[(found.promotion_id, region)] = found

    def accepted(self, promotion_id: str, region: str, report: Report) -> None:
        """The books agree again, unless the ledger's own figures disagree with its counters."""
        found = inconsistent_ledger(promotion_id, region, report)
        if found is None:
            self._findings.pop((promotion_id, region), None)
        else:
            self._findings[(promotion_id, region)] = found

    def clear(self) -> None:
        self._findings.clear()

    def findings(self) -> list[Finding]:
        """By promotion, then region."""
        return [self._findings[key] for key in sorted(self._findings)]
