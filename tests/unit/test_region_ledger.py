"""The region's pure ledger (LocalLedger): idempotent orders, refunds, grants; checked against a model."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quota_common.errors import FailedPrecondition, InvalidArgument, NotFound, QuotaError
from region_agent.ledger.base import Balance, DeductOutcome, Line, RefundOutcome
from region_agent.ledger.local import LocalLedger


def funded(**amounts: int) -> LocalLedger:
    """A ledger holding `amounts` per promotion, each from one grant."""
    local = LocalLedger()
    for promotion, amount in amounts.items():
        assert local.apply_grant(f"grant-{promotion}", promotion, amount)
    return local


def one(promotion: str, amount: int) -> tuple[Line, ...]:
    return (Line(promotion, amount),)


def same_answer(replay: DeductOutcome, first: DeductOutcome) -> bool:
    """A replay answers what the first call did: the same lines, accepted, marked replayed."""
    return replay.replayed and replay.accepted == first.accepted and replay.lines == first.lines and not replay.short


def test_deduct_takes_every_line_or_none() -> None:
    local = funded(a=10, b=3)
    before = local.balances()
    lines = (Line("a", 5), Line("b", 4))
    outcome = local.deduct("order-1", lines)
    assert not outcome.accepted
    assert outcome.short == ("b",)
    assert local.balances() == before
    assert local.find_order("order-1", lines) is None
    # Every short promotion is named, not only the first.
    assert local.deduct("order-1", (Line("a", 11), Line("b", 4))).short == ("a", "b")
    accepted = local.deduct("order-1", (Line("a", 5), Line("b", 3)))
    assert accepted.accepted
    assert not accepted.replayed
    assert accepted.lines == (Line("a", 5), Line("b", 3))
    assert accepted.available_after == (5, 0)
    assert local.balance("a") == Balance(granted=10, deducted=5)
    assert local.balance("b").available == 0


def test_deduct_from_an_unknown_promotion_is_short() -> None:
    local = funded(a=10)
    outcome = local.deduct("order-1", (Line("a", 1), Line("nope", 1)))
    assert outcome.short == ("nope",)
    assert local.balances() == {"a": Balance(granted=10)}


def test_deduct_replay_returns_the_first_answer_and_changes_nothing() -> None:
    local = funded(a=10)
    lines = one("a", 4)
    first = local.deduct("order-1", lines)
    assert first.accepted
    assert not first.replayed
    local.deduct("order-2", one("a", 6))  # the allotment is now empty
    after = local.balances()
    again = local.deduct("order-1", lines)
    assert same_answer(again, first)
    assert local.balances() == after
    found = local.find_order("order-1", lines)
    assert found is not None
    assert same_answer(found, first)


def test_same_order_key_with_other_lines_is_refused_and_changes_nothing() -> None:
    local = funded(a=10, b=10)
    local.deduct("order-1", one("a", 4))
    before = local.balances()
    for other in (one("a", 5), one("b", 4), (Line("a", 4), Line("b", 1)), ()):
        with pytest.raises(FailedPrecondition, match="order-1"):
            local.deduct("order-1", other)
        with pytest.raises(FailedPrecondition):
            local.find_order("order-1", other)
    assert local.balances() == before
    # The original order is intact.
    assert local.refund("order-1", "r1", ()) == RefundOutcome(one("a", 4))


def test_refund_everything_left_then_nothing() -> None:
    local = funded(a=10, b=10)
    local.deduct("order-1", (Line("a", 6), Line("b", 2)))
    assert local.refund("order-1", "r1", one("a", 2)) == RefundOutcome(one("a", 2))
    assert local.refund("order-1", "r2", ()) == RefundOutcome((Line("a", 4), Line("b", 2)))
    assert local.refund("order-1", "r3", ()) == RefundOutcome(())
    assert local.balance("a") == Balance(granted=10, deducted=6, refunded=6)
    assert local.balance("b") == Balance(granted=10, deducted=2, refunded=2)


@pytest.mark.parametrize(
    ("order_key", "lines", "error"),
    [
        ("order-404", one("a", 1), NotFound),
        ("order-404", (), NotFound),
        ("order-1", one("b", 1), InvalidArgument),  # not a promotion of this order
        ("order-1", one("a", 5), FailedPrecondition),  # 3 already refunded, 2 left
        ("order-1", (Line("a", 1), Line("a", 2), Line("b", 1)), InvalidArgument),
        ("order-1", (Line("a", 1), Line("c", 3)), InvalidArgument),
    ],
)
def test_refund_errors_change_nothing(order_key: str, lines: tuple[Line, ...], error: type[QuotaError]) -> None:
    local = funded(a=10, b=10)
    local.deduct("order-1", one("a", 5))
    local.refund("order-1", "r0", one("a", 3))
    before = local.balances()
    with pytest.raises(error):
        local.refund(order_key, "r1", lines)
    assert local.balances() == before
    # The failed refund id was not used up.
    assert local.refund("order-1", "r1", one("a", 2)) == RefundOutcome(one("a", 2))


def test_refund_too_much_names_the_figures() -> None:
    local = funded(a=10)
    local.deduct("order-1", one("a", 5))
    local.refund("order-1", "r0", one("a", 3))
    with pytest.raises(FailedPrecondition) as caught:
        local.refund("order-1", "r1", one("a", 4))
    assert "spent 5" in caught.value.message
    assert "3 is already refunded" in caught.value.message
    assert "at most 2" in caught.value.message


def test_refund_id_replay_returns_the_first_answer_and_changes_nothing() -> None:
    local = funded(a=10)
    local.deduct("order-1", one("a", 5))
    local.deduct("order-2", one("a", 5))
    first = local.refund("order-1", "r1", one("a", 2))
    before = local.balances()
    assert local.refund("order-1", "r1", one("a", 2)) == replace(first, replayed=True)
    for other in ((), one("a", 1)):
        with pytest.raises(FailedPrecondition, match=r"'r1'.*different lines"):
            local.refund("order-1", "r1", other)
    assert local.balances() == before
    # A refund id belongs to its order: the same id on another order is a new refund.
    assert local.refund("order-2", "r1", one("a", 1)) == RefundOutcome(one("a", 1))
    assert local.balance("a").refunded == 3


def test_grant_id_applies_once() -> None:
    local = LocalLedger()
    assert local.apply_grant("g1", "a", 7)
    assert not local.apply_grant("g1", "a", 7)
    assert not local.apply_grant("g1", "a", 99)
    assert local.apply_grant("g2", "a", 3)
    assert local.balance("a") == Balance(granted=10)


def test_take_back_removes_at_most_what_is_available() -> None:
    local = funded(a=10)
    local.deduct("order-1", one("a", 4))
    assert local.return_quota("a", 2) == 2
    assert local.return_quota("a", 100) == 4
    assert local.return_quota("a", 1) == 0
    assert local.return_quota("nope", 5) == 0
    assert local.balance("a") == Balance(granted=10, returned=6, deducted=4)
    assert "nope" not in local.balances()


@dataclass
class LedgerModel:
    """What the region's ledger should hold, computed independently of it."""

    grants: dict[str, tuple[str, int]] = field(default_factory=dict)
    orders: dict[str, tuple[Line, ...]] = field(default_factory=dict)
    refunded: dict[str, Counter[str]] = field(default_factory=dict)
    refunds: dict[tuple[str, str], tuple[tuple[Line, ...], RefundOutcome]] = field(default_factory=dict)
    returned: Counter[str] = field(default_factory=Counter)

    def expected(self, promotion: str) -> Balance:
        return Balance(
            granted=sum(amount for p, amount in self.grants.values() if p == promotion),
            returned=self.returned[promotion],
            deducted=sum(
                line.amount for lines in self.orders.values() for line in lines if line.promotion_id == promotion
            ),
            refunded=sum(counter[promotion] for counter in self.refunded.values()),
        )


