"""The agent's domain service: orders spend the region's allotment; loops keep it topped up.

- Deduct checks the promotion (region, window, freeze, lease), then spends from the ledger.
  When the allotment cannot cover an order and the budget is not spent, the order waits for
  one refill, bounded by its deadline, instead of failing.
- Refills start when what is left falls below the low-water mark; at most one acquire per
  promotion is in flight, and every order short of quota waits on that same one.
- The renew loop reports cumulative counters, renews the leases (measured from when the
  renewal was sent, so clock skew cannot stretch them), applies grants whose answer was
  lost, and gives back quota the center reclaims or a freeze releases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from quota_center import policy
from quota_center.clock import Clock
from quota_center.errors import Exhausted, FailedPrecondition, InvalidArgument, QuotaError, Rejected, RejectReason
from quota_center.ledger import Promotion
from quota_center.policy import RefillSettings
from region_agent.center_client import CenterClient, counters_pb
from region_agent.demand import RateMeter
from region_agent.ledger.base import Balance, DeductOutcome, Ledger, Line, RefundOutcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentSettings:
    region: str
    refill: RefillSettings = field(default_factory=RefillSettings)
    renew_interval_s: float = 1.0
    """How often counters are reported and leases renewed; well under the lease TTL."""
    max_wait_s: float = 2.0
    """Longest a deduction waits for a refill when its call carries no deadline."""
    return_on_shutdown: bool = True
    """Give back unspent quota on a graceful stop (right for a ledger that dies with the process)."""


@dataclass
class _Tracked:
    """What the agent knows of one promotion beyond the ledger."""

    promotion: Promotion
    meter: RateMeter = field(default_factory=RateMeter)
    lease_until: float = 0.0
    last_grant: int = 0
    latency_s: float = 0.05
    exhausted: bool = False
    refill: asyncio.Task[bool] | None = None


@dataclass(frozen=True)
class PromotionStatus:
    promotion_id: str
    balance: Balance
    lease_remaining_s: float
    frozen: bool


class Agent:
    def __init__(self, settings: AgentSettings, ledger: Ledger, center: CenterClient, clock: Clock) -> None:
        self.settings = settings
        self._ledger = ledger
        self._center = center
        self._clock = clock
        self._tracked: dict[str, _Tracked] = {}
        self._fetches: dict[str, asyncio.Task[Promotion]] = {}
        self._incarnation = ""
        self._renewer: asyncio.Task[None] | None = None

    @property
    def incarnation(self) -> str:
        return self._incarnation

    @property
    def center_calls(self) -> int:
        return self._center.calls

    async def start(self) -> None:
        self._incarnation = await self._ledger.incarnation()
        self._renewer = asyncio.create_task(self._renew_forever())

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        if self.settings.return_on_shutdown:
            for promotion_id, balance in (await self._ledger.balances()).items():
                await self._give_back(promotion_id, balance.available)
        try:
            await self.renew_once()
        except QuotaError as error:
            log.warning("final report not delivered: %s", error.message)

    # Orders

    async def deduct(
        self, order_key: str, region: str, lines: tuple[Line, ...], time_remaining_s: float | None = None
    ) -> DeductOutcome:
        if region != self.settings.region:
            raise InvalidArgument(f"this agent serves region {self.settings.region!r}, not {region!r}")
        previous = await self._ledger.find_order(order_key, lines)
        if previous is not None:
            return previous
        tracked = [await self._track(line.promotion_id) for line in lines]
        now = self._clock.monotonic()
        for item, line in zip(tracked, lines, strict=True):
            self._check_spendable(item)
            item.meter.observe(line.amount, now)
        wait = min(time_remaining_s or self.settings.max_wait_s, self.settings.max_wait_s)
        deadline = now + wait
        while True:
            outcome = await self._ledger.deduct(order_key, lines)
            if outcome.accepted:
                break
            await self._wait_for_refills(outcome, lines, deadline)
            for item in tracked:
                self._check_spendable(item)
        for item, left in zip(tracked, outcome.available_after, strict=False):
            self._refill_if_low(item, left)
        return outcome

    async def refund(self, order_key: str, refund_id: str, lines: tuple[Line, ...]) -> RefundOutcome:
        return await self._ledger.refund(order_key, refund_id or order_key, lines)

    async def status(self) -> list[PromotionStatus]:
        now = self._clock.monotonic()
        statuses = []
        for promotion_id, balance in sorted((await self._ledger.balances()).items()):
            item = self._tracked.get(promotion_id)
            remaining = max(0.0, item.lease_until - now) if item else 0.0
            statuses.append(PromotionStatus(promotion_id, balance, remaining, bool(item and item.promotion.frozen)))
        return statuses

    def _check_spendable(self, item: _Tracked) -> None:
        promotion = item.promotion
        if self.settings.region not in promotion.regions:
            raise Rejected(
                RejectReason.REGION_NOT_ALLOWED,
                f"promotion {promotion.id} may not be spent in region {self.settings.region} "
                f"(allowed: {', '.join(promotion.regions)})",
            )
        if promotion.frozen:
            raise Rejected(RejectReason.FROZEN, f"promotion {promotion.id} is frozen by its budget owner")
        wall_ms = self._clock.wall_ms()
        if not promotion.is_active(wall_ms):
            raise Rejected(
                RejectReason.NOT_ACTIVE,
                f"promotion {promotion.id} runs from {_iso(promotion.start_ms)} until {_iso(promotion.end_ms)}; "
                f"it is now {_iso(wall_ms)}",
            )
        if item.lease_until and self._clock.monotonic() >= item.lease_until:
            raise Rejected(
                RejectReason.LEASE_EXPIRED,
                f"region {self.settings.region} could not renew its lease on promotion {promotion.id} "
                "with the center; it spends nothing until the center is reachable",
            )

    async def _wait_for_refills(self, outcome: DeductOutcome, lines: tuple[Line, ...], deadline: float) -> None:
        needed = {line.promotion_id: line.amount for line in lines}
        refills = []
        for promotion_id in outcome.short:
            item = self._tracked[promotion_id]
            if item.exhausted:
                raise Rejected(RejectReason.EXHAUSTED, f"promotion {promotion_id}: the budget is spent")
            refills.append(self._refill(item, needed[promotion_id]))
        remaining = deadline - self._clock.monotonic()
        if remaining <= 0:
            raise Rejected(
                RejectReason.EXHAUSTED,
                f"the region's allotment of {', '.join(outcome.short)} is empty "
                "and no refill arrived before the deadline",
            )
        done, _ = await asyncio.wait(refills, timeout=remaining)
        if not done or not all(task.result() for task in done):
            for promotion_id in outcome.short:
                self._check_spendable(self._tracked[promotion_id])
            raise Rejected(
                RejectReason.EXHAUSTED,
                f"the region's allotment of {', '.join(outcome.short)} is empty and the center could not refill it",
            )

    # Refills

    def _refill_if_low(self, item: _Tracked, available: int) -> None:
        now = self._clock.monotonic()
        mark = policy.low_water_mark(self.settings.refill, item.last_grant, item.meter.rate(now), item.latency_s)
        if available < mark and not item.exhausted:
            self._refill(item, 0)

    def _refill(self, item: _Tracked, needed: int) -> asyncio.Task[bool]:
        if item.refill is None or item.refill.done():
            item.refill = asyncio.create_task(self._acquire(item, needed))
        return item.refill

    async def _acquire(self, item: _Tracked, needed: int) -> bool:
        promotion_id = item.promotion.id
        balance = await self._ledger.balance(promotion_id)
        sent = self._clock.monotonic()
        rate = item.meter.rate(sent)
        amount = policy.ask_amount(self.settings.refill, balance.available, rate, needed)
        try:
            answer = await self._center.acquire(
                self._incarnation, promotion_id, amount, uuid.uuid4().hex, policy.demand_per_minute(rate)
            )
        except Exhausted:
            item.exhausted = True
            return False
        except FailedPrecondition as refused:
            log.info("refill of %s refused (%s); reloading the promotion", promotion_id, refused.message)
            with contextlib.suppress(QuotaError):
                item.promotion = await self._center.promotion(promotion_id)
            return False
        except QuotaError as error:
            log.warning("refill of %s failed: %s", promotion_id, error.message)
            return False
        await self._ledger.apply_grant(answer.grant_id, promotion_id, answer.amount)
        arrived = self._clock.monotonic()
        item.lease_until = sent + answer.lease_ttl_s
        item.last_grant = answer.amount
        item.latency_s = 0.8 * item.latency_s + 0.2 * (arrived - sent)
        item.exhausted = answer.unallocated == 0
        return True

    async def _give_back(self, promotion_id: str, amount: int) -> None:
        """Removes quota from the ledger first, then tells the center: never the other way round."""
        if amount <= 0 or not await self._ledger.take_back(promotion_id, amount):
            return
        balance = await self._ledger.balance(promotion_id)
        try:
            await self._center.give_back(self._incarnation, counters_pb(promotion_id, balance, 0))
        except QuotaError as error:
            log.warning("return of %s not acknowledged yet (%s); the next renewal reports it", promotion_id, error)

    # Promotions and the renew loop

    async def _track(self, promotion_id: str) -> _Tracked:
        item = self._tracked.get(promotion_id)
        if item is not None:
            return item
        fetch = self._fetches.get(promotion_id)
        if fetch is None:
            fetch = self._fetches[promotion_id] = asyncio.create_task(self._center.promotion(promotion_id))
            fetch.add_done_callback(lambda _: self._fetches.pop(promotion_id, None))
        promotion = await fetch
        return self._tracked.setdefault(promotion_id, _Tracked(promotion))

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.renew_interval_s)
            try:
                await self.renew_once()
            except QuotaError as error:
                log.warning("renewal failed: %s", error.message)

    async def renew_once(self) -> None:
        balances = await self._ledger.balances()
        if not balances:
            return
        now = self._clock.monotonic()
        counters = []
        for promotion_id, balance in balances.items():
            item = self._tracked.get(promotion_id)
            demand = policy.demand_per_minute(item.meter.rate(now)) if item else 0
            counters.append(counters_pb(promotion_id, balance, demand))
        answer = await self._center.renew(self._incarnation, counters)
        for directive in answer.directives:
            item = await self._track(directive.promotion_id)
            item.lease_until = now + answer.lease_ttl_s
            item.exhausted = directive.exhausted
            for grant in directive.unapplied_grants:
                await self._ledger.apply_grant(grant.grant_id, grant.promotion_id, grant.amount)
            if directive.revision > item.promotion.revision:
                item.promotion = await self._center.promotion(directive.promotion_id)
            if directive.reclaim > 0:
                await self._give_back(directive.promotion_id, directive.reclaim)


def _iso(wall_ms: int) -> str:
    return datetime.fromtimestamp(wall_ms / 1000, tz=UTC).isoformat(timespec="seconds")
