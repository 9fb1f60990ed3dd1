"""Reconciliation (对账): the center's books against a region's ledger, per promotion and region. Pure.

The center books, per region, what it granted and got back over every life of the region's ledger, what it
was told was consumed, and what the current life holds unspent by its last report. The ledger counts, for
its current life only, what it applied, returned, deducted, refunded and holds for reservations, and keeps
its own `available`. Both sides move while they are read, so a difference is of one of two sorts:

- one that work in flight explains (a grant on its way to the ledger, a report on its way to the center):
  it counts only if it is still there at a second reading (`persistent`);
- one nothing in flight explains (a ledger whose counters disagree with each other, a ledger that counts
  grants the center never made): it counts at once.

Read the ledger first, then the center: the center commits a grant before any ledger applies it, so a
ledger read earlier can never have applied a grant the center read later does not count.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


class Cause(enum.Enum):
    """Why the two sides differ; `in_flight` when work on its way explains it while it lasts."""

    LEDGER_INCONSISTENT = (
        "the ledger's counters disagree with each other (available is not granted - returned - deducted "
        "+ refunded - held): an altered ledger",
        False,
    )
    GRANT_NOT_MADE = ("the ledger counts grants the center never made: an altered ledger or a forged grant", False)
    REPORT_OVERSPENT = (
        "the ledger reports spending and returning more than it was granted, or refunding more than it "
        "deducted: an altered ledger or a forged report",
        False,
    )
    REPORT_CONTRADICTS = (
        "the ledger's report contradicts what it reported before: two ledgers serve the region, or the "
        "ledger went back to an older copy",
        False,
    )
    RETURN_NOT_TAKEN = (
        "the ledger gave back quota the center has not taken in yet: in flight, reported at the next renewal",
        True,
    )
    CONSUMPTION_NOT_REPORTED = ("the ledger spent more than the center was told: consumption not yet reported", True)
    CENTER_COUNTS_MORE = (
        "the center counts more unspent quota in the region than its ledger holds: grants the ledger has not "
        "applied yet (applied at the next renewal), returns or consumption not reported yet, or a new "
        "incarnation of the ledger the center has not heard of",
        True,
    )
    LEDGER_HOLDS_MORE = (
        "the ledger holds more unspent quota than the center counts: refunds not reported yet, or an altered "
        "ledger (deducted or returned lowered)",
        True,
    )

    def __init__(self, text: str, in_flight: bool) -> None:
        self.text = text
        self.in_flight = in_flight


@dataclass(frozen=True)
class Finding:
    promotion_id: str
    region: str
    cause: Cause
    amount: int
    """How far apart the two sides are, in the promotion's units; always above 0."""

    def describe(self) -> str:
        return f"promotion {self.promotion_id}, region {self.region}: {self.amount} apart; {self.cause.text}"

    def document(self) -> dict[str, object]:
        return {
            "promotion_id": self.promotion_id,
            "region": self.region,
            "amount": self.amount,
            "cause": self.cause.name.lower(),
            "in_flight": self.cause.in_flight,
            "explanation": self.cause.text,
        }


@dataclass(frozen=True)
class CenterBook:
    """What the center books for one region of one promotion (its GetUsage row)."""

    granted: int = 0
    """Over every life of the region's ledger."""
    returned: int = 0
    consumed: int = 0
    """Net deductions reported, over every life."""
    held: int = 0
    """What the current life holds unspent, as its last report tells."""


@dataclass(frozen=True)
class LedgerBook:
    """What the region's ledger says of one promotion, in its current life (its GetStatus balance)."""

    granted: int = 0
    returned: int = 0
    deducted: int = 0
    refunded: int = 0
    held: int = 0
    """Held by reservations."""
    available: int = 0
    """The ledger's own figure."""

    @property
    def unspent(self) -> int:
        """What the ledger holds that no order spent: available plus what reservations hold."""
        return self.granted - self.returned - self.deducted + self.refunded


def compare(promotion_id: str, region: str, center: CenterBook, ledger: LedgerBook) -> list[Finding]:
    """Every difference between the two books of one promotion in one region, each once: the parts a
    specific cause explains first, and what is left of the unspent quota's difference after them."""
    found: list[Finding] = []

    def differs(cause: Cause, amount: int) -> int:
        if amount > 0:
            found.append(Finding(promotion_id, region, cause, amount))
        return max(amount, 0)

    derived = ledger.unspent - ledger.held
    differs(Cause.LEDGER_INCONSISTENT, abs(ledger.available - derived))
    forged = differs(Cause.GRANT_NOT_MADE, ledger.granted - center.granted)
    # The center's totals include earlier lives of the ledger, so they bound the current life's figures
    # from above: only a ledger ahead of them shows a report still on its way.
    returning = differs(Cause.RETURN_NOT_TAKEN, ledger.returned - center.returned)
    spending = differs(Cause.CONSUMPTION_NOT_REPORTED, ledger.deducted - ledger.refunded - center.consumed)
    # The unspent quota compares exactly, life for life: the center's `held` is the current life's.
    rest = ledger.unspent - center.held - forged + returning + spending
    differs(Cause.LEDGER_HOLDS_MORE, rest)
    differs(Cause.CENTER_COUNTS_MORE, -rest)
    return found


def compare_all(
    promotion_id: str, centers: Mapping[str, CenterBook], ledgers: Mapping[str, LedgerBook]
) -> list[Finding]:
    """The promotion in every region `ledgers` names; a region the center has no books for compares with
    empty books (a ledger holding a promotion the center never granted there)."""
    found: list[Finding] = []
    for region in sorted(ledgers):
        found += compare(promotion_id, region, centers.get(region, CenterBook()), ledgers[region])
    return found


def persistent(first: Iterable[Finding], second: Iterable[Finding]) -> list[Finding]:
    """The differences to report from two readings some seconds apart: those of the second reading that
    nothing in flight explains, and those in flight that the first reading showed too, with the smaller
    of the two amounts (what stayed apart all along)."""
    earlier = {(f.promotion_id, f.region, f.cause): f.amount for f in first}
    reported = []
    for finding in second:
        key = (finding.promotion_id, finding.region, finding.cause)
        if not finding.cause.in_flight:
            reported.append(finding)
        elif key in earlier:
            reported.append(Finding(*key, min(finding.amount, earlier[key])))
    return reported
