"""Per-user limits, checked over time and per region (users are homed in one region, which enforces them).

What a user holds is only known up to the uncertainty of concurrent calls, so the check takes the least the
user can have held: a deduction counts from when its ok was seen (its latest possible effect) and a refund
from when it was first invoked (its earliest). A reservation counts only once confirmed, from when its
confirm was seen, since when an unconfirmed one lapsed is not recorded. A user over the limit even so is a
certain violation. An order stops counting against the order limit once its line is fully refunded.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from loadtest.chaos.accounts import Accounts
from loadtest.chaos.books import Books, Violation, ViolationKind


@dataclass(frozen=True)
class _Change:
    at: float
    units: int
    orders: int
    op_id: int


def user_limit_violations(accounts: Accounts, books: Books) -> list[Violation]:
    timelines: dict[tuple[str, str, str], list[_Change]] = defaultdict(list)
    for (region, promotion), entries in accounts.deductions.items():
        deductions = {entry.order: entry for entry in entries}
        for entry in entries:
            timelines[(region, promotion, entry.user)].append(_Change(entry.at, entry.amount, 1, entry.op_id))
        refunded: dict[str, int] = defaultdict(int)
        for refund in sorted(accounts.refunds.get((region, promotion), ()), key=lambda e: e.started):
            deduction = deductions.get(refund.order)
            if deduction is None:
                continue  # a refund of nothing is reported as an over-refund
            was_whole = refunded[refund.order] < deduction.amount
            refunded[refund.order] += refund.amount
            closes = 1 if was_whole and refunded[refund.order] >= deduction.amount else 0
            timelines[(region, promotion, deduction.user)].append(
                _Change(refund.started, -refund.amount, -closes, refund.op_id)
            )
    found: list[Violation] = []
    for (region, promotion, user), timeline in sorted(timelines.items()):
        if promotion not in books:
            continue
        limit = books[promotion].user_limit
        for measure, cap in (("units", limit.units), ("orders", limit.orders)):
            over = _over(timeline, cap, measure)
            if over:
                found.append(
                    Violation(
                        ViolationKind.USER_LIMIT,
                        over,
                        f"user {user!r} held more than {cap} {measure} of {promotion} in {region}: the region "
                        "must refuse with REJECT_REASON_USER_LIMIT once a user reaches the limit.",
                    )
                )
    return found


def _over(timeline: list[_Change], cap: int, measure: str) -> tuple[int, ...]:
    """The operations that took the user above `cap` (0 is no limit)."""
    if cap <= 0:
        return ()
    total, over = 0, []
    # Decreases first at equal times, which keeps the total a lower bound.
    for change in sorted(timeline, key=lambda c: (c.at, getattr(c, measure))):
        step: int = getattr(change, measure)
        total += step
        if step > 0 and total > cap:
            over.append(change.op_id)
    return tuple(over)
