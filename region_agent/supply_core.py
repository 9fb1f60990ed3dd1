"""The agent's supply of quota, its core: the promotions it tracks, refills, give-backs and its ledger life.

`Supply` (region_agent.supply) adds the renewals and the openings. Every call about one promotion goes to the
center group that serves it (`CenterGroups.call`); a ledger life is joined at the first group that answers
and is good at every group of the deployment (they issue and check lives under one key).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from quota_common import policy
from quota_common.clock import Clock
from quota_common.errors import (
    Exhausted,
    FailedPrecondition,
    NotFound,
    PromotionUnknown,
    QuotaError,
    RegionHeld,
    Superseded,
    Unavailable,
)
from quota_common.model import Promotion, Report
from quota_common.policy import RefillSettings
from region_agent.agent_types import LeaseAtGroup
from region_agent.cache import PromotionCache
from region_agent.center_groups import CenterGroups
from region_agent.center_port import report
from region_agent.demand import RateMeter
from region_agent.floor import BelowFloorCount
from region_agent.ledger.base import Balance, Joined, Ledger
from region_agent.lookups import LOOKUP_BURST, LOOKUPS_PER_S, LookupBudget
from region_agent.reachability import Reachability
from region_agent.report_book import ReportBook

log = logging.getLogger(__name__)
T = TypeVar("T")

_CLAIM_TTL_S = 5.0
"""Longest one agent keeps the region's other agents from acquiring for a promotion."""
HELD_MARGIN_S = 0.1
"""Waited past the time a held region's lease had left when the center answered, so that it has run out."""
UNKNOWN_TTL_S = 5.0
"""How long the center's "no such promotion" stands: orders naming it are refused without asking
again, and a promotion created meanwhile is found this soon after."""


@dataclass
class Tracked:
    """What the agent knows of one promotion beyond the ledger."""

    promotion: Promotion
    lease_until: float
    """Monotonic time the lease runs out. Until this process first hears from the center about the
    promotion, one lease TTL from when it began tracking it: what a ledger kept from an earlier
    process (Redis) holds is spent for at most that long without the center's word, so a freeze
    missed meanwhile stays bounded as it is for a running agent."""
    meter: RateMeter = field(default_factory=RateMeter)
    last_grant: int = 0
    latency_s: float = 0.05
    exhausted: bool = False
    """The center said it has nothing left to grant; cleared by a renewal that says otherwise."""
    refill: asyncio.Task[QuotaError | None] | None = None


