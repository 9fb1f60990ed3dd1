"""Judges a history against the final books: `judge(history, books, allowance) -> Verdict`, pure.

Unknowns are resolved before judging: the workload retries each unknown key after healing and the retry is
an operation in the history (see `keys`). What counts as acknowledged net is defined in `accounts`:
deductions and confirmed reservations minus refunds, over keys that answered ok at least once.

Violations, by kind:
- over_issue: a promotion's acknowledged net, over all regions, above the budget in effect at some moment (the
  latest "budget" event's value then; the books' budget before any, as in histories kept without them);
- lost_acknowledgement: a region's books consumed less than its acknowledged net (less unresolved refunds);
- phantom_consumption: consumed more than acknowledged net plus what unresolved deductions could account for;
- two_answers: an ok, then a different answer for the same request; or one order both confirmed and cancelled;
- applied_twice: two ok answers with replayed=false for one key;
- unresolved_unknown: a key whose last attempt is unknown and that never answered ok;
- after_freeze: an ok, non-replayed deduct or reserve invoked after a freeze of its promotion, or the emergency
  switch of its region (or of every region), took effect plus an allowance (one lease TTL when its region was cut
  off from the leader meanwhile: partitioned, or the leader killed or stopped; a propagation allowance otherwise);
- user_limit: see `limits`;
- over_refund: an order given back more of a promotion than it deducted;
- held_after_return: after every agent stopped gracefully, the center counts a region as holding other than
  what the region's ledger holds: more is stranded quota, lost to the budget; less is quota the budget does not
  know of.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from loadtest.chaos import keys as keys_
from loadtest.chaos.accounts import Accounts, build
from loadtest.chaos.books import Books, RegionBooks, Verdict, Violation, ViolationKind
from loadtest.chaos.history import History, Kind, NemesisEvent, Operation
from loadtest.chaos.limits import user_limit_violations

CUT_OFF_FROM_CENTER = ("partition", "kill-leader", "stop-leader")


@dataclass(frozen=True)
class Allowance:
    """How late after a freeze or the emergency switch took effect an agent may still answer a new deduction ok
    (seconds)."""

    propagation_s: float = 1.0
    lease_ttl_s: float = 10.0


def judge(history: History, books: Books, allowance: Allowance = Allowance()) -> Verdict:
    keys = keys_.group(history.operations)
    accounts = build(keys)
    found = [violation for attempts in keys.values() for violation in keys_.key_violations(attempts)]
    found += _settled_both_ways(keys)
    found += _over_issue(accounts, books, history.events)
    found += _books_mismatch(accounts, books)
    found += _over_refund(accounts)
    found += user_limit_violations(accounts, books)
    found += _after_freeze(history, allowance)
    found += _held_after_return(books)
    return Verdict(tuple(found))


def _settled_both_ways(keys: dict[keys_.Key, keys_.Attempts]) -> list[Violation]:
    found = []
    for (order, kind, _), confirm in keys.items():
        cancel = keys.get((order, Kind.CANCEL, ""))
        confirmed, cancelled = confirm.first_ok, cancel.first_ok if cancel else None
        if kind is Kind.CONFIRM and confirmed and cancelled:
            found.append(
                Violation(
                    ViolationKind.TWO_ANSWERS,
                    (confirmed.id, cancelled.id),
                    f"reservation {order} was answered ok both to confirm and to cancel: whichever comes first "
                    "settles it, and the other must be refused.",
                )
            )
    return found


def _over_issue(accounts: Accounts, books: Books, events: Iterable[NemesisEvent]) -> list[Violation]:
    """Checks the least the net can have been at every moment (deductions from their ok, refunds from their
    invocation, refunds first at equal times), so a net above the budget then in effect is certain; the end is
    one moment. Only a deduction can go over: a lowered budget below the net is the center's to refuse."""
    found = []
    for promotion, promotion_books in sorted(books.items()):
        budget_at = _budgets(promotion, promotion_books.budget, events)
        changes = [
            (e.at, e.amount, e.op_id) for (_, p), es in accounts.deductions.items() if p == promotion for e in es
        ]
        changes += [
            (e.started, -e.amount, e.op_id) for (_, p), es in accounts.refunds.items() if p == promotion for e in es
        ]
        total, worst, over = 0, (0, 0), []
        for at, amount, op_id in sorted(changes):
            total += amount
            budget = budget_at(at)
            if amount > 0 and total > budget:
                over.append(op_id)
                if total - budget > worst[0]:
                    worst = (total - budget, total)
        if over:
            excess, net = worst
            found.append(
                Violation(
                    ViolationKind.OVER_ISSUE,
                    tuple(over),
                    f"{promotion}: acknowledged net reached {net}, above the budget {net - excess} then in effect "
                    f"by {excess}; the listed deductions were acknowledged with the budget spent.",
                )
            )
    return found


def _budgets(promotion: str, final: int, events: Iterable[NemesisEvent]) -> Callable[[float], int]:
    """The budget in effect at a moment: the latest "budget" event's value at or before it, else `final`."""
    changes = sorted(
        ((e.start, e.value) for e in events if e.kind == "budget" and e.target == promotion and e.value is not None),
        key=lambda change: change[0],
    )
    starts, values = [start for start, _ in changes], [value for _, value in changes]

    def budget_at(moment: float) -> int:
        index = bisect_right(starts, moment)
        return values[index - 1] if index else final

    return budget_at


