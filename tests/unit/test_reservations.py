"""Reservations on the region's pure ledger (LocalLedger): hold, confirm, cancel, expire; checked against a model."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quota_common.errors import FailedPrecondition, NotFound, Rejected, RejectReason
from region_agent.ledger.base import Balance, Line, RefundOutcome, Settle, SettleOutcome, UserLimit
from region_agent.ledger.local import LocalLedger
from tests.unit.test_region_ledger import GrantOp, TakeBackOp

NOW = 1_000_000
HOLD = 100


def funded(**amounts: int) -> LocalLedger:
    local = LocalLedger()
    for promotion, amount in amounts.items():
        assert local.apply_grant(f"grant-{promotion}", promotion, amount)
    return local


def one(promotion: str, amount: int, user: str = "") -> tuple[Line, ...]:
    return (Line(promotion, amount, user),)


def refused_as_precondition(call: Callable[[], object]) -> None:
    """Raises FailedPrecondition itself: its subclass Rejected would tell the caller the reservation expired."""
    with pytest.raises(FailedPrecondition) as caught:
        call()
    assert type(caught.value) is FailedPrecondition


def test_an_order_key_replays_its_reservation_and_refuses_any_other_use() -> None:
    local = funded(a=10, b=10)
    lines = one("a", 4)
    reserved = local.deduct("reserved", lines, hold_ms=HOLD, now_ms=NOW)
    assert (reserved.accepted, reserved.replayed, reserved.expires_at_ms) == (True, False, NOW + HOLD)
    assert reserved.available_after == (6,)
    local.deduct("deducted", one("a", 3))
    before = local.balances()
    assert before["a"] == Balance(granted=10, deducted=3, held=4)
    again = local.deduct("reserved", lines, hold_ms=5 * HOLD, now_ms=NOW + 50)
    assert (again.replayed, again.lines, again.expires_at_ms) == (True, lines, NOW + HOLD)
    with pytest.raises(FailedPrecondition, match="was used for a reservation"):
        local.deduct("reserved", lines)
    with pytest.raises(FailedPrecondition, match="deducted already"):
        local.deduct("deducted", one("a", 3), hold_ms=HOLD, now_ms=NOW)
    for other in (one("a", 1), one("b", 4), (Line("a", 4), Line("b", 1))):
        with pytest.raises(FailedPrecondition, match="different lines"):
            local.deduct("reserved", other, hold_ms=HOLD, now_ms=NOW)
    for how in Settle:
        refused_as_precondition(partial(local.settle, "deducted", how, NOW))
        with pytest.raises(NotFound):
            local.settle("unknown", how, NOW)
    assert local.balances() == before


@pytest.mark.parametrize("how", list(Settle))
def test_a_settle_applies_once_and_shuts_out_the_other(how: Settle) -> None:
    (other,) = set(Settle) - {how}
    after = Balance(granted=10, deducted=4) if how is Settle.CONFIRM else Balance(granted=10)
    local = funded(a=10)
    lines = one("a", 4)
    local.deduct("o1", lines, hold_ms=HOLD, now_ms=NOW)
    assert local.settle("o1", how, NOW + 1) == SettleOutcome(lines)
    assert local.balance("a") == after
    # Settled in time, the reservation has no deadline any more: later retries replay, never expire.
    for now in (NOW + 2, NOW + 2 * HOLD):
        assert local.settle("o1", how, now) == SettleOutcome(lines, replayed=True)
        refused_as_precondition(partial(local.settle, "o1", other, now))
    assert local.expire(NOW + 2 * HOLD) == 0
    assert local.balance("a") == after


def test_settling_at_the_deadline_expires_the_reservation_first_without_expire() -> None:
    local = funded(a=10)
    lines = one("a", 4)
    local.deduct("late", lines, hold_ms=HOLD, now_ms=NOW)
    local.deduct("cancelled-late", one("a", 2), hold_ms=HOLD, now_ms=NOW)
    local.deduct("in-time", one("a", 1), hold_ms=HOLD, now_ms=NOW)
    assert local.settle("in-time", Settle.CONFIRM, NOW + HOLD - 1) == SettleOutcome(one("a", 1))
    for _ in range(2):  # the first confirm expires it, the second finds it expired
        with pytest.raises(Rejected) as caught:
            local.settle("late", Settle.CONFIRM, NOW + HOLD)
        assert caught.value.reason is RejectReason.RESERVATION_EXPIRED
        assert local.balance("a") == Balance(granted=10, deducted=1, held=2)
    assert local.settle("cancelled-late", Settle.CANCEL, NOW + HOLD) == SettleOutcome(one("a", 2), expired=True)
    assert local.settle("late", Settle.CANCEL, NOW + HOLD) == SettleOutcome(lines, expired=True)
    assert local.expire(NOW + 2 * HOLD) == 0
    assert local.balance("a") == Balance(granted=10, deducted=1)


def test_expire_releases_exactly_the_pending_reservations_due() -> None:
    local = funded(a=20)
    for key, hold in (("due-10", 10), ("due-20", 20), ("due-30", 30), ("confirmed-10", 10), ("cancelled-10", 10)):
        local.deduct(key, one("a", 2), hold_ms=hold, now_ms=NOW)
    local.settle("confirmed-10", Settle.CONFIRM, NOW)
    local.settle("cancelled-10", Settle.CANCEL, NOW)
    assert local.balance("a") == Balance(granted=20, deducted=2, held=6)
    assert local.expire(NOW + 9) == 0
    assert local.expire(NOW + 19) == 1
    assert local.expire(NOW + 19) == 0
    assert local.balance("a") == Balance(granted=20, deducted=2, held=4)
    assert local.expire(NOW + 30) == 2
    assert local.settle("due-10", Settle.CANCEL, NOW + 40) == SettleOutcome(one("a", 2), expired=True)
    assert local.deduct("due-10", one("a", 2), hold_ms=HOLD, now_ms=NOW + 40).expires_at_ms == NOW + 10
    assert local.balance("a") == Balance(granted=20, deducted=2)


@pytest.mark.parametrize("end", ["pending", "cancelled", "expired"])
def test_refund_needs_a_confirmed_reservation(end: str) -> None:
    local = funded(a=10)
    local.deduct("o1", one("a", 4), hold_ms=HOLD, now_ms=NOW)
    if end == "cancelled":
        local.settle("o1", Settle.CANCEL, NOW)
    elif end == "expired":
        assert local.expire(NOW + HOLD) == 1
    before = local.balances()
    for lines in ((), one("a", 1)):
        with pytest.raises(FailedPrecondition, match="not confirmed"):
            local.refund("o1", "r1", lines)
    assert local.balances() == before
    if end == "pending":  # the refused refund id was not used up
        local.settle("o1", Settle.CONFIRM, NOW)
        assert local.refund("o1", "r1", ()) == RefundOutcome(one("a", 4))


def test_user_limits_count_reservations_until_they_are_released() -> None:
    local = funded(a=100)
    limits = {"a": UserLimit(units=5, orders=2)}

    def reserve(key: str, amount: int, user: str = "u1", hold_ms: int = HOLD) -> tuple[str, ...]:
        outcome = local.deduct(key, one("a", amount, user), limits, hold_ms=hold_ms, now_ms=NOW)
        assert not outcome.short
        return outcome.over_limit

    assert reserve("o1", 3) == ()
    assert reserve("o2", 1, hold_ms=10) == ()
    assert reserve("o3", 1) == ("a",)  # a third order
    assert reserve("o3-u2", 1, user="u2") == ()
    local.settle("o1", Settle.CONFIRM, NOW)
    assert reserve("o4", 1) == ("a",)  # confirmed still counts
    assert local.expire(NOW + 10) == 1  # o2 gives back one unit and one order
    assert reserve("o5", 3) == ("a",)  # 3 + 3 units
    assert reserve("o5", 2) == ()
    local.settle("o5", Settle.CANCEL, NOW)
    assert reserve("o6", 2, hold_ms=0) == ()


LIMITS = {"a": UserLimit(orders=2), "b": UserLimit(units=12)}


@dataclass
class ModelOrder:
    lines: tuple[Line, ...]
    deadline: int  # 0 for a plain deduction
    state: str
    refunded: Counter[str] = field(default_factory=Counter)


@dataclass
class ReservationModel:
    """What the ledger should hold, computed independently of it."""

    grants: dict[str, tuple[str, int]] = field(default_factory=dict)
    returned: Counter[str] = field(default_factory=Counter)
    orders: dict[str, ModelOrder] = field(default_factory=dict)
    refunds: dict[tuple[str, str], RefundOutcome] = field(default_factory=dict)
    now: int = NOW

    def expected(self, promotion: str) -> Balance:
        by_state: Counter[str] = Counter()
        for order in self.orders.values():
            by_state[order.state] += sum(line.amount for line in order.lines if line.promotion_id == promotion)
        return Balance(
            granted=sum(amount for p, amount in self.grants.values() if p == promotion),
            returned=self.returned[promotion],
            deducted=by_state["deducted"] + by_state["confirmed"],
            refunded=sum(order.refunded[promotion] for order in self.orders.values()),
            held=by_state["pending"],
        )

    def over_limit(self, lines: tuple[Line, ...]) -> tuple[str, ...]:
        over = []
        for line in lines:
            limit = LIMITS.get(line.promotion_id, UserLimit())
            mine = (line.promotion_id, line.user_id)
            left = [
                held.amount - order.refunded[held.promotion_id]
                for order in self.orders.values()
                if order.state in ("deducted", "pending", "confirmed")
                for held in order.lines
                if (held.promotion_id, held.user_id) == mine
            ]
            units, orders = sum(left), sum(1 for units in left if units > 0)
            if (limit.units and units + line.amount > limit.units) or (limit.orders and orders >= limit.orders):
                over.append(line.promotion_id)
        return tuple(over)


@dataclass(frozen=True)
class DeductOp:
    key: str
    lines: tuple[Line, ...]
    hold_ms: int
    retry: bool
    """Sends the lines the key was first used with, so that retries are common."""


@dataclass(frozen=True)
class SettleOp:
    key: str
    how: Settle


@dataclass(frozen=True)
class RefundOp:
    """Refunds whatever the order has left: partial refunds are test_region_ledger's."""

    key: str
    refund_id: str


