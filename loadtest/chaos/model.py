"""A correct model of one region's agent for one promotion, and a recorder that turns calls on it into a chaos
history, so property tests can generate histories a correct system could have produced."""

from __future__ import annotations

from dataclasses import dataclass, field

from loadtest.chaos.books import RegionBooks
from loadtest.chaos.history import Kind, Operation, Outcome, Status
from region_agent.ledger.base import Line, UserLimit

PROMOTION = "p"

Request = tuple[Kind, str, tuple[Line, ...], str]
"""(kind, order key, lines, refund id), as a client sends it."""


@dataclass
class Agent:
    region: str
    allotment: int
    limit: UserLimit
    available: int = 0
    deducted: dict[str, Line] = field(default_factory=dict)
    holds: dict[str, Line] = field(default_factory=dict)
    reservations: dict[str, Line] = field(default_factory=dict)
    expired: set[str] = field(default_factory=set)
    refunded: dict[str, int] = field(default_factory=dict)
    answers: dict[tuple[Kind, str, str], Outcome] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.available = self.allotment

    def call(self, request: Request) -> Outcome:
        kind, order, lines, refund_id = request
        key = (kind, order, refund_id)
        if key in self.answers:
            first = self.answers[key]
            return Outcome.ok(first.applied, replayed=True, expired=first.expired)
        answer = self._fresh(kind, order, lines, refund_id)
        if answer.status is Status.OK:
            self.answers[key] = answer
        return answer

    def expire(self, order: str) -> None:
        if order in self.holds:
            self.available += self.holds.pop(order).amount
            self.expired.add(order)

    def books(self) -> RegionBooks:
        """As read after a graceful stop, which returns what is available: the center's outstanding is derived
        from its own counts, so it matches the open holds only if the agent's arithmetic is right."""
        consumed = sum(line.amount for line in self.deducted.values()) - sum(self.refunded.values())
        reserved = sum(line.amount for line in self.holds.values())
        returned = self.available
        outstanding = self.allotment - returned - consumed
        return RegionBooks(consumed, reserved, self.allotment, returned, outstanding=outstanding)

    def _fresh(self, kind: Kind, order: str, lines: tuple[Line, ...], refund_id: str) -> Outcome:
        if kind in (Kind.DEDUCT, Kind.RESERVE):
            return self._take(kind, order, lines[0])
        if kind is Kind.REFUND:
            return self._refund(order, lines)
        if order not in self.reservations:
            return Outcome.failed("NOT_FOUND")
        settled_other = (Kind.CANCEL if kind is Kind.CONFIRM else Kind.CONFIRM, order, "") in self.answers
        if settled_other:
            return Outcome.refused("FAILED_PRECONDITION")
        if order in self.expired:
            if kind is Kind.CONFIRM:
                return Outcome.refused("REJECT_REASON_RESERVATION_EXPIRED")
            return Outcome.ok((self.reservations[order],), expired=True)
        line = self.holds.pop(order)
        if kind is Kind.CONFIRM:
            self.deducted[order] = line
        else:
            self.available += line.amount
        return Outcome.ok((line,))

    def _take(self, kind: Kind, order: str, line: Line) -> Outcome:
        mine = [held for held in (self.deducted | self.holds).values() if held.user_id == line.user_id]
        units = sum(held.amount for held in mine) - sum(self.refunded.get(o, 0) for o in self._orders_of(line.user_id))
        orders = sum(1 for o in self._orders_of(line.user_id) if self.refunded.get(o, 0) < self._line(o).amount)
        if units + line.amount > self.limit.units or orders + 1 > self.limit.orders:
            return Outcome.refused("REJECT_REASON_USER_LIMIT")
        if line.amount > self.available:
            return Outcome.refused("REJECT_REASON_EXHAUSTED")
        self.available -= line.amount
        if kind is Kind.DEDUCT:
            self.deducted[order] = line
        else:
            self.holds[order] = self.reservations[order] = line
        return Outcome.ok((line,))

    def _orders_of(self, user: str) -> list[str]:
        return [o for o, line in (self.deducted | self.holds).items() if line.user_id == user]

    def _line(self, order: str) -> Line:
        return (self.deducted | self.holds)[order]

    def _refund(self, order: str, lines: tuple[Line, ...]) -> Outcome:
        if order not in self.deducted:
            return Outcome.failed("NOT_FOUND")
        left = self.deducted[order].amount - self.refunded.get(order, 0)
        amount = lines[0].amount if lines else left
        if amount == 0 or amount > left:
            return Outcome.refused("FAILED_PRECONDITION")
        self.refunded[order] = self.refunded.get(order, 0) + amount
        self.available += amount
        return Outcome.ok((Line(PROMOTION, amount),))


