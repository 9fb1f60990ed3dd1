"""Keeps a region's allotments topped up and its leases renewed: the agent's side of the center.

- Refills start when what is left falls below the low-water mark; at most one acquire per
  promotion is in flight, and every order short of quota waits on that same one.
- The renew loop renews the region lease (one lease over every promotion of the region, each
  measured from when its call was sent, so clock skew cannot stretch it) and reports cumulative
  counters only for the promotions whose counters or demand moved since the center took in their
  last report, or whose word from the center the agent needs (an acquire whose answer may be lost,
  a refused report, exhausted quota it wants, a closed promotion it still holds): an idle promotion
  costs nothing. It reports every promotion it knows (also those it holds nothing of, so the center
  learns their demand) in its first round, when the center asks (a new leader), and while the center
  does not renew the region lease (a center older than it), in calls of at most MAX_RENEWAL. It applies
  grants whose answer was lost and gives back quota the center reclaims or a freeze releases.
- Promotions come from the cache (fed by `CatalogSync`); a promotion the cache does not know
  is fetched once, however many orders wait for it, and one the center does not know is
  remembered as unknown for a few seconds. A freeze, by whichever link it arrives, gives the
  promotion's unspent allotment back at once.
- While the center is away, renewals are retried every fraction of a second, so the region
  serves again as soon as it is back. Once the center says a newer process of the region
  replaced this one, nothing more is spent or asked for (`retired` says why).
- Openings: promotions that start within the look-ahead get an opening allotment before they
  start, many in one call, so the first orders of a midnight sale do not wait on the center.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Awaitable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from quota_common import policy
from quota_common.clock import Clock
from quota_common.errors import (
    Exhausted,
    FailedPrecondition,
    LedgerLost,
    NotFound,
    QuotaError,
    Superseded,
    Unavailable,
)
from quota_common.model import Promotion, Report
from quota_common.policy import RefillSettings
from quota_common.validation import MAX_OPENINGS, MAX_RENEWAL
from region_agent.cache import PromotionCache
from region_agent.center_port import CenterPort, RegionLease, RenewalDirective, RenewAnswer, report
from region_agent.demand import RateMeter
from region_agent.floor import BelowFloorCount
from region_agent.ledger.base import Balance, Ledger
from region_agent.reachability import Reachability
from region_agent.report_book import ReportBook

log = logging.getLogger(__name__)
T = TypeVar("T")

_CLAIM_TTL_S = 5.0
"""Longest one agent keeps the region's other agents from acquiring for a promotion."""
RENEW_RETRY_S = 0.25
"""After a failed renewal the next starts this soon, not a whole interval later: the region serves
again within a second or so of the center's return, however long it was away."""
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


