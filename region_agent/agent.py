"""The agent's order path: orders spend the region's allotment, kept topped up by `Supply`.

Every order call names its placer: the calling identity's URI ("" without one). An order is its
placer's: the ledger refuses its retry, confirm, cancel or refund to anyone else (PermissionDenied).

Deduct checks the promotion (region, window, freeze, lease) and spends from the ledger in
one ledger call. When the allotment cannot cover an order and the center still has quota,
the order waits for one refill, bounded by its deadline, instead of failing. A retried
order returns its first answer even if the promotion has since been frozen or has ended.
Lines below their promotion's price floor are refused or let through and counted (`floor`).
"""

from __future__ import annotations

import asyncio
import logging

from quota_common.clock import Clock, iso
from quota_common.errors import (
    ConfigError,
    Exhausted,
    InvalidArgument,
    NoQuotaInTime,
    OrderUnknown,
    QuotaError,
    RegionHeld,
    Rejected,
    RejectReason,
    Unavailable,
)
from quota_common.incarnation import started_ns
from quota_common.model import Promotion
from region_agent.agent_types import AgentSettings, GroupStatus, OrderReport, PromotionStatus
from region_agent.cache import CacheTier, PromotionCache
from region_agent.catalog_sync import CatalogSync
from region_agent.center_groups import CenterGroups
from region_agent.center_port import CenterPort
from region_agent.floor import BelowFloor, BelowFloorCount, below_floor, refuse_if_blocked
from region_agent.ledger.base import (
    DeductOutcome,
    Ledger,
    Line,
    RefundOutcome,
    Settle,
    SettleOutcome,
    UserLimit,
)
from region_agent.spendable import check_order_limit, check_spendable, plainly_spendable
from region_agent.supply import Supply
from region_agent.supply_core import HELD_MARGIN_S, Tracked

__all__ = ["Agent", "AgentSettings", "GroupStatus", "OrderReport", "PromotionStatus"]
"""The records live in `agent_types`; callers keep importing them from here."""

log = logging.getLogger(__name__)

START_WAIT_S = 2.0
STOP_REFILL_WAIT_S = 3.0
"""Longest a graceful stop waits for acquires in flight before it gives everything back."""
STOP_LOOPS_WAIT_S = 2.0
"""Longest a stop waits for its cancelled background loops. A catalog stream cancelled mid-read has been
seen to wait for its next heartbeat (15 s) before it ends, holding up the final report and the give-back."""