@dataclass(frozen=True)
class TickOp:
    ms: int
    then_expire: bool


LedgerOp = GrantOp | DeductOp | SettleOp | RefundOp | TakeBackOp | TickOp


def lines_of(pairs: list[tuple[str, int]], user: str) -> tuple[Line, ...]:
    return tuple(Line(promotion, amount, user) for promotion, amount in pairs)


promotions = st.sampled_from(["a", "b"])
order_keys = st.sampled_from([f"order-{i}" for i in range(5)])
amounts = st.lists(st.tuples(promotions, st.integers(1, 8)), min_size=1, max_size=2, unique_by=lambda t: t[0])
order_lines = st.builds(lines_of, amounts, st.sampled_from(["u1", "u2"]))
ledger_ops: st.SearchStrategy[LedgerOp] = st.one_of(
    st.builds(GrantOp, st.sampled_from([f"g{i}" for i in range(6)]), promotions, st.integers(1, 20)),
    # Holds as short as the clock's ticks, so deadlines pass (and are hit exactly) within a run.
    st.builds(DeductOp, order_keys, order_lines, st.sampled_from([0, 1, 5, 20]), st.booleans()),
    st.builds(SettleOp, order_keys, st.sampled_from(Settle)),
    st.builds(RefundOp, order_keys, st.sampled_from(["r1", "r2"])),
    st.builds(TakeBackOp, promotions, st.integers(0, 12)),
    st.builds(TickOp, st.integers(0, 10), st.booleans()),
)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(ledger_ops, min_size=20, max_size=60))
def test_reservations_against_a_model(ops: list[LedgerOp]) -> None:
    local = LocalLedger()
    model = ReservationModel()
    # Seed both promotions, so most orders are accepted and go on to be settled, refunded and expired.
    for op in [GrantOp("seed-a", "a", 20), GrantOp("seed-b", "b", 20), *ops]:
        before = local.balances()
        if isinstance(op, GrantOp):
            assert local.apply_grant(op.grant_id, op.promotion, op.amount) == (op.grant_id not in model.grants)
            model.grants.setdefault(op.grant_id, (op.promotion, op.amount))
        elif isinstance(op, DeductOp):
            check_deduct(local, model, op)
        elif isinstance(op, SettleOp):
            check_settle(local, model, op)
        elif isinstance(op, RefundOp):
            check_refund(local, model, op)
        elif isinstance(op, TakeBackOp):
            taken = local.return_quota(op.promotion, op.amount)
            assert taken == min(op.amount, model.expected(op.promotion).available)
            model.returned[op.promotion] += taken
        else:
            model.now += op.ms
            if op.then_expire:
                due = [o for o in model.orders.values() if o.state == "pending" and o.deadline <= model.now]
                assert local.expire(model.now) == len(due)
                for order in due:
                    order.state = "expired"
        for promotion in ("a", "b"):
            balance, old = local.balance(promotion), before.get(promotion, Balance())
            assert balance == model.expected(promotion)
            assert balance.available >= 0
            for counter in ("granted", "returned", "deducted", "refunded"):
                assert getattr(balance, counter) >= getattr(old, counter)