@dataclass
class Recorder:
    """Records operations one after another on a clock that advances a second per call."""

    operations: list[Operation] = field(default_factory=list)
    clock: float = 0.0

    def record(self, region: str, request: Request, outcome: Outcome) -> Operation:
        kind, order, lines, refund_id = request
        self.clock += 1.0
        op = Operation(
            id=len(self.operations) + 1,
            client="c1",
            kind=kind,
            order_key=order,
            region=region,
            agent=f"{region}-a",
            lines=lines,
            invoked=self.clock,
            completed=self.clock + 0.5,
            outcome=outcome,
            refund_id=refund_id,
        )
        self.operations.append(op)
        return op


Step = tuple[str, int, int, bool, bool]
"""(action, a, b, unknown, applied): the numbers pick amounts, users, regions and earlier orders; an unknown
call is recorded as a timeout, having applied or not, and is retried to an answer at the end."""

ACTIONS = ("deduct", "reserve", "refund", "retry", "confirm", "cancel", "expire")
LIMIT = UserLimit(units=6, orders=3)


def run(budget: int, steps: list[Step]) -> tuple[list[Operation], dict[str, RegionBooks]]:
    agents = {"r1": Agent("r1", budget // 2, LIMIT), "r2": Agent("r2", budget - budget // 2, LIMIT)}
    recorder = Recorder()
    sent: list[tuple[str, Request]] = []
    orders: list[tuple[str, str]] = []
    reservations: list[tuple[str, str]] = []
    unknown: list[tuple[str, Request]] = []
    for action, a, b, timeout, applied in steps:
        region = "r1" if b % 2 else "r2"
        request: Request
        if action in ("deduct", "reserve"):
            order = f"o{len(recorder.operations)}"
            kind = Kind.DEDUCT if action == "deduct" else Kind.RESERVE
            request = (kind, order, (Line(PROMOTION, a % 5 + 1, f"u{b % 3}"),), "")
            # A reservation is a refund target too: refused until confirmed, as the agent does.
            orders.append((region, order))
            if kind is Kind.RESERVE:
                reservations.append((region, order))
        elif action == "refund" and orders:
            region, order = orders[a % len(orders)]
            lines = (Line(PROMOTION, b % 4),) if b % 4 else ()
            request = (Kind.REFUND, order, lines, f"{order}-f{len(recorder.operations)}")
        elif action == "retry" and sent:
            region, request = sent[a % len(sent)]
        elif action in ("confirm", "cancel", "expire") and reservations:
            region, order = reservations[a % len(reservations)]
            if action == "expire":
                agents[region].expire(order)
                continue
            request = (Kind.CONFIRM if action == "confirm" else Kind.CANCEL, order, (), "")
        else:
            continue
        sent.append((region, request))
        if timeout:
            if applied:
                agents[region].call(request)
            recorder.record(region, request, Outcome.unknown())
            unknown.append((region, request))
        else:
            recorder.record(region, request, agents[region].call(request))
    for region, request in unknown:
        recorder.record(region, request, agents[region].call(request))
    return recorder.operations, {region: agent.books() for region, agent in agents.items()}