@dataclass(frozen=True)
class GrantOp:
    grant_id: str
    promotion: str
    amount: int


@dataclass(frozen=True)
class DeductOp:
    key: str
    lines: tuple[Line, ...]


@dataclass(frozen=True)
class RefundOp:
    key: str
    refund_id: str
    lines: tuple[Line, ...]


@dataclass(frozen=True)
class TakeBackOp:
    promotion: str
    amount: int


LedgerOp = GrantOp | DeductOp | RefundOp | TakeBackOp

promotions = st.sampled_from(["a", "b"])
order_keys = st.sampled_from([f"order-{i}" for i in range(5)])
line_sets = st.lists(
    st.tuples(promotions, st.integers(min_value=1, max_value=8)), min_size=1, max_size=2, unique_by=lambda t: t[0]
).map(lambda pairs: tuple(Line(p, amount) for p, amount in pairs))
ledger_ops: st.SearchStrategy[LedgerOp] = st.one_of(
    st.builds(GrantOp, st.sampled_from([f"g{i}" for i in range(6)]), promotions, st.integers(1, 15)),
    st.builds(DeductOp, order_keys, line_sets),
    st.builds(RefundOp, order_keys, st.sampled_from(["r1", "r2", "r3"]), st.one_of(st.just(()), line_sets)),
    st.builds(TakeBackOp, promotions, st.integers(0, 12)),
)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(ledger_ops, max_size=40))
def test_local_ledger_against_a_model(ops: list[LedgerOp]) -> None:
    local = LocalLedger()
    model = LedgerModel()
    for op in ops:
        before = local.balances()
        if isinstance(op, GrantOp):
            applied = local.apply_grant(op.grant_id, op.promotion, op.amount)
            assert applied == (op.grant_id not in model.grants)
            model.grants.setdefault(op.grant_id, (op.promotion, op.amount))
        elif isinstance(op, DeductOp):
            check_deduct(local, model, op.key, op.lines, before)
        elif isinstance(op, RefundOp):
            check_refund(local, model, op.key, op.refund_id, op.lines, before)
        else:
            available = local.balance(op.promotion).available
            taken = local.return_quota(op.promotion, op.amount)
            assert taken == min(op.amount, available)
            model.returned[op.promotion] += taken
        after = local.balances()
        for promotion in ("a", "b"):
            balance = local.balance(promotion)
            assert balance == model.expected(promotion)
            assert balance.available >= 0
            old = before.get(promotion, Balance())
            assert balance.granted >= old.granted
            assert balance.returned >= old.returned
            assert balance.deducted >= old.deducted
            assert balance.refunded >= old.refunded
        assert set(after) >= set(before)