def _books_mismatch(accounts: Accounts, books: Books) -> list[Violation]:
    on_books = {(region, p): region_books for p, pb in books.items() for region, region_books in pb.regions.items()}
    found = []
    for account in sorted(accounts.accounts() | set(on_books)):
        region, promotion = account
        consumed, net = on_books.get(account, RegionBooks()).consumed, accounts.net(account)
        ids = tuple(e.op_id for book in (accounts.deductions, accounts.refunds) for e in book.get(account, ()))
        if consumed < net - accounts.slack_down.get(account, 0):
            found.append(
                Violation(
                    ViolationKind.LOST_ACKNOWLEDGEMENT,
                    ids,
                    f"{region}/{promotion}: the books say {consumed} consumed, but {net} was acknowledged net; an "
                    "acknowledged deduction was forgotten (or a refund applied that no client was told of).",
                )
            )
        if consumed > net + accounts.slack_up.get(account, 0):
            found.append(
                Violation(
                    ViolationKind.PHANTOM_CONSUMPTION,
                    ids,
                    f"{region}/{promotion}: the books say {consumed} consumed, more than the {net} acknowledged net "
                    "and what unresolved calls could add; a deduction applied without an ok, or a refund was lost.",
                )
            )
    return found


def _over_refund(accounts: Accounts) -> list[Violation]:
    found = []
    for account, refunds in sorted(accounts.refunds.items()):
        deducted = {e.order: e for e in accounts.deductions.get(account, ())}
        given: dict[str, list[int]] = {}
        back_by_order: dict[str, int] = {}
        for refund in refunds:
            given.setdefault(refund.order, []).append(refund.op_id)
            back_by_order[refund.order] = back_by_order.get(refund.order, 0) + refund.amount
        for order, op_ids in sorted(given.items()):
            back = back_by_order[order]
            spent = deducted[order].amount if order in deducted else 0
            if back > spent:
                ids = ((deducted[order].op_id,) if order in deducted else ()) + tuple(op_ids)
                found.append(
                    Violation(
                        ViolationKind.OVER_REFUND,
                        ids,
                        f"order {order} got {back} of {account[1]} back in {account[0]} but deducted {spent}: "
                        "the agent must refuse a refund above what the order has left.",
                    )
                )
    return found


def _after_freeze(history: History, allowance: Allowance) -> list[Violation]:
    switches = [e for e in history.events if e.kind in ("freeze", "emergency")]
    # A region that cannot reach the leader hears of a switch only when its lease runs out: cut off alone, or
    # with everyone while the leader is down or stopped (the switch may have reached a leader just before).
    cut_offs = [e for e in history.events if e.kind in CUT_OFF_FROM_CENTER]
    found = []
    for op in history.operations:
        if not op.fresh_take:
            continue
        for switch in switches:
            if not switch.covers(op) or not _answered_while_frozen(op, switch):
                continue
            cut_off = any(_overlaps(c, switch.start, op.invoked) for c in cut_offs if c.covers(op))
            grace = allowance.lease_ttl_s if cut_off else allowance.propagation_s
            if op.invoked > switch.start + grace:
                what, went_on = (
                    ("freeze", f"{switch.target} froze")
                    if switch.kind == "freeze"
                    else ("emergency switch", f"the emergency switch went on for {switch.target or 'every region'}")
                )
                found.append(
                    Violation(
                        ViolationKind.AFTER_FREEZE,
                        (op.id,),
                        f"{op.kind} {op.order_key} in {op.region} via {op.agent} was answered ok "
                        f"{op.invoked - switch.start:.3f}s after {went_on} (allowed {grace}s"
                        f"{', cut off from the center' if cut_off else ''}): the {what} did not reach the agent "
                        "in time.",
                    )
                )
    return found


def _held_after_return(books: Books) -> list[Violation]:
    found = []
    for promotion, promotion_books in sorted(books.items()):
        for region, region_books in sorted(promotion_books.regions.items()):
            outstanding, kept = region_books.outstanding, region_books.kept
            if outstanding > kept:
                message = (
                    f"the center still counts {outstanding} units as held by region {region} of promotion "
                    f"{promotion} after every agent stopped, but its ledger holds {kept}: "
                    f"{outstanding - kept} stranded, lost to the budget."
                )
            elif outstanding < kept:
                message = (
                    f"region {region}'s ledger holds {kept} units of promotion {promotion} after every agent "
                    f"stopped, but the center counts {outstanding} as held: the region can spend "
                    f"{kept - outstanding} the budget does not know of."
                )
            else:
                continue
            found.append(Violation(ViolationKind.HELD_AFTER_RETURN, (), message))
    return found


def _answered_while_frozen(op: Operation, freeze: NemesisEvent) -> bool:
    """Whether the answer certainly came while the freeze held: the agent answered somewhere between the
    operation's invocation and its completion, and may have heard of the unfreeze as soon as it was sent."""
    return freeze.start <= op.invoked and (freeze.end is None or op.completed < freeze.end)


def _overlaps(event: NemesisEvent, start: float, end: float) -> bool:
    return event.start <= end and (event.end is None or event.end >= start)
