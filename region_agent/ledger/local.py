"""The regional ledger as a pure, synchronous state machine (the contract is in `base`).

The in-process ledger serves it directly; tests and the simulator drive it without I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace

from quota_center.errors import FailedPrecondition, InvalidArgument, NotFound
from region_agent.ledger.base import NO_LIMITS, Balance, DeductOutcome, Line, RefundOutcome, UserLimit


@dataclass
class _Order:
    lines: tuple[Line, ...]
    refunded: Counter[str]


class LocalLedger:
    def __init__(self) -> None:
        self._balances: dict[str, Balance] = {}
        self._orders: dict[str, _Order] = {}
        self._refunds: dict[tuple[str, str], RefundOutcome] = {}
        self._grants: set[str] = set()
        # (promotion, user) -> [units, orders] held by that user, for per-user limits.
        self._users: dict[tuple[str, str], list[int]] = {}

    def balance(self, promotion_id: str) -> Balance:
        return self._balances.get(promotion_id, Balance())

    def balances(self) -> dict[str, Balance]:
        return dict(self._balances)

    def find_order(self, order_key: str, lines: tuple[Line, ...]) -> DeductOutcome | None:
        order = self._orders.get(order_key)
        if order is None:
            return None
        if order.lines != lines:
            raise FailedPrecondition(
                f"order key {order_key!r} was already deducted with different lines; "
                "use a new order key for a different order"
            )
        return DeductOutcome(order.lines, replayed=True)

    def deduct(
        self, order_key: str, lines: tuple[Line, ...], limits: Mapping[str, UserLimit] = NO_LIMITS
    ) -> DeductOutcome:
        previous = self.find_order(order_key, lines)
        if previous is not None:
            return previous
        wanted: Counter[str] = Counter()
        for line in lines:
            wanted[line.promotion_id] += line.amount
        short = tuple(promotion for promotion, amount in wanted.items() if self.balance(promotion).available < amount)
        if short:
            return DeductOutcome(lines, short=short)
        over_limit = self._over_limit(lines, limits)
        if over_limit:
            return DeductOutcome(lines, over_limit=over_limit)
        for line in lines:
            balance = self.balance(line.promotion_id)
            self._balances[line.promotion_id] = replace(balance, deducted=balance.deducted + line.amount)
        for (promotion, user), units in self._by_user(lines).items():
            usage = self._users.setdefault((promotion, user), [0, 0])
            usage[0] += units
            usage[1] += 1
        self._orders[order_key] = _Order(lines, Counter())
        return DeductOutcome(lines, available_after=tuple(self.balance(line.promotion_id).available for line in lines))

    @staticmethod
    def _by_user(lines: tuple[Line, ...]) -> Counter[tuple[str, str]]:
        units: Counter[tuple[str, str]] = Counter()
        for line in lines:
            units[(line.promotion_id, line.user_id)] += line.amount
        return units

    def _over_limit(self, lines: tuple[Line, ...], limits: Mapping[str, UserLimit]) -> tuple[str, ...]:
        over = []
        for (promotion, user), units in self._by_user(lines).items():
            limit = limits.get(promotion, UserLimit())
            held, orders = self._users.get((promotion, user), (0, 0))
            if (limit.units and held + units > limit.units) or (limit.orders and orders + 1 > limit.orders):
                over.append(promotion)
        return tuple(dict.fromkeys(over))

    def refund(self, order_key: str, refund_id: str, lines: tuple[Line, ...]) -> RefundOutcome:
        previous = self._refunds.get((order_key, refund_id))
        if previous is not None:
            return replace(previous, replayed=True)
        order = self._orders.get(order_key)
        if order is None:
            raise NotFound(f"no deduction with order key {order_key!r} in this region; nothing to refund")
        spent: Counter[str] = Counter()
        for line in order.lines:
            spent[line.promotion_id] += line.amount
        left = {promotion: amount - order.refunded[promotion] for promotion, amount in spent.items()}
        wanted = lines or tuple(Line(promotion, amount) for promotion, amount in left.items() if amount > 0)
        for line in wanted:
            if line.promotion_id not in spent:
                raise InvalidArgument(f"order {order_key!r} has no line for promotion {line.promotion_id!r}")
            if line.amount > left[line.promotion_id]:
                raise FailedPrecondition(
                    f"order {order_key!r} spent {spent[line.promotion_id]} of {line.promotion_id!r} and "
                    f"{order.refunded[line.promotion_id]} is already refunded; at most "
                    f"{left[line.promotion_id]} can be refunded, not {line.amount}"
                )
        users = {line.promotion_id: line.user_id for line in order.lines}
        for line in wanted:
            order.refunded[line.promotion_id] += line.amount
            balance = self.balance(line.promotion_id)
            self._balances[line.promotion_id] = replace(balance, refunded=balance.refunded + line.amount)
            usage = self._users[(line.promotion_id, users[line.promotion_id])]
            usage[0] -= line.amount
            if order.refunded[line.promotion_id] == spent[line.promotion_id]:
                usage[1] -= 1
        outcome = RefundOutcome(tuple(wanted))
        self._refunds[(order_key, refund_id)] = outcome
        return outcome

    def apply_grant(self, grant_id: str, promotion_id: str, amount: int) -> bool:
        if grant_id in self._grants:
            return False
        self._grants.add(grant_id)
        balance = self.balance(promotion_id)
        self._balances[promotion_id] = replace(balance, granted=balance.granted + amount)
        return True

    def take_back(self, promotion_id: str, amount: int) -> int:
        balance = self.balance(promotion_id)
        taken = max(0, min(amount, balance.available))
        if taken:
            self._balances[promotion_id] = replace(balance, returned=balance.returned + taken)
        return taken
