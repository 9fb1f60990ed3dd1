"""What the history says each region consumed of each promotion: the acknowledged net.

Acknowledged net, per (region, promotion), is the sum over applied keys (see `keys`) of
- a deduction: the lines its first ok answer applied;
- a confirm: the lines its reservation's first ok answer held (confirming turns the hold into a deduction);
- a refund: minus the lines its first ok answer gave back (each refund id once; a retry replays).
A reservation that is held, cancelled or expired counts nothing: its quota went back or is still `reserved`.

Unresolved keys may or may not have applied; `slack_up` and `slack_down` bound how far they could move the
books (the order's lines for a whole refund), so they are reported once, as unresolved, not again as a
mismatch of the books.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from loadtest.chaos.history import Kind
from loadtest.chaos.keys import Attempts, Key
from region_agent.ledger.base import Line

Account = tuple[str, str]
"""(region, promotion)."""


@dataclass(frozen=True)
class Entry:
    """One applied key's effect on an account: from `started` (its first attempt was invoked) it may have
    applied, and by `at` (the client saw its first ok) it had."""

    order: str
    promotion: str
    user: str
    amount: int
    started: float
    at: float
    op_id: int


@dataclass
class Accounts:
    deductions: dict[Account, list[Entry]] = field(default_factory=lambda: defaultdict(list))
    refunds: dict[Account, list[Entry]] = field(default_factory=lambda: defaultdict(list))
    slack_up: dict[Account, int] = field(default_factory=lambda: defaultdict(int))
    slack_down: dict[Account, int] = field(default_factory=lambda: defaultdict(int))

    def net(self, account: Account) -> int:
        return sum(e.amount for e in self.deductions.get(account, ())) - sum(
            e.amount for e in self.refunds.get(account, ())
        )

    def accounts(self) -> set[Account]:
        return set(self.deductions) | set(self.refunds)


def build(keys: dict[Key, Attempts]) -> Accounts:
    accounts = Accounts()
    reservations = {order: attempts for (order, kind, _), attempts in keys.items() if kind is Kind.RESERVE}
    deducted = {order: attempts for (order, kind, _), attempts in keys.items() if kind is Kind.DEDUCT}
    for (order, kind, _), attempts in keys.items():
        first = attempts.first_ok
        region = attempts.operations[0].region
        if kind is Kind.DEDUCT or kind is Kind.CONFIRM:
            source = attempts if kind is Kind.DEDUCT else reservations.get(order)
            lines = source.applied_lines if source else ()
            if first:
                _post(accounts.deductions, attempts, order, lines)
            elif attempts.unresolved:
                # An unknown deduction applied with its requested lines, if at all.
                _slack(accounts.slack_up, region, lines or attempts.operations[0].lines)
        elif kind is Kind.REFUND:
            if first:
                _post(accounts.refunds, attempts, order, first.outcome.applied)
            elif attempts.unresolved:
                whole = deducted.get(order) or reservations.get(order)
                requested = attempts.operations[0].lines or (whole.applied_lines if whole else ())
                _slack(accounts.slack_down, region, requested)
    return accounts


def _post(book: dict[Account, list[Entry]], attempts: Attempts, order: str, lines: tuple[Line, ...]) -> None:
    start, first = attempts.operations[0], attempts.first_ok
    assert first is not None, "only applied keys are posted"
    for line in lines:
        entry = Entry(order, line.promotion_id, line.user_id, line.amount, start.invoked, first.completed, first.id)
        book[(start.region, line.promotion_id)].append(entry)


def _slack(book: dict[Account, int], region: str, lines: tuple[Line, ...]) -> None:
    for line in lines:
        book[(region, line.promotion_id)] += line.amount