class Supply:
    def __init__(
        self,
        region: str,
        refill: RefillSettings,
        ledger: Ledger,
        center: CenterPort,
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
        self._center = center
        self._clock = clock
        self.cache = cache
        self._lease_ttl_s = lease_ttl_s
        self._below_floor = below_floor
        self._tracked: dict[str, Tracked] = {}
        self._fetches: dict[str, asyncio.Task[None]] = {}
        self._opening_requests: dict[str, str] = {}
        """Per promotion, the request id of its opening in this incarnation (a retry reuses it)."""
        self._background: set[asyncio.Task[None]] = set()
        self._unknown: dict[str, tuple[float, str]] = {}
        """Promotions the center said it does not know: until when that stands, and its words."""
        self._refusals: dict[str, str] = {}
        """Per promotion, the center's last refusal of its report (logged once until it changes)."""
        self._reports = ReportBook()
        self._reachability = Reachability(clock)
        self._retired = asyncio.Event()
        self.retired = ""
        """Why this process may no longer spend for its region; empty while it may."""
        self.incarnation = ""
        self._life_lost = False
        """The ledger lost its data (LedgerLost) and the new life is not joined yet."""
        self._holder = uuid.uuid4().hex

    def get(self, promotion_id: str) -> Tracked | None:
        return self._tracked.get(promotion_id)

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
            promotion = await self._center.promotion(promotion_id)
        except NotFound as error:
            self._remember_unknown(promotion_id, error.message)
            raise
        self.learn(self.cache.put([promotion]))

    def _remember_unknown(self, promotion_id: str, message: str) -> None:
        """Kept in the order entries expire (insertion order, one TTL), so expired ones go from the front."""
        now = self._clock.monotonic()
        while self._unknown and next(iter(self._unknown.values()))[0] <= now:
            del self._unknown[next(iter(self._unknown))]
        self._unknown.pop(promotion_id, None)
        self._unknown[promotion_id] = (now + UNKNOWN_TTL_S, message)

    async def track(self, promotion_ids: Sequence[str]) -> list[Tracked]:
        """The promotions, fetched from the center on first sight: one fetch per promotion however
        many orders wait for it, and a cancelled order cancels no fetch. The first one missing from
        the cache is fetched alone, so an order naming promotions nobody knows costs the center one
        call; the rest then concurrently."""
        known = []
        for promotion_id in promotion_ids:
            item = self._tracked.get(promotion_id)
            if item is None:
                unseen = [pid for pid in promotion_ids if pid not in self._tracked]
                for pid in unseen:
                    self._refuse_if_unknown(pid)
                if uncached := [pid for pid in unseen if self.cache.get(pid) is None]:
                    await self._track_one(uncached[0])
                return list(await asyncio.gather(*(self._track_one(pid) for pid in promotion_ids)))
            known.append(item)
        # Every order after a promotion's first lands here: no task per promotion on the order path.
        return known

    def _refuse_if_unknown(self, promotion_id: str) -> None:
        until, message = self._unknown.get(promotion_id, (0.0, ""))
        if self.cache.get(promotion_id) is not None or self._clock.monotonic() >= until:
            self._unknown.pop(promotion_id, None)
            return
        raise NotFound(message)

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
            if not self.retired:
                self.retired = error.message
                log.error("%s; this agent spends nothing more", self.retired)
                self._retired.set()
            raise

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
        self._reports.new_life()
        self.incarnation, self._life_lost = life, False
        log.warning("joined the center as ledger incarnation %s", self.incarnation)

    async def ledger_life(self) -> str:
        """The ledger's incarnation, which a ledger that has none (a new one, or one that lost its data)
        asks the center for; Unavailable while the center cannot be reached for it."""
        return await self._ledger.incarnation(self._center.join)

    async def _life(self) -> str:
        """This process's incarnation, joining the center first if the start could not; Unavailable while
        the ledger's life was lost and the new one is not joined yet (a grant to the old one is wasted)."""
        if self._life_lost:
            raise Unavailable("the ledger lost its data; the agent joins the center as a new incarnation")
        if not self.incarnation:
            self.incarnation = await self.ledger_life()
        return self.incarnation

    # Refills

    def refill_if_low(self, item: Tracked, available: int) -> None:
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
        self._reports.asked([promotion_id])
        try:
            life = await self._life()
            answer = await self._ask(
                self._center.acquire(life, promotion_id, amount, uuid.uuid4().hex, policy.demand_per_minute(rate))
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
            await self._ask(self._center.return_quota(life, promotion_id, self._report(life, promotion_id, balance)))
        except Superseded:
            return  # said once, by `_ask`
        except QuotaError as error:
            log.warning("return of %s not acknowledged yet (%s); the next renewal reports it", promotion_id, error)

    # The renew loop

    async def renew_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(min(interval_s, RENEW_RETRY_S) if self._reachability.lost else interval_s)
            try:
                # Here rather than in a loop of its own: every agent of a region sweeps, and the
                # sweep is idempotent, so a second's delay is all an expired hold waits.
                if released := await self._ledger.expire_reservations():
                    log.info("%d reservations lapsed; their quota is available again", released)
                await self.renew_once()
            except Superseded:
                return  # said once, by `_ask`; nothing this process sends is taken any more
            except LedgerLost as lost:
                log.error("%s", lost.message)
                # Nothing more is asked for the lost life; the new one is joined now, or by the next renewal.
                self._life_lost = True
                with contextlib.suppress(QuotaError):
                    await self.rejoin(await self.ledger_life())
            except Unavailable as error:
                if not self._reachability.lost:  # an outage of the center is said when it starts and ends
                    log.warning("renewal failed: %s", error.message)
            except QuotaError as error:
                log.warning("renewal failed: %s", error.message)
            except Exception:
                log.exception("renewal failed unexpectedly; retrying shortly")

    async def renew_once(self) -> None:
        """Renews the region lease and reports the promotions that need it (all of them when the center
        needs that), in calls of at most MAX_RENEWAL (what the center takes in one)."""
        life = await self.ledger_life()
        if life != self.incarnation or self._life_lost:
            if self.incarnation:
                await self.rejoin(life)
            else:
                self.incarnation = life
        balances = await self._ledger.balances()
        known = {pid for pid, item in self._tracked.items() if self._region in item.promotion.regions}
        promotion_ids = sorted(known | set(balances))
        if not promotion_ids:
            return
        # One read of the ledger for every call: counters are cumulative, so a report a few calls old
        # says less than the ledger now does, never anything false.
        now, now_ms, asked = self._clock.monotonic(), self._clock.wall_ms(), self._reports.asks
        reports = {pid: self._current(life, pid, balances.get(pid, Balance()), now) for pid in promotion_ids}
        full = self._reports.wants_all
        due = [pid for pid in promotion_ids if self._due(pid, reports[pid], now, now_ms)]
        wants_all = False
        # At least one call, however little moved: it renews the region lease.
        for first in range(0, max(len(due), 1), MAX_RENEWAL):
            chunk = {pid: reports[pid] for pid in due[first : first + MAX_RENEWAL]}
            answer = await self._renew_chunk(chunk, full, asked)
            wants_all = wants_all or answer.report_all or not answer.region_lease
        self._reports.wants_all = wants_all
        if line := self._reachability.answered():
            log.warning("%s; leases renewed", line)

    def _current(self, life: str, promotion_id: str, balance: Balance, now: float) -> Report:
        item = self._tracked.get(promotion_id)
        demand = policy.demand_per_minute(item.meter.rate(now)) if item else 0
        return self._report(life, promotion_id, balance, demand)

    def _due(self, promotion_id: str, current: Report, now: float, now_ms: int) -> bool:
        """Whether the promotion's report must go with a renewal that renews the region lease: the book's
        reasons, a refused report (reported until taken in), and the agent's own below."""
        if self._reports.due(promotion_id, current) or promotion_id in self._refusals:
            return True
        item = self._tracked.get(promotion_id)
        if item is None:
            return True
        if item.exhausted and item.meter.rate(now) * 60 >= 1:
            return True  # it sells (a unit a minute or more): the renewal says when the center has quota again
        # An ended promotion's quota goes back as the center reclaims it in the answer.
        return self._closed(item.promotion, now_ms) and (current.available or 0) > 0

    async def _renew_chunk(self, reports: dict[str, Report], full: bool, asked: int) -> RenewAnswer:
        """One Renew call, of reports made after the first `asked` acquires and openings. Its leases run from
        when it was sent: the center renewed them on receiving it, so that is the latest start that is still
        safe (the renewal's start would cut them short)."""
        now = self._clock.monotonic()
        life = self.incarnation
        ask = RegionLease(self.cache.revision, full)
        try:
            answer = await self._ask(self._center.renew(life, reports, ask))
        except Unavailable as error:
            if line := self._reachability.failed(error.message):
                log.warning("%s", line)
            raise
        except QuotaError:
            if line := self._reachability.answered():
                log.warning("%s, but refused the renewal", line)
            raise
        self.cache.take_emergency(answer.emergency)
        lease_until = now + self._heard(answer.lease_ttl_s)
        if answer.region_lease:
            for promotion_id, item in self._tracked.items():
                if promotion_id not in self._refusals:
                    item.lease_until = lease_until
        for directive in answer.directives:
            if self._refused(directive):
                self._reports.refused(directive.promotion_id)
                continue
            self._reports.taken(directive.promotion_id, reports[directive.promotion_id], asked)
            await self._follow_safely(directive, lease_until, life)
        for notice in answer.notices if answer.region_lease else ():
            # One the agent does not track it spends nothing of: its change arrives with the catalog.
            if notice.promotion_id in self._tracked:
                await self._follow_safely(notice, lease_until, life)
        return answer

    async def _follow_safely(self, directive: RenewalDirective, lease_until: float, life: str) -> None:
        try:
            await self._follow(directive, lease_until, life)
        except LedgerLost:
            raise
        except QuotaError as error:
            log.warning("directive for %s not followed yet: %s", directive.promotion_id, error.message)

    def _report(self, life: str, promotion_id: str, balance: Balance, demand_per_minute: int = 0) -> Report:
        return report(balance, demand_per_minute, self._below_floor.of(life, promotion_id))

    def _refused(self, directive: RenewalDirective) -> bool:
        """Whether the center refused this promotion's report: then its lease was not renewed and
        nothing of the directive stands. Said once per refusal, not at every renewal."""
        promotion_id, refusal = directive.promotion_id, directive.refusal
        if not refusal:
            self._refusals.pop(promotion_id, None)
            return False
        if self._refusals.get(promotion_id) != refusal:
            self._refusals[promotion_id] = refusal
            log.error(
                "the center refused the report of %s: %s; its lease is not renewed, so it stops being spent "
                "once the lease runs out",
                promotion_id,
                refusal,
            )
        return True

    async def _follow(self, directive: RenewalDirective, lease_until: float, life: str) -> None:
        item = await self._track_one(directive.promotion_id)
        item.lease_until = lease_until
        item.exhausted = directive.exhausted
        for grant_id, amount in directive.unapplied_grants:
            await self._ledger.apply_grant(grant_id, directive.promotion_id, amount, life)
        if directive.reclaim > 0:
            await self.return_quota(directive.promotion_id, directive.reclaim)
        if directive.revision > item.promotion.revision:
            # The third way a change arrives (after push and pull): the renewal names the revision.
            await self._fetch(directive.promotion_id)

    # Openings

    async def open_forever(self, lookahead_s: float) -> None:
        while True:
            # Every second, at a phase of its own: the region's agents do not open in step, and
            # the second finds what the first opened in the shared ledger.
            await asyncio.sleep(random.uniform(0.5, 1.5))
            try:
                await self.open_upcoming(lookahead_s)
            except Superseded:
                return  # said once, by `_ask`
            except QuotaError as error:
                log.warning("opening allotments not acquired yet (%s); retrying", error.message)

    async def open_upcoming(self, lookahead_s: float) -> None:
        """Opening allotments for the region's promotions that start within `lookahead_s` and
        that this incarnation holds nothing of yet."""
        now_ms = self._clock.wall_ms()
        balances = await self._ledger.balances()
        upcoming = [
            promotion
            for promotion in self.cache.starting(now_ms, now_ms + round(lookahead_s * 1000))
            if promotion.allows(self._region)
            and not promotion.frozen
            and balances.get(promotion.id, Balance()).granted == 0
        ]
        for first in range(0, len(upcoming), MAX_OPENINGS):
            await self._open(upcoming[first : first + MAX_OPENINGS])

    async def _open(self, promotions: list[Promotion]) -> None:
        requests = []
        for promotion in promotions:
            request_id = self._opening_requests.setdefault(promotion.id, uuid.uuid4().hex)
            amount = policy.opening_amount(self._refill_settings, promotion.budget, len(promotion.regions))
            requests.append((promotion.id, amount, request_id))
        life = await self._life()
        sent = self._clock.monotonic()
        self._reports.asked(promotion.id for promotion in promotions)
        answers, lease_ttl_s = await self._ask(self._center.acquire_openings(life, requests))
        for answer in answers:
            if not answer.grant_id:
                log.info("no opening allotment of %s: %s", answer.promotion_id, answer.refusal)
                continue
            await self._ledger.apply_grant(answer.grant_id, answer.promotion_id, answer.amount, life)
            item = await self._track_one(answer.promotion_id)
            item.lease_until = sent + self._heard(lease_ttl_s)
            item.last_grant = answer.amount