def check_deduct(local: LocalLedger, model: ReservationModel, op: DeductOp) -> None:
    first = model.orders.get(op.key)
    if first is not None and op.retry:
        op = replace(op, lines=first.lines)
    reserve = op.hold_ms > 0
    if first is not None and (first.lines != op.lines or (first.deadline > 0) != reserve):
        with pytest.raises(FailedPrecondition):
            local.deduct(op.key, op.lines, LIMITS, op.hold_ms, model.now)
        return
    outcome = local.deduct(op.key, op.lines, LIMITS, op.hold_ms, model.now)
    if first is not None:
        assert (outcome.replayed, outcome.accepted) == (True, True)
        assert (outcome.lines, outcome.expires_at_ms) == (first.lines, first.deadline)
        return
    over_limit = model.over_limit(op.lines)
    short = tuple(line.promotion_id for line in op.lines if model.expected(line.promotion_id).available < line.amount)
    assert outcome.over_limit == over_limit
    assert outcome.short == (() if over_limit else short)
    if not outcome.accepted:
        return
    assert not outcome.replayed
    deadline = model.now + op.hold_ms if reserve else 0
    assert outcome.expires_at_ms == deadline
    model.orders[op.key] = ModelOrder(op.lines, deadline, "pending" if reserve else "deducted")
    assert outcome.available_after == tuple(model.expected(line.promotion_id).available for line in op.lines)


