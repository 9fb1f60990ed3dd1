"""The regional ledger as a pure, synchronous state machine (the contract is in `base`).

The in-process ledger serves it directly; tests and the simulator drive it without I/O.
Reservation deadlines are wall-clock milliseconds passed in by the caller.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, replace

from quota_common.errors import FailedPrecondition, InvalidArgument
from quota_common.validation import COUNTER_CEILING, require_unique
from region_agent.ledger.base import (
    CANCELLED,
    CONFIRMED,
    DEDUCTED,
    EXPIRED,
    NO_LIMITS,
    RESERVED,
    RETENTION_S,
    UNLIMITED,
    Balance,
    DeductOutcome,
    Line,
    OrderView,
    RefundOutcome,
    Settle,
    SettleOutcome,
    UserLimit,
    at_ceiling,
    check_replay,
    lines_match,
    not_the_placer,
    refund_id_reused,
    settled_before,
    unconfirmed_refund,
    unknown_deduction,
    unknown_reservation,
)


@dataclass
class _Order:
    lines: tuple[Line, ...]
    refunded: Counter[str]
    state: str = DEDUCTED
    expires_at_ms: int = 0
    forget_at_ms: int = 0
    """When the record goes, so memory stays bounded; never while a reservation is pending."""
    placer: str = ""
    """Who placed it: the only identity that may retry, settle or refund it."""


class LocalLedger:
    def __init__(self, retention_ms: int = RETENTION_S * 1000) -> None:
        """Orders and refunds are remembered (their retries replay) for `retention_ms` after they
        were made, or after a reservation ended."""
        self._retention_ms = retention_ms
        self._forget_orders: deque[tuple[int, str]] = deque()
        self._forget_refunds: deque[tuple[int, tuple[str, str]]] = deque()
        self._balances: dict[str, Balance] = {}
        self._orders: dict[str, _Order] = {}
        self._refunds: dict[tuple[str, str], tuple[tuple[Line, ...], RefundOutcome]] = {}
        """(order key, refund id) -> the lines asked for and the answer."""
        self._grants: set[str] = set()
        # (promotion, user) -> [units, orders] held by that user, for per-user limits.
        self._users: dict[tuple[str, str], list[int]] = {}
        self._deadlines: list[tuple[int, str]] = []
        """A heap of (deadline, order key) of reservations, for expiring them in order."""

    def balance(self, promotion_id: str) -> Balance:
        return self._balances.get(promotion_id, Balance())

    def balances(self) -> dict[str, Balance]:
        return dict(self._balances)

    def _require_room(self, promotion_id: str, counter: str) -> None:
        if getattr(self.balance(promotion_id), counter) >= COUNTER_CEILING:
            raise at_ceiling(promotion_id, counter)

    def _add(self, promotion_id: str, **deltas: int) -> None:
        balance = self.balance(promotion_id)
        self._balances[promotion_id] = replace(
            balance, **{name: getattr(balance, name) + delta for name, delta in deltas.items()}
        )

    def find_order(
        self, order_key: str, lines: tuple[Line, ...], reserve: bool = False, placer: str = ""
    ) -> DeductOutcome | None:
        order = self._orders.get(order_key)
        if order is None:
            return None
        if order.placer != placer:
            raise not_the_placer(order_key, placer)
        check_replay(order_key, lines_match(order.lines, lines), order.state != DEDUCTED, reserve)
        return DeductOutcome(order.lines, replayed=True, expires_at_ms=order.expires_at_ms)

    def get_order(self, order_key: str, now_ms: int, placer: str = "") -> OrderView | None:
        """Reads the order as of `now_ms`, changing nothing (not even forgetting old records)."""
        order = self._orders.get(order_key)
        if order is None or (order.state != RESERVED and order.forget_at_ms <= now_ms):
            return None
        if order.placer != placer:
            raise not_the_placer(order_key, placer)
        state = EXPIRED if order.state == RESERVED and order.expires_at_ms <= now_ms else order.state
        refunded = tuple(
            Line(line.promotion_id, order.refunded[line.promotion_id])
            for line in order.lines
            if order.refunded[line.promotion_id]
        )
        return OrderView(state, order.lines, order.expires_at_ms, refunded)

    def deduct(
        self,
        order_key: str,
        lines: tuple[Line, ...],
        limits: Mapping[str, UserLimit] = NO_LIMITS,
        hold_ms: int = 0,
        now_ms: int = 0,
        placer: str = "",
    ) -> DeductOutcome:
        """With `hold_ms` > 0, reserves the lines until `now_ms + hold_ms`."""
        self._forget_old(now_ms)
        previous = self.find_order(order_key, lines, reserve=hold_ms > 0, placer=placer)
        if previous is not None:
            return previous
        wanted: Counter[str] = Counter()
        for line in lines:
            wanted[line.promotion_id] += line.amount
        # A reservation too: its confirm will add to deducted.
        for promotion in wanted:
            self._require_room(promotion, "deducted")
        by_user = self._by_user(lines)
        # The user's limit first: no refill can help an order over it, so it should not wait for one.
        over_limit = self._over_limit(by_user, limits)
        if over_limit:
            return DeductOutcome(lines, over_limit=over_limit)
        short = tuple(promotion for promotion, amount in wanted.items() if self.balance(promotion).available < amount)
        if short:
            return DeductOutcome(lines, short=short)
        for line in lines:
            self._add(line.promotion_id, **{"held" if hold_ms else "deducted": line.amount})
        for (promotion, user), units in by_user.items():
            usage = self._users.setdefault((promotion, user), [0, 0])
            usage[0] += units
            usage[1] += 1
        order = _Order(lines, Counter(), placer=placer)
        if hold_ms:
            order.state, order.expires_at_ms = RESERVED, now_ms + hold_ms
            heapq.heappush(self._deadlines, (order.expires_at_ms, order_key))
        else:
            self._remember_until(order_key, order, now_ms + self._retention_ms)
        self._orders[order_key] = order
        return DeductOutcome(
            lines,
            available_after=tuple(self.balance(line.promotion_id).available for line in lines),
            expires_at_ms=order.expires_at_ms,
        )

    @staticmethod
    def _by_user(lines: tuple[Line, ...]) -> Counter[tuple[str, str]]:
        units: Counter[tuple[str, str]] = Counter()
        for line in lines:
            units[(line.promotion_id, line.user_id)] += line.amount
        return units

    def _over_limit(self, by_user: Counter[tuple[str, str]], limits: Mapping[str, UserLimit]) -> tuple[str, ...]:
        over = []
        for (promotion, user), units in by_user.items():
            limit = limits.get(promotion, UNLIMITED)
            held, orders = self._users.get((promotion, user), (0, 0))
            if (limit.units and held + units > limit.units) or (limit.orders and orders + 1 > limit.orders):
                over.append(promotion)
        return tuple(dict.fromkeys(over))

    def settle(self, order_key: str, how: Settle, now_ms: int, placer: str = "") -> SettleOutcome:
        self._forget_old(now_ms)
        order = self._orders.get(order_key)
        if order is None:
            raise unknown_reservation(order_key)
        if order.placer != placer:
            raise not_the_placer(order_key, placer)
        if order.state == RESERVED and order.expires_at_ms <= now_ms:
            self._release(order_key, order, EXPIRED, now_ms)
        if order.state != RESERVED:
            return settled_before(order_key, how, order.state, order.expires_at_ms, order.lines)
        if how is Settle.CONFIRM:
            for line in order.lines:
                self._require_room(line.promotion_id, "deducted")
            for line in order.lines:
                self._add(line.promotion_id, held=-line.amount, deducted=line.amount)
            order.state = CONFIRMED
            self._remember_until(order_key, order, now_ms + self._retention_ms)
        else:
            self._release(order_key, order, CANCELLED, now_ms)
        return SettleOutcome(order.lines)

    def expire(self, now_ms: int) -> int:
        released = 0
        while self._deadlines and self._deadlines[0][0] <= now_ms:
            deadline, order_key = heapq.heappop(self._deadlines)
            order = self._orders.get(order_key)
            # An entry outlives a reservation settled early; its key may since be forgotten or reused.
            if order is not None and order.state == RESERVED and order.expires_at_ms == deadline:
                self._release(order_key, order, EXPIRED, now_ms)
                released += 1
        return released

    def _release(self, order_key: str, order: _Order, state: str, now_ms: int) -> None:
        for line in order.lines:
            self._add(line.promotion_id, held=-line.amount)
        for (promotion, user), units in self._by_user(order.lines).items():
            usage = self._users[(promotion, user)]
            usage[0] -= units
            usage[1] -= 1
        order.state = state
        self._remember_until(order_key, order, now_ms + self._retention_ms)

    def _remember_until(self, order_key: str, order: _Order, forget_at_ms: int) -> None:
        order.forget_at_ms = forget_at_ms
        self._forget_orders.append((forget_at_ms, order_key))

    def _forget_old(self, now_ms: int) -> None:
        # Each queue is in the order records were made, so its head is always the first to go.
        while self._forget_orders and self._forget_orders[0][0] <= now_ms:
            forget_at_ms, order_key = self._forget_orders.popleft()
            order = self._orders.get(order_key)
            if order is not None and order.forget_at_ms == forget_at_ms and order.state != RESERVED:
                del self._orders[order_key]
        while self._forget_refunds and self._forget_refunds[0][0] <= now_ms:
            self._refunds.pop(self._forget_refunds.popleft()[1], None)

    def refund(
        self, order_key: str, refund_id: str, lines: tuple[Line, ...], now_ms: int = 0, placer: str = ""
    ) -> RefundOutcome:
        # Each line is checked against what the order has left; a promotion twice would be checked twice.
        require_unique("lines.promotion_id", (line.promotion_id for line in lines))
        self._forget_old(now_ms)
        order = self._orders.get(order_key)
        # The order outlives its refunds' records (see below), so a refund's retry is checked here too.
        if order is not None and order.placer != placer:
            raise not_the_placer(order_key, placer)
        previous = self._refunds.get((order_key, refund_id))
        if previous is not None:
            asked, answer = previous
            if not lines_match(asked, lines):
                raise refund_id_reused(order_key, refund_id)
            return replace(answer, replayed=True)
        if order is None:
            raise unknown_deduction(order_key)
        if order.state not in (DEDUCTED, CONFIRMED):
            raise unconfirmed_refund(order_key, order.state)
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
        for line in wanted:
            self._require_room(line.promotion_id, "refunded")
        users = {line.promotion_id: line.user_id for line in order.lines}
        for line in wanted:
            order.refunded[line.promotion_id] += line.amount
            self._add(line.promotion_id, refunded=line.amount)
            usage = self._users[(line.promotion_id, users[line.promotion_id])]
            usage[0] -= line.amount
            if order.refunded[line.promotion_id] == spent[line.promotion_id]:
                usage[1] -= 1
        outcome = RefundOutcome(tuple(wanted))
        self._refunds[(order_key, refund_id)] = (lines, outcome)
        self._forget_refunds.append((now_ms + self._retention_ms, (order_key, refund_id)))
        # The order (and who placed it) is remembered as long as this refund is.
        self._remember_until(order_key, order, now_ms + self._retention_ms)
        return outcome

    def apply_grant(self, grant_id: str, promotion_id: str, amount: int) -> bool:
        if grant_id in self._grants:
            return False
        self._require_room(promotion_id, "granted")
        self._grants.add(grant_id)
        self._add(promotion_id, granted=amount)
        return True

    def return_quota(self, promotion_id: str, amount: int) -> int:
        taken = max(0, min(amount, self.balance(promotion_id).available))
        if taken:
            self._require_room(promotion_id, "returned")
            self._add(promotion_id, returned=taken)
        return taken
