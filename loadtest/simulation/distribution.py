"""The distribution model in the simulator: the real policy, center ledger, allocation and regional
ledger, wired together by simulated messages the way the agent's `Supply` and the center wire them.

Per region and promotion, an agent refills when its allotment falls below the low-water mark (one
acquire in flight), an order that finds it short waits for that refill up to `MAX_WAIT_S`, and every
`RENEW_INTERVAL_S` the region reports its counters: the answer renews its lease, carries grants whose
answer was lost, tells it when the budget is spent, and asks idle quota back when others need it.
Every `PULL_INTERVAL_S` it also pulls promotion changes (a center call that changes nothing here:
the simulated promotions do not change). Intervals, waits and the lease are the production
defaults (`AgentSettings`, `CenterSettings`), so the simulator cannot drift from what agents run.
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass, field

from loadtest.simulation.baselines import Strategy
from loadtest.simulation.scenarios import Order
from quota_center import allocation
from quota_center.center import CenterSettings
from quota_center.ledger import PromotionState, apply_report, unapplied_grants
from quota_common import policy
from quota_common.errors import Exhausted
from quota_common.model import Kind, Promotion, Report
from quota_common.policy import Pacing
from region_agent.agent import AgentSettings
from region_agent.demand import RateMeter
from region_agent.ledger.base import Line
from region_agent.ledger.local import LocalLedger

_AGENT = AgentSettings("simulated")
MAX_WAIT_S = _AGENT.max_wait_s
LEASE_TTL_S = CenterSettings().lease_ttl_s
RENEW_INTERVAL_S = _AGENT.renew_interval_s
PULL_INTERVAL_S = _AGENT.pull_interval_s
ACQUIRE_TIMEOUT_S = 1.0
SETTINGS = policy.RefillSettings()


@dataclass
class _Slot:
    """One region's view of one promotion."""

    meter: RateMeter = field(default_factory=RateMeter)
    refilling: int = 0
    """The attempt number of the acquire in flight, 0 when none is."""
    attempts: int = 0
    last_grant: int = 0
    exhausted: bool = False
    acquire_latency_s: float = 0.2
    waiting: deque[tuple[int, Order, float]] = field(default_factory=deque)
    changed: bool = True
    """Counters moved since the last report (reports of unchanged counters would say nothing new)."""