def check_deduct(
    local: LocalLedger, model: LedgerModel, key: str, lines: tuple[Line, ...], before: dict[str, Balance]
) -> None:
    first = model.orders.get(key)
    if first is not None and first != lines:
        with pytest.raises(FailedPrecondition):
            local.deduct(key, lines)
        assert local.balances() == before
        return
    short = tuple(line.promotion_id for line in lines if local.balance(line.promotion_id).available < line.amount)
    outcome = local.deduct(key, lines)
    if first is not None:
        assert outcome.replayed
        assert outcome.accepted
        assert outcome.lines == first
        assert local.balances() == before
        return
    assert outcome.short == short
    if short:
        assert local.balances() == before
    else:
        assert not outcome.replayed
        assert outcome.lines == lines
        assert outcome.available_after == tuple(local.balance(line.promotion_id).available for line in lines)
        model.orders[key] = lines
        model.refunded[key] = Counter()


def check_refund(
    local: LocalLedger,
    model: LedgerModel,
    key: str,
    refund_id: str,
    lines: tuple[Line, ...],
    before: dict[str, Balance],
) -> None:
    previous = model.refunds.get((key, refund_id))
    if previous is not None:
        asked, answer = previous
        if asked == lines:
            assert local.refund(key, refund_id, lines) == replace(answer, replayed=True)
        else:
            with pytest.raises(FailedPrecondition):
                local.refund(key, refund_id, lines)
        assert local.balances() == before
        return
    spent = model.orders.get(key)
    if spent is None:
        with pytest.raises(NotFound):
            local.refund(key, refund_id, lines)
        assert local.balances() == before
        return
    left = {line.promotion_id: line.amount - model.refunded[key][line.promotion_id] for line in spent}
    foreign = any(line.promotion_id not in left for line in lines)
    too_much = any(line.amount > left.get(line.promotion_id, line.amount) for line in lines)
    errors: tuple[type[QuotaError], ...] = (InvalidArgument,) * foreign + (FailedPrecondition,) * too_much
    if errors:  # with both wrong, either answer is right
        with pytest.raises(errors):
            local.refund(key, refund_id, lines)
        assert local.balances() == before
        return
    outcome = local.refund(key, refund_id, lines)
    wanted = lines or tuple(Line(p, amount) for p, amount in left.items() if amount > 0)
    assert outcome == RefundOutcome(wanted)
    for line in wanted:
        model.refunded[key][line.promotion_id] += line.amount
    assert all(model.refunded[key][line.promotion_id] <= line.amount for line in spent)
    model.refunds[(key, refund_id)] = (lines, outcome)