def check_settle(local: LocalLedger, model: ReservationModel, op: SettleOp) -> None:
    order = model.orders.get(op.key)
    if order is None:
        with pytest.raises(NotFound):
            local.settle(op.key, op.how, model.now)
        return
    if order.state == "pending" and order.deadline <= model.now:
        order.state = "expired"  # whether or not expire() ran, the deadline comes first
    settled = {Settle.CONFIRM: "confirmed", Settle.CANCEL: "cancelled"}[op.how]
    if order.state == "pending":
        assert local.settle(op.key, op.how, model.now) == SettleOutcome(order.lines)
        order.state = settled
    elif order.state == settled:
        assert local.settle(op.key, op.how, model.now) == SettleOutcome(order.lines, replayed=True)
    elif order.state == "expired" and op.how is Settle.CANCEL:
        assert local.settle(op.key, op.how, model.now) == SettleOutcome(order.lines, expired=True)
    elif order.state == "expired":
        with pytest.raises(Rejected) as caught:
            local.settle(op.key, op.how, model.now)
        assert caught.value.reason is RejectReason.RESERVATION_EXPIRED
    else:  # a plain deduction, or the other settle came first
        refused_as_precondition(partial(local.settle, op.key, op.how, model.now))


def check_refund(local: LocalLedger, model: ReservationModel, op: RefundOp) -> None:
    previous = model.refunds.get((op.key, op.refund_id))
    order = model.orders.get(op.key)
    if previous is not None:
        assert local.refund(op.key, op.refund_id, ()) == replace(previous, replayed=True)
    elif order is None:
        with pytest.raises(NotFound):
            local.refund(op.key, op.refund_id, ())
    elif order.state not in ("deducted", "confirmed"):
        with pytest.raises(FailedPrecondition, match="not confirmed"):
            local.refund(op.key, op.refund_id, ())
    else:
        left = tuple(Line(line.promotion_id, line.amount - order.refunded[line.promotion_id]) for line in order.lines)
        outcome = local.refund(op.key, op.refund_id, ())
        assert outcome == RefundOutcome(tuple(line for line in left if line.amount > 0))
        for line in left:
            order.refunded[line.promotion_id] += line.amount
        model.refunds[(op.key, op.refund_id)] = outcome


def test_a_settled_reservations_deadline_never_touches_a_later_order_with_its_key() -> None:
    local = LocalLedger(retention_ms=1_000)
    local.apply_grant("g", "a", 10)
    local.deduct("k", (Line("a", 4),), hold_ms=60_000, now_ms=0)
    local.settle("k", Settle.CANCEL, 1)
    local.deduct("k", (Line("a", 4),), hold_ms=100_000, now_ms=2_000)
    local.deduct("other", (Line("a", 1),), hold_ms=1_000, now_ms=2_000)

    assert local.expire(60_000) == 1
    assert local.balance("a").held == 4
    assert local.expire(102_000) == 1
    assert local.balance("a").held == 0