class Agent:
    def __init__(
        self,
        settings: AgentSettings,
        ledger: Ledger,
        center: CenterPort | CenterGroups,
        clock: Clock,
        tier: CacheTier | None = None,
    ) -> None:
        """`center`: the center, or its groups when promotions are sharded over several; `tier`: the region's
        shared copy of the promotion cache (Redis), if any."""
        self.settings = settings
        self._ledger = ledger
        groups = center if isinstance(center, CenterGroups) else CenterGroups.one(center)
        self._groups = groups
        self._clock = clock
        self.cache = PromotionCache()
        self._below_floor = BelowFloorCount()
        self._supply = Supply(
            settings.region,
            settings.refill,
            ledger,
            groups,
            clock,
            self.cache,
            settings.assumed_lease_ttl_s,
            self._below_floor,
        )
        served = groups.owners.served if len(groups.names) > 1 else None  # one group serves everything
        self.catalogs = [
            CatalogSync(self.cache, groups.port(g), tier, self._supply.learn, clock, g, served) for g in groups.names
        ]
        self.catalog = self.catalogs[0]
        self._loops: list[asyncio.Task[None]] = []

    @property
    def incarnation(self) -> str:
        return self._supply.incarnation

    @property
    def center_calls(self) -> int:
        return self._groups.calls

    @property
    def promotion_fetches(self) -> int:
        return self._groups.fetches

    async def start(self) -> None:
        """Loads the promotion cache (the region's copy, then the center's changes) and renews,
        waiting on an unreachable center only briefly: the loops keep trying, and the agent
        serves from what the region holds meanwhile. ConfigError when another process of the region serves
        on another ledger."""
        try:
            self._supply.incarnation = await self._ledger_life()
        except RegionHeld as held:
            raise ConfigError(f"this agent cannot join: {held.message}") from held
        except (QuotaError, TimeoutError) as error:
            log.warning("could not join the center yet (%s); joining in the background", _why(error))
        # In any order: each group's copy moves its own cursor, and the higher revision of a promotion wins.
        await asyncio.gather(*(catalog.load_tier() for catalog in self.catalogs))
        await asyncio.gather(*(self._first_pull(catalog) for catalog in self.catalogs))
        try:
            # A ledger that outlived a previous process (Redis) holds quota: lease it before spending.
            await asyncio.wait_for(self.renew_once(), START_WAIT_S)
        except (QuotaError, TimeoutError) as error:
            log.warning("first renewal failed (%s); retrying in the background", _why(error))
        loops = [self._supply.renew_forever(self.settings.renew_interval_s, group) for group in self._groups.names]
        loops += [catalog.pull_forever(self.settings.pull_interval_s) for catalog in self.catalogs]
        if self.settings.push:
            loops += [catalog.watch_forever() for catalog in self.catalogs]
        if self.settings.opening_lookahead_s > 0:
            loops.append(self._supply.open_forever(self.settings.opening_lookahead_s))
        self._loops = [asyncio.create_task(loop) for loop in loops]

    async def _ledger_life(self) -> str:
        """The ledger's life: one it already has (Redis, after a restart), or a new one the center issues.
        When the region is held, once waits out the lease: a process this one restarts renews it no more,
        while one that still serves has renewed it by then (RegionHeld)."""
        try:
            return await asyncio.wait_for(self._supply.ledger_life(), START_WAIT_S)
        except RegionHeld as held:
            log.warning(
                "another agent serves region %s (the center says); waiting %.1f s for its lease to run out, in case "
                "it is a process this one restarts",
                self.settings.region,
                held.retry_after_s,
            )
            await self._clock.sleep(held.retry_after_s + HELD_MARGIN_S)
        return await asyncio.wait_for(self._supply.ledger_life(), START_WAIT_S)

    async def _first_pull(self, catalog: CatalogSync) -> None:
        try:
            await asyncio.wait_for(catalog.pull(), START_WAIT_S)
        except (QuotaError, TimeoutError) as error:
            log.warning(
                "first promotion pull from group %s failed (%s); serving from the cache", catalog.group, _why(error)
            )

    async def wait_retired(self) -> str:
        """Returns why, once the center said a newer process of the region replaced this one (it
        spends nothing from then on); never returns otherwise."""
        return await self._supply.wait_retired()

    async def stop(self) -> None:
        """Stops the loops; then, for a ledger that dies with the process, gives back what is unspent."""
        for loop in self._loops:
            loop.cancel()
        if self._loops:
            stopped, lingering = await asyncio.wait(self._loops, timeout=STOP_LOOPS_WAIT_S)
            for loop in stopped:
                if not loop.cancelled() and loop.exception() is not None:
                    log.error("a background loop had failed", exc_info=loop.exception())
            if lingering:
                log.warning(
                    "%d background loops had not stopped %.0f s after cancelling; stopping without them",
                    len(lingering),
                    STOP_LOOPS_WAIT_S,
                )
        if self.settings.return_on_shutdown:
            await self._supply.finish_refills(STOP_REFILL_WAIT_S)
        await self._supply.cancel_pending()
        if self._supply.retired:
            return  # the center takes nothing more from this incarnation: it wrote its holdings off
        if self.settings.return_on_shutdown:
            try:
                # Its answer names grants committed for a refill that was cancelled all the same, and
                # applies them, so they go back with the rest.
                await self.renew_once()
            except QuotaError as error:
                log.warning("renewal before giving back failed: %s", error.message)
            for promotion_id, balance in (await self._ledger.balances()).items():
                await self._supply.return_quota(promotion_id, balance.available)
        try:
            # A ledger that dies with the process no longer holds the region: its restart joins at once.
            await self.renew_once(leaving=self.settings.return_on_shutdown)
        except QuotaError as error:
            log.warning("final report not delivered: %s", error.message)

    async def renew_once(self, leaving: bool = False) -> None:
        """Reports and renews now rather than at the next interval; `leaving`: as the process's last renewal."""
        await self._supply.renew_once(leaving)

    # Orders

    async def deduct(
        self,
        order_key: str,
        region: str,
        lines: tuple[Line, ...],
        time_remaining_s: float | None = None,
        hold_ms: int = 0,
        placer: str = "",
    ) -> DeductOutcome:
        """Deducts the order's lines, or with `hold_ms` reserves them for that long, as `placer`'s order."""
        if region != self.settings.region:
            raise InvalidArgument(f"this agent serves region {self.settings.region!r}, not {region!r}")
        promotion_ids = [line.promotion_id for line in lines]
        tracked = self._supply.tracked(promotion_ids) or await self._supply.track(promotion_ids)
        now, wall_ms = self._clock.monotonic(), self._clock.wall_ms()
        below: list[BelowFloor] = []
        # An order to open promotions with no floor, each line within its order limit, passes every check below:
        # one pass says so.
        if (
            self._supply.retired
            or self.cache.emergency.covers(region)
            or not plainly_spendable(region, tracked, lines, now, wall_ms)
        ):
            below = below_floor([item.promotion for item in tracked], lines)
            try:
                # The order's own prices first: a price below the floor is wrong whatever the supply, and the
                # caller must hear that, not "lease expired" while the center is out of reach.
                refuse_if_blocked(below)
                for item, line in zip(tracked, lines, strict=True):
                    self._check_spendable(item, now, wall_ms)
                    check_order_limit(item.promotion, line)
            except Rejected as refusal:
                previous = await self._ledger.find_order(order_key, lines, reserve=hold_ms > 0, placer=placer)
                if previous is not None:
                    return previous
                if refusal.reason is RejectReason.BELOW_FLOOR:
                    self._saw_below_floor(order_key, below, "refused")
                raise
        limits = {
            item.promotion.id: _user_limit(item.promotion)
            for item in tracked
            if item.promotion.per_user_limit or item.promotion.per_user_orders
        }
        outcome = await self._ledger.deduct(order_key, lines, limits, hold_ms, placer)
        if not (outcome.replayed or outcome.over_limit):
            # Demand sizes refills: an order counts once, when it is deducted or waits for a refill;
            # one its user may not place never will be.
            for item, line in zip(tracked, lines, strict=True):
                item.meter.observe(line.amount, now)
        wait = self.settings.max_wait_s if time_remaining_s is None else min(time_remaining_s, self.settings.max_wait_s)
        while not outcome.accepted:
            if outcome.over_limit:
                raise Rejected(
                    RejectReason.USER_LIMIT,
                    f"this order would take its user past what promotion {outcome.over_limit[0]} allows one user "
                    f"(at most {_describe(limits[outcome.over_limit[0]])}, this order's included)",
                    outcome.over_limit[0],
                )
            await self._wait_for_refills(outcome, lines, deadline=now + wait)
            for item in tracked:
                self._check_spendable_now(item)
            outcome = await self._ledger.deduct(order_key, lines, limits, hold_ms, placer)
        if below and not outcome.replayed:
            self._saw_below_floor(order_key, below, "let through")
        for item, left in zip(tracked, outcome.available_after, strict=False):
            self._supply.refill_if_low(item, left)
        return outcome

    def _saw_below_floor(self, order_key: str, below: list[BelowFloor], what: str) -> None:
        """Counts the order's lines below the floor (a refusal each time, an order that went through once)."""
        self._below_floor.add(self._supply.incarnation, below)
        for item in below:
            log.warning("order %r %s: %s", order_key, what, item.describe())

    async def settle(self, order_key: str, how: Settle, placer: str = "") -> SettleOutcome:
        """Confirms or cancels `placer`'s reservation; a freeze since it was made does not stop either."""
        try:
            return await self._ledger.settle(order_key, how, placer)
        except OrderUnknown as unknown:
            raise await self._in_this_life(unknown) from None

    async def refund(self, order_key: str, refund_id: str, lines: tuple[Line, ...], placer: str = "") -> RefundOutcome:
        try:
            return await self._ledger.refund(order_key, refund_id or order_key, lines, placer)
        except OrderUnknown as unknown:
            raise await self._in_this_life(unknown) from None

    async def get_order(self, order_key: str, placer: str = "") -> OrderReport:
        """`placer`'s order as the ledger holds it, changing nothing (PermissionDenied for another's)."""
        order = await self._ledger.get_order(order_key, placer)
        return OrderReport(order, self._life_started_ms(), await self._ledger.life_lost())

    def _life_started_ms(self) -> int:
        return started_ns(self.incarnation) // 1_000_000

    async def _in_this_life(self, unknown: OrderUnknown) -> OrderUnknown:
        """The refusal of an unknown order key, saying which ledger life answered and whether one was lost
        before it: then the order may have been placed in that one, and must be reconciled, not retried."""
        started_ms = self._life_started_ms()
        if await self._ledger.life_lost():
            return OrderUnknown(
                f"{unknown.message}. This ledger life began at {iso(started_ms)}, after the region lost an "
                "earlier one: an order placed before then went with it (the center wrote its quota off); "
                "reconcile the order, do not retry it",
                started_ms,
                life_lost=True,
            )
        return OrderUnknown(
            f"{unknown.message}: it was never placed here, or was forgotten after the retention period",
            started_ms,
        )

    async def status(self) -> list[PromotionStatus]:
        now = self._clock.monotonic()
        statuses = []
        for promotion_id, balance in sorted((await self._ledger.balances()).items()):
            item = self._supply.get(promotion_id)
            remaining = max(0.0, item.lease_until - now) if item else 0.0
            frozen = bool(item and item.promotion.frozen)
            below_floor_lines = self._below_floor.of(self.incarnation, promotion_id)
            statuses.append(PromotionStatus(promotion_id, balance, remaining, frozen, below_floor_lines))
        return statuses

    def group_statuses(self) -> list[GroupStatus]:
        """Every center group the agent follows, the default group first."""
        return [
            GroupStatus(
                catalog.group,
                catalog.stream_alive,
                self.cache.revision_of(catalog.group),
                catalog.staleness_s(),
                self._supply.lease_at(catalog.group),
            )
            for catalog in self.catalogs
        ]

    def _check_spendable_now(self, item: Tracked) -> None:
        self._check_spendable(item, self._clock.monotonic(), self._clock.wall_ms())

    def _check_spendable(self, item: Tracked, now: float, wall_ms: int) -> None:
        """Whether the region may spend the promotion now (`now` monotonic, `wall_ms` the wall clock)."""
        check_spendable(item, self.settings.region, self._supply.retired, self.cache.emergency, now, wall_ms)

    async def _wait_for_refills(self, outcome: DeductOutcome, lines: tuple[Line, ...], deadline: float) -> None:
        """Returns once every short promotion got a grant; otherwise raises why not."""
        needed = {line.promotion_id: line.amount for line in lines}
        refills = []
        for promotion_id in outcome.short:
            item = self._supply.get(promotion_id)
            assert item is not None, "tracked before the ledger was asked"
            if item.exhausted:
                raise _spent(promotion_id)
            refills.append(self._supply.refill(item, needed[promotion_id]))
        remaining = deadline - self._clock.monotonic()
        done, _ = await asyncio.wait(refills, timeout=remaining) if remaining > 0 else (set(), set())
        if len(done) < len(refills):
            raise NoQuotaInTime(
                f"the region's allotment of {', '.join(outcome.short)} is empty and no refill arrived "
                "before the deadline; nothing was applied: retry with the same order key",
                outcome.short[0],
            )
        for promotion_id, task in zip(outcome.short, refills, strict=True):
            error = (
                NoQuotaInTime(
                    "the refill was called off while the agent re-joined; nothing was applied: retry", promotion_id
                )
                if task.cancelled()
                else task.result()
            )
            if isinstance(error, Exhausted):
                raise _spent(promotion_id)
            if error is not None:
                item = self._supply.get(promotion_id)
                assert item is not None
                self._check_spendable_now(item)
                if isinstance(error, Unavailable):
                    raise NoQuotaInTime(
                        f"promotion {promotion_id}: the region's allotment is empty and its refill failed "
                        f"({error.message}); nothing was applied: retry with the same order key",
                        promotion_id,
                    ) from error
                raise error


def _why(error: Exception) -> str:
    return error.message if isinstance(error, QuotaError) else "the center did not answer in time"


def _user_limit(promotion: Promotion) -> UserLimit:
    return UserLimit(promotion.per_user_limit, promotion.per_user_orders)


def _describe(limit: UserLimit) -> str:
    parts = [_counted(limit.units, "unit"), _counted(limit.orders, "order")]
    return " and ".join(part for part in parts if part)


def _counted(count: int, what: str) -> str:
    """A count of `what`, as 3 units or 1 order; empty for 0 (no such limit)."""
    return f"{count} {what}{'' if count == 1 else 's'}" if count else ""


def _spent(promotion_id: str) -> Rejected:
    return Rejected(
        RejectReason.EXHAUSTED,
        f"promotion {promotion_id}: the order needs more than this region holds, and the center has nothing "
        "left to grant",
        promotion_id,
    )