class Distribution(Strategy):
    name = "distribution"

    def start(self) -> None:
        names = self.scenario.regions
        self.ledgers = [LocalLedger() for _ in names]
        self.slots: list[dict[int, _Slot]] = [{} for _ in names]
        self.lease_until = [0.0 for _ in names]
        window_ms = round(self.scenario.window_s * 1000) or 2**62
        pacing = self.scenario.pacing
        self.states = [
            PromotionState(
                Promotion(str(p), Kind.COUNT, "", budget, 0, window_ms, tuple(names[r] for r in allowed), pacing=pacing)
            )
            for p, (budget, allowed) in enumerate(zip(self.scenario.budgets, self.scenario.allowed, strict=True))
        ]
        self.demands: list[dict[str, int]] = [{} for _ in self.scenario.budgets]
        self.contested: set[int] = set()
        """Promotions whose unallocated quota ran short of what regions asked."""
        self.holders: list[set[int]] = [set() for _ in names]
        """Per region, the promotions it was granted (so the center knows whom to ask back)."""
        for region in range(len(names)):
            self.sim.after(RENEW_INTERVAL_S * (1 + region / len(names)), functools.partial(self._renew, region))
            self.sim.after(PULL_INTERVAL_S * (1 + region / len(names)), functools.partial(self._pull, region))
        self._open()

    def _open(self) -> None:
        """Before the sale, each region gets an opening allotment of every promotion it may spend, in
        one batched call, so first orders do not wait on the center."""
        by_region: dict[int, list[int]] = {}
        for promotion, allowed in enumerate(self.scenario.allowed):
            for region in allowed:
                by_region.setdefault(region, []).append(promotion)
        for region, promotions in by_region.items():
            self.metrics.center_calls += 1
            for promotion in promotions:
                slot = self.slots[region].setdefault(promotion, _Slot())
                regions = len(self.scenario.allowed[promotion])
                opening = policy.opening_amount(SETTINGS, self.scenario.budgets[promotion], regions)
                slot.attempts = slot.refilling = 1
                self._acquire_at_center(region, promotion, opening, 0, 1, self.sim.now)

    def _incarnation(self, region: int) -> str:
        return f"sim-{self.scenario.regions[region]}"

    # The order path

    def order(self, number: int, order: Order) -> None:
        slot = self.slots[order.region].setdefault(order.promotion, _Slot())
        slot.meter.observe(order.amount, self.sim.now)
        if self.lease_until[order.region] and self.sim.now >= self.lease_until[order.region]:
            self._answer_later(order, issued=False)
            return
        left = self._deduct(number, order)
        slot.changed = True
        if left is not None:
            self._answer_later(order, issued=True)
            self._refill_if_low(order.region, order.promotion, left)
        elif slot.exhausted:
            self._answer_later(order, issued=False)
        else:
            slot.waiting.append((number, order, self.sim.now))
            self.sim.after(MAX_WAIT_S, lambda: self._give_up(number, order))
            self._refill(order.region, order.promotion)

    def _deduct(self, number: int, order: Order) -> int | None:
        """What the promotion has left after deducting the order, or None when it was short."""
        outcome = self.ledgers[order.region].deduct(str(number), (Line(str(order.promotion), order.amount),))
        return outcome.available_after[0] if outcome.accepted else None

    def _answer_later(self, order: Order, issued: bool, arrived: float | None = None, waited: bool = False) -> None:
        arrived = self.sim.now if arrived is None else arrived
        self.sim.after(self.net.in_region(), lambda: self.answer(order, arrived, issued, waited))

    def _give_up(self, number: int, order: Order) -> None:
        waiting = self.slots[order.region][order.promotion].waiting
        for entry in waiting:
            if entry[0] == number:
                waiting.remove(entry)
                self._answer_later(order, issued=False, arrived=entry[2], waited=True)
                return

    def _serve_waiting(self, region: int, promotion: int, refilled: bool = False) -> None:
        """Serves waiting orders in arrival order. Under pacing, orders a refill could not cover are
        refused at once: the curve releases quota slower than they arrive, so waiting longer only
        turns a quick refusal into a slow one."""
        slot = self.slots[region][promotion]
        while slot.waiting:
            number, order, arrived = slot.waiting[0]
            if slot.exhausted or self._deduct(number, order) is None:
                break
            slot.waiting.popleft()
            self._answer_later(order, issued=True, arrived=arrived, waited=True)
        if slot.exhausted or (refilled and self.scenario.pacing is not Pacing.NONE):
            while slot.waiting:
                _, order, arrived = slot.waiting.popleft()
                self._answer_later(order, issued=False, arrived=arrived, waited=True)
        elif slot.waiting:
            self._refill(region, promotion)

    # Refills

    def _refill_if_low(self, region: int, promotion: int, left: int) -> None:
        slot = self.slots[region][promotion]
        rate = slot.meter.rate(self.sim.now)
        if left < policy.low_water_mark(SETTINGS, slot.last_grant, rate, slot.acquire_latency_s):
            self._refill(region, promotion)

    def _refill(self, region: int, promotion: int) -> None:
        slot = self.slots[region][promotion]
        if slot.refilling or slot.exhausted:
            return
        slot.attempts += 1
        attempt = slot.refilling = slot.attempts
        rate = slot.meter.rate(self.sim.now)
        needed = sum(order.amount for _, order, _ in slot.waiting)
        available = self.ledgers[region].balance(str(promotion)).available
        asked = policy.ask_amount(SETTINGS, available, rate, needed)
        demand = policy.demand_per_minute(rate)
        sent = self.sim.now
        self.metrics.center_calls += 1
        waiting = bool(slot.waiting)
        self.net.to_center(
            region, lambda: self._acquire_at_center(region, promotion, asked, demand, attempt, sent, waiting)
        )
        self.sim.after(ACQUIRE_TIMEOUT_S + self.scenario.center_rtt_s[region], lambda: self._timed_out(slot, attempt))

    def _timed_out(self, slot: _Slot, attempt: int) -> None:
        if slot.refilling == attempt:
            slot.refilling = 0

    def _acquire_at_center(
        self, region: int, promotion: int, asked: int, demand: int, attempt: int, sent: float, waiting: bool = False
    ) -> None:
        """`waiting`: orders wait on this acquire; only then is a refusal worth asking idle quota back."""
        state, name = self.states[promotion], self.scenario.regions[region]
        self.demands[promotion][name] = demand
        ids = (f"g-{region}-{promotion}-{attempt}", f"a-{region}-{promotion}-{attempt}")
        try:
            demands, now_ms = self.demands[promotion], round(self.sim.now * 1000)
            record = allocation.grant(
                state, name, self._incarnation(region), asked, ids, demands, SETTINGS.horizon_s, now_ms
            )
        except Exhausted:
            self.contested.add(promotion)
            self.net.to_region(region, lambda: self._granted(region, promotion, attempt, sent, 0, "", 0))
            return
        if record.amount < asked:
            self.contested.add(promotion)
        self.holders[region].add(promotion)
        self.net.to_region(
            region,
            lambda: self._granted(
                region, promotion, attempt, sent, record.amount, record.grant_id, state.grantable(now_ms)
            ),
        )

    def _granted(
        self, region: int, promotion: int, attempt: int, sent: float, amount: int, grant_id: str, unallocated: int
    ) -> None:
        """`unallocated`: what the center had left after this grant; at 0, a region short again
        refuses at once instead of waiting on an acquire that can only be refused."""
        slot = self.slots[region][promotion]
        if slot.refilling == attempt:
            slot.refilling = 0
        slot.acquire_latency_s = 0.8 * slot.acquire_latency_s + 0.2 * (self.sim.now - sent)
        self.lease_until[region] = max(self.lease_until[region], sent + LEASE_TTL_S)
        if amount:
            self.ledgers[region].apply_grant(grant_id, str(promotion), amount)
            slot.last_grant = amount
        slot.exhausted = unallocated == 0
        self._serve_waiting(region, promotion, refilled=True)

    # Reports, leases and the end game

    def _renew(self, region: int) -> None:
        if self.sim.now <= self.scenario.duration_s + MAX_WAIT_S:
            self.sim.after(RENEW_INTERVAL_S, lambda: self._renew(region))
        now = self.sim.now
        reports = {}
        for promotion, slot in self.slots[region].items():
            # Orders mark a slot changed, refused ones too: so a region told the budget is spent asks
            # again how things stand while it has demand, and quota that came back reaches it.
            if slot.changed:
                reports[promotion] = self._report(region, promotion, policy.demand_per_minute(slot.meter.rate(now)))
                slot.changed = False
        self.metrics.center_calls += 1
        self.net.to_center(region, lambda: self._renew_at_center(region, reports, now))

    def _pull(self, region: int) -> None:
        if self.sim.now <= self.scenario.duration_s + MAX_WAIT_S:
            self.sim.after(PULL_INTERVAL_S, lambda: self._pull(region))
        self.metrics.center_calls += 1

    def _renew_at_center(self, region: int, reports: dict[int, Report], sent: float) -> None:
        name = self.scenario.regions[region]
        directives: dict[int, tuple[list[tuple[str, int]], int, bool]] = {}
        for promotion, report in reports.items():
            state = self.states[promotion]
            if name in state.accounts:
                apply_report(state, name, report)
                self.demands[promotion][name] = report.demand_per_minute
                if report.demand_per_minute and not self._grantable(promotion) and not state.accounts[name].held:
                    self.contested.add(promotion)  # a region with demand and nothing left, and none here
                directives[promotion] = (unapplied_grants(state.accounts[name], report), 0, False)
        for promotion in self.contested & self.holders[region]:
            state = self.states[promotion]
            reclaim = allocation.reclaim(
                state, name, self.demands[promotion], SETTINGS.horizon_s, round(self.sim.now * 1000)
            )
            if reclaim:
                # Until a region is refused again, what comes back is enough.
                self.contested.discard(promotion)
            unapplied, _, _ = directives.get(promotion, ([], 0, False))
            directives[promotion] = (unapplied, reclaim, False)
        for promotion, (unapplied, reclaim, _) in directives.items():
            directives[promotion] = (unapplied, reclaim, self._grantable(promotion) == 0)
        self.net.to_region(region, lambda: self._renewed(region, directives, sent))

    def _renewed(
        self, region: int, directives: dict[int, tuple[list[tuple[str, int]], int, bool]], sent: float
    ) -> None:
        self.lease_until[region] = max(self.lease_until[region], sent + LEASE_TTL_S)
        ledger = self.ledgers[region]
        for promotion, (unapplied, reclaim, exhausted) in directives.items():
            slot = self.slots[region][promotion]
            for grant_id, amount in unapplied:
                ledger.apply_grant(grant_id, str(promotion), amount)
            slot.exhausted = exhausted and ledger.balance(str(promotion)).available == 0
            if reclaim and ledger.return_quota(str(promotion), reclaim):
                self._give_back(region, promotion)
            self._serve_waiting(region, promotion)

    def _report(self, region: int, promotion: int, demand_per_minute: int = 0) -> Report:
        """The region's cumulative counters for the promotion, as agents report them."""
        b = self.ledgers[region].balance(str(promotion))
        return Report(b.granted, b.returned, b.deducted, b.refunded, demand_per_minute)

    def _give_back(self, region: int, promotion: int) -> None:
        report = self._report(region, promotion)
        self.metrics.center_calls += 1

        def at_center() -> None:
            apply_report(self.states[promotion], self.scenario.regions[region], report)

        self.net.to_center(region, at_center)

    def _grantable(self, promotion: int) -> int:
        return self.states[promotion].grantable(round(self.sim.now * 1000))

    def over_granted(self) -> int:
        """Quota the center booked beyond a budget: must always be zero."""
        return sum(max(0, -state.unallocated) for state in self.states)