class SupplyCore:
    def __init__(
        self,
        region: str,
        refill: RefillSettings,
        ledger: Ledger,
        groups: CenterGroups,
        clock: Clock,
        cache: PromotionCache,
        lease_ttl_s: float,
        below_floor: BelowFloorCount,
    ) -> None:
        """`lease_ttl_s`: the lease TTL to assume until the center states its own; `below_floor`: the
        agent's count of order lines below price floors, reported with the ledger's counters."""
        self._region = region
        self._refill_settings = refill
        self._ledger = ledger
        self._groups = groups
        self._clock = clock
        self.cache = cache
        self._lease_ttl_s = lease_ttl_s
        self._below_floor = below_floor
        self._tracked: dict[str, Tracked] = {}
        self._fetches: dict[str, asyncio.Task[None]] = {}
        self._opening_requests: dict[str, str] = {}
        """Per promotion, the request id of its opening in this incarnation (a retry reuses it)."""
        self._opening_refusals: dict[str, str] = {}
        """Per promotion, the last refusal of its opening (looked up again once per refusal, `_opening_refused`)."""
        self._background: set[asyncio.Task[None]] = set()
        self._unknown: dict[str, tuple[float, str]] = {}
        """Promotions the center said it does not know: until when that stands, and its words."""
        self._lookups = LookupBudget(LOOKUPS_PER_S, LOOKUP_BURST, clock.monotonic())
        self._refusals: dict[str, str] = {}
        """Per promotion, the center's last refusal of its report (logged once until it changes)."""
        self._reports = {group: ReportBook() for group in groups.names}
        """By group: which reports it took in (a promotion handed to another group reports there afresh)."""
        self._reachability = {group: Reachability(clock) for group in groups.names}
        self._region_leases: dict[str, float] = {}
        """By group: monotonic time the region's lease there runs out, as its last renewal granted it."""
        self._joining = asyncio.Lock()
        """Held while the ledger's life is read and taken up, so the groups' loops take up a new one once."""
        self._retired = asyncio.Event()
        self.retired = ""
        """Why this process may no longer spend for its region; empty while it may."""
        self._held_until = 0.0
        """While the center refuses this process's Join (another life holds the region): monotonic time the
        holder's lease runs out unless renewed, as the first refusal said; 0 otherwise."""
        self.incarnation = ""
        self._life_lost = False
        """The ledger lost its data (LedgerLost) and the new life is not joined yet."""
        self._holder = uuid.uuid4().hex

    def get(self, promotion_id: str) -> Tracked | None:
        return self._tracked.get(promotion_id)

    def lease_at(self, group: str) -> LeaseAtGroup:
        return LeaseAtGroup(
            remaining_s=max(0.0, self._region_leases.get(group, 0.0) - self._clock.monotonic()),
            renewals_failing_s=self._reachability[group].lost_for_s(),
            promotions=len(self._groups.owners.of(group, self._tracked)),
        )

    def learn(self, changed: list[Promotion]) -> None:
        """Takes in promotions that changed (from the cache's links or a fetch). A freeze gives the unspent
        allotment back at once, and so does a tracked promotion's end or the region's removal from it (an
        untracked one's comes back at the next renewal, as the center reclaims it)."""
        now_ms = self._clock.wall_ms()
        for promotion in changed:
            item = self._tracked.get(promotion.id)
            if item is None:
                release = promotion.frozen or promotion.archived
            else:
                release = self._closed(promotion, now_ms) and not self._closed(item.promotion, now_ms)
                item.promotion = promotion
            if release:
                self._in_background(self._release(promotion.id))

    def _closed(self, promotion: Promotion, now_ms: int) -> bool:
        """Whether the region may not spend the promotion until its owner says otherwise (archived: ever)."""
        return (
            promotion.frozen or promotion.archived or promotion.has_ended(now_ms) or not promotion.allows(self._region)
        )

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _release(self, promotion_id: str) -> None:
        try:
            balance = await self._ledger.balance(promotion_id)
            await self.return_quota(promotion_id, balance.available)
        except QuotaError as error:
            log.warning("%s closed: its unspent quota goes back at the next renewal (%s)", promotion_id, error)

    async def _fetch(self, promotion_id: str) -> None:
        """Fetches the promotion into the cache: once, however many callers wait for it, and a
        cancelled caller cancels no fetch."""
        fetch = self._fetches.get(promotion_id)
        if fetch is None:
            fetch = self._fetches[promotion_id] = asyncio.create_task(self._fetch_now(promotion_id))
            fetch.add_done_callback(lambda _: self._fetches.pop(promotion_id, None))
        await asyncio.shield(fetch)

    async def _fetch_now(self, promotion_id: str) -> None:
        try:
            promotion = await self._groups.call(promotion_id, lambda port: port.promotion(promotion_id))
        except NotFound as error:
            self._remember_unknown(promotion_id, error.message)
            raise PromotionUnknown(error.message, promotion_id) from None
        self.learn(self.cache.put([promotion]))

    def _remember_unknown(self, promotion_id: str, message: str) -> None:
        """Kept in the order entries expire (insertion order, one TTL), so expired ones go from the front."""
        now = self._clock.monotonic()
        while self._unknown and next(iter(self._unknown.values()))[0] <= now:
            del self._unknown[next(iter(self._unknown))]
        self._unknown.pop(promotion_id, None)
        self._unknown[promotion_id] = (now + UNKNOWN_TTL_S, message)

    def tracked(self, promotion_ids: Sequence[str]) -> list[Tracked] | None:
        """The promotions when every one is tracked already (every order after a promotion's first), else
        None: then `track` fetches them. Apart from `track` so that the order path makes no coroutine for it."""
        known = []
        for promotion_id in promotion_ids:
            item = self._tracked.get(promotion_id)
            if item is None:
                return None
            known.append(item)
        return known

    async def track(self, promotion_ids: Sequence[str]) -> list[Tracked]:
        """The promotions, fetched from the center on first sight: one fetch per promotion however
        many orders wait for it, and a cancelled order cancels no fetch. The first one missing from
        the cache is fetched alone, so an order naming promotions nobody knows costs the center one
        call; the rest then concurrently."""
        known = self.tracked(promotion_ids)
        if known is not None:
            return known  # no task per promotion on the order path
        unseen = [pid for pid in promotion_ids if pid not in self._tracked]
        for pid in unseen:
            self._refuse_if_unknown(pid)
        if not (uncached := [pid for pid in unseen if self.cache.get(pid) is None]):
            return list(await asyncio.gather(*(self._track_one(pid) for pid in promotion_ids)))
        charged = self._charge_lookups(uncached[:1])
        await self._track_one(uncached[0])
        charged += self._charge_lookups(uncached[1:])
        tracked = list(await asyncio.gather(*(self._track_one(pid) for pid in promotion_ids)))
        self._lookups.give_back(charged)  # each found its promotion: the cache has it now
        return tracked

    def _charge_lookups(self, promotion_ids: list[str]) -> int:
        """Spends a lookup for each of these the center is about to be asked about (not in the cache, and no
        fetch of it in flight to join), and says how many; LookupsSpent when the agent's budget is short."""
        asked = [pid for pid in promotion_ids if self.cache.get(pid) is None and pid not in self._fetches]
        self._lookups.spend(asked, self._clock.monotonic())
        return len(asked)

    def _refuse_if_unknown(self, promotion_id: str) -> None:
        until, message = self._unknown.get(promotion_id, (0.0, ""))
        if self.cache.get(promotion_id) is not None or self._clock.monotonic() >= until:
            self._unknown.pop(promotion_id, None)
            return
        raise PromotionUnknown(message, promotion_id)

    async def _track_one(self, promotion_id: str) -> Tracked:
        item = self._tracked.get(promotion_id)
        if item is not None:
            return item
        if self.cache.get(promotion_id) is None:
            await self._fetch(promotion_id)
        promotion = self.cache.get(promotion_id)
        assert promotion is not None, "fetched into the cache"
        return self._tracked.setdefault(promotion_id, Tracked(promotion, self._unheard_lease()))

    async def wait_retired(self) -> str:
        await self._retired.wait()
        return self.retired

    async def _ask(self, call: Awaitable[T]) -> T:
        """A call to the center made for this incarnation: the center's word that a newer process
        replaced it retires this one."""
        try:
            return await call
        except Superseded as error:
            self._retire(error.message)
            raise

    def _retire(self, why: str) -> None:
        if not self.retired:
            self.retired = why
            log.error("%s; this agent spends nothing more", why)
            self._retired.set()

    def _unheard_lease(self) -> float:
        return self._clock.monotonic() + self._lease_ttl_s

    def _heard(self, lease_ttl_s: float) -> float:
        """Takes the lease TTL the center just stated as the one to assume from now on."""
        self._lease_ttl_s = lease_ttl_s
        return lease_ttl_s

    async def finish_refills(self, within_s: float) -> None:
        """Lets acquires in flight land in the ledger, for at most `within_s`: one cancelled after the
        center committed its grant would leave that grant booked to the region, unapplied, after the
        agent gave back everything its ledger holds."""
        refills = [item.refill for item in self._tracked.values() if item.refill and not item.refill.done()]
        if refills:
            await asyncio.wait(refills, timeout=within_s)

    async def cancel_pending(self) -> None:
        """Stops refills, fetches and give-backs in flight, so none lands after a final give-back."""
        tasks = [
            *self._fetches.values(),
            *self._background,
            *(t.refill for t in self._tracked.values() if t.refill),
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def rejoin(self, life: str) -> None:
        """After the ledger lost its data: drop what belonged to the old life (refills in flight
        carry grants to it) and go on as the new incarnation `life`; the center writes the old one off."""
        await self.cancel_pending()
        for item in self._tracked.values():
            item.lease_until, item.last_grant, item.exhausted = self._unheard_lease(), 0, False
        self._opening_requests.clear()
        for book in self._reports.values():
            book.new_life()
        self.incarnation, self._life_lost = life, False
        log.warning("joined the center as ledger incarnation %s", self.incarnation)

    async def ledger_life(self) -> str:
        """The ledger's incarnation, which a ledger that has none (a new one, or one that lost its data)
        asks the center for; Unavailable while the center cannot be reached for it."""
        return await self._ledger.incarnation(self._groups.join)

    async def _life(self) -> str:
        """This process's incarnation, joining the center first if the start could not; Unavailable while
        the ledger's life was lost and the new one is not joined yet (a grant to the old one is wasted)."""
        if self._life_lost:
            raise Unavailable("the ledger lost its data; the agent joins the center as a new incarnation")
        if not self.incarnation:
            self.incarnation = await self._ledger_life_after_start()
        return self.incarnation

    async def _ledger_life_after_start(self) -> str:
        """`ledger_life` for the loops and the order path, the start being over: a ledger that has a life (one
        another agent of the region stored in Redis, say) answers it whatever the center said of a Join."""
        return await self._ledger.incarnation(self._join_after_start)

    async def _join_after_start(self, replaces: str) -> Joined:
        """The center's Join, the start being over. While another life holds the region, asks again only once
        that life's lease could have run out; refused then too, the holder renewed it: this process is a second
        agent of the region on another ledger, and retires (as the start would have refused it, had the center
        answered then). Unavailable meanwhile: the region's live agent may serve the order."""
        started, waited = self._clock.monotonic(), self._held_until
        if started < waited:
            raise Unavailable(f"this agent has not joined region {self._region}: another agent serves it")
        try:
            joined = await self._groups.join(replaces)
        except RegionHeld as held:
            if waited:
                self._retire(f"this agent cannot join: {held.message}")
            self._held_until = max(self._held_until, started + held.retry_after_s + HELD_MARGIN_S)
            raise Unavailable(f"this agent has not joined its region: {held.message}") from held
        self._held_until = 0.0
        return joined

    async def _current_life(self) -> str:
        """The ledger's life now, taken up (`rejoin`) if it is a new one: once, whichever group's loop sees it."""
        async with self._joining:
            life = await self._ledger_life_after_start()
            if life != self.incarnation or self._life_lost:
                if self.incarnation:
                    await self.rejoin(life)
                else:
                    self.incarnation = life
            return life

    def _book(self, promotion_id: str) -> ReportBook:
        """The report book of the group that serves the promotion."""
        return self._reports[self._groups.owners.owner(promotion_id)]

    # Refills

    def refill_if_low(self, item: Tracked, available: int) -> None:
        if policy.surely_above_low_water(
            self._refill_settings, available, item.last_grant, item.meter.peak, item.latency_s
        ):
            # The rate now is at most its peak, and the mark never falls as the rate grows: no refill, and no
            # clock read or decay worked out on the order path.
            return
        now = self._clock.monotonic()
        mark = policy.low_water_mark(self._refill_settings, item.last_grant, item.meter.rate(now), item.latency_s)
        if available < mark and not item.exhausted:
            self.refill(item, 0)

    def refill(self, item: Tracked, needed: int) -> asyncio.Task[QuotaError | None]:
        """The acquire in flight for this promotion, started if there is none. It resolves to
        None once a grant is in the ledger, or to the error that prevented one."""
        if item.refill is None or item.refill.done():
            item.refill = asyncio.create_task(self._acquire(item, needed))
        return item.refill

    async def _acquire(self, item: Tracked, needed: int) -> QuotaError | None:
        if self.retired:
            return Superseded(self.retired)
        promotion_id = item.promotion.id
        if not await self._ledger.claim_refill(promotion_id, self._holder, _CLAIM_TTL_S):
            # Another agent of the region is acquiring; its grant lands in the shared ledger.
            await asyncio.sleep(min(max(item.latency_s, 0.01), 0.5))
            return None
        try:
            return await self._acquire_claimed(item, needed)
        finally:
            await self._ledger.release_refill(promotion_id, self._holder)

    async def _acquire_claimed(self, item: Tracked, needed: int) -> QuotaError | None:
        promotion_id = item.promotion.id
        balance = await self._ledger.balance(promotion_id)
        sent = self._clock.monotonic()
        rate = item.meter.rate(sent)
        amount = policy.ask_amount(self._refill_settings, balance.available, rate, needed)
        self._book(promotion_id).asked([promotion_id])
        request_id, demand = uuid.uuid4().hex, policy.demand_per_minute(rate)
        try:
            life = await self._life()
            answer = await self._ask(
                self._groups.call(
                    promotion_id, lambda port: port.acquire(life, promotion_id, amount, request_id, demand)
                )
            )
        except QuotaError as error:
            item.exhausted = isinstance(error, Exhausted)
            if isinstance(error, FailedPrecondition) and not self.retired:
                log.info("refill of %s refused (%s); reloading the promotion", promotion_id, error.message)
                with contextlib.suppress(QuotaError):
                    await self._fetch(promotion_id)
            return error
        await self._ledger.apply_grant(answer.grant_id, promotion_id, answer.amount, life)
        item.lease_until = sent + self._heard(answer.lease_ttl_s)
        item.last_grant = answer.amount
        item.latency_s = 0.8 * item.latency_s + 0.2 * (self._clock.monotonic() - sent)
        item.exhausted = answer.unallocated == 0
        return None

    async def return_quota(self, promotion_id: str, amount: int) -> None:
        """Removes quota from the ledger first, then tells the center: never the other way round."""
        if amount <= 0 or not await self._ledger.return_quota(promotion_id, amount):
            return
        balance = await self._ledger.balance(promotion_id)
        try:
            life = await self._life()
            counters = self._report(life, promotion_id, balance)
            await self._ask(
                self._groups.call(promotion_id, lambda port: port.return_quota(life, promotion_id, counters))
            )
        except Superseded:
            return  # said once, by `_ask`
        except QuotaError as error:
            log.warning("return of %s not acknowledged yet (%s); the next renewal reports it", promotion_id, error)

    def _report(self, life: str, promotion_id: str, balance: Balance, demand_per_minute: int = 0) -> Report:
        return report(balance, demand_per_minute, self._below_floor.of(life, promotion_id))
