"""The agent's renewals: one loop per center group renews the region lease at that group and reports the
promotions it serves that need reporting (`region_agent.supply` says which); one group's outage leaves the
others' renewals, leases and promotions as they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from quota_common import policy
from quota_common.errors import LedgerLost, QuotaError, Superseded, Unavailable
from quota_common.model import Report
from quota_common.validation import MAX_RENEWAL
from region_agent.center_port import RegionLease, RenewalDirective, RenewAnswer
from region_agent.ledger.base import Balance
from region_agent.supply_core import SupplyCore

log = logging.getLogger(__name__)

RENEW_RETRY_S = 0.25
"""After a failed renewal the next starts this soon, not a whole interval later: the region serves
again within a second or so of the center's return, however long it was away."""


class SupplyRenewals(SupplyCore):
    async def renew_forever(self, interval_s: float, group: str) -> None:
        """Renews with `group` every `interval_s`, and soon again while it does not answer."""
        reachability = self._reachability[group]
        sweeps = group == self._groups.names[0]
        while True:
            await asyncio.sleep(min(interval_s, RENEW_RETRY_S) if reachability.lost else interval_s)
            try:
                # Here rather than in a loop of its own: every agent of a region sweeps, and the
                # sweep is idempotent, so a second's delay is all an expired hold waits.
                if sweeps and (released := await self._ledger.expire_reservations()):
                    log.info("%d reservations lapsed; their quota is available again", released)
                await self.renew_group(group)
            except Superseded:
                return  # said once, by `_ask`; nothing this process sends is taken any more
            except LedgerLost as lost:
                log.error("%s", lost.message)
                # Nothing more is asked for the lost life; the new one is joined now, or by the next renewal.
                self._life_lost = True
                with contextlib.suppress(QuotaError):
                    await self._current_life()
            except Unavailable as error:
                if not reachability.lost:  # an outage of the center is said when it starts and ends
                    log.warning("renewal failed: %s", error.message)
            except QuotaError as error:
                log.warning("renewal failed: %s", error.message)
            except Exception:
                log.exception("renewal failed unexpectedly; retrying shortly")

    async def renew_once(self, leaving: bool = False) -> None:
        """Renews with every group at once; what one group raised is raised once the others renewed (the
        word that this process was replaced first). `leaving`: the process's last renewal (RegionLease)."""
        renewals = (self.renew_group(g, leaving) for g in self._groups.names)
        outcomes = await asyncio.gather(*renewals, return_exceptions=True)
        errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        for error in sorted(errors, key=lambda error: not isinstance(error, Superseded)):
            raise error

    async def renew_group(self, group: str, leaving: bool = False) -> None:
        """Renews the region lease at `group` and reports the promotions it serves that need it (all of them
        when it needs that), in calls of at most MAX_RENEWAL (what a center takes in one). An agent that holds
        nothing renews too: the renewal holds the region for its ledger life, so that a process on another
        ledger cannot join and, by its first grant, write this one off."""
        life = await self._current_life()
        balances = await self._ledger.balances()
        known = {pid for pid, item in self._tracked.items() if self._region in item.promotion.regions}
        promotion_ids = self._groups.owners.of(group, sorted(known | set(balances)))
        # One read of the ledger for every call: counters are cumulative, so a report a few calls old
        # says less than the ledger now does, never anything false.
        book = self._reports[group]
        now, now_ms, asked = self._clock.monotonic(), self._clock.wall_ms(), book.asks
        reports = {pid: self._current(life, pid, balances.get(pid, Balance()), now) for pid in promotion_ids}
        full = book.wants_all
        due = [pid for pid in promotion_ids if self._due(group, pid, reports[pid], now, now_ms)]
        wants_all = False
        # At least one call, however little moved: it renews the region lease.
        for first in range(0, max(len(due), 1), MAX_RENEWAL):
            chunk = {pid: reports[pid] for pid in due[first : first + MAX_RENEWAL]}
            last = first + MAX_RENEWAL >= len(due)  # an earlier call would hold the region again after it
            answer = await self._renew_chunk(group, chunk, full, asked, leaving and last)
            wants_all = wants_all or answer.report_all or not answer.region_lease
        book.wants_all = wants_all
        if line := self._reachability[group].answered():
            log.warning("%s; leases renewed", line)

    def _current(self, life: str, promotion_id: str, balance: Balance, now: float) -> Report:
        item = self._tracked.get(promotion_id)
        demand = policy.demand_per_minute(item.meter.rate(now)) if item else 0
        return self._report(life, promotion_id, balance, demand)

    def _due(self, group: str, promotion_id: str, current: Report, now: float, now_ms: int) -> bool:
        """Whether the promotion's report must go with a renewal that renews the region lease: the book's
        reasons, a refused report (reported until taken in), and the agent's own below."""
        if self._reports[group].due(promotion_id, current) or promotion_id in self._refusals:
            return True
        item = self._tracked.get(promotion_id)
        if item is None:
            return True
        if item.exhausted and item.meter.rate(now) * 60 >= 1:
            return True  # it sells (a unit a minute or more): the renewal says when the center has quota again
        # An ended promotion's quota goes back as the center reclaims it in the answer.
        return self._closed(item.promotion, now_ms) and (current.available or 0) > 0

    async def _renew_chunk(
        self, group: str, reports: dict[str, Report], full: bool, asked: int, leaving: bool = False
    ) -> RenewAnswer:
        """One Renew call to `group`, of reports made after the first `asked` acquires and openings. Its leases run from
        when it was sent: the center renewed them on receiving it, so that is the latest start that is still
        safe (the renewal's start would cut them short)."""
        now = self._clock.monotonic()
        life = self.incarnation
        ask = RegionLease(self.cache.revision_of(group), full, leaving)
        book, reachability = self._reports[group], self._reachability[group]
        try:
            answer = await self._ask(self._groups.port(group).renew(life, reports, ask))
        except Unavailable as error:
            where = f"center group {group}: " if len(self._groups.names) > 1 else ""
            if line := reachability.failed(where + error.message):
                log.warning("%s", line)
            raise
        except QuotaError:
            if line := reachability.answered():
                log.warning("%s, but refused the renewal", line)
            raise
        self.cache.take_emergency(answer.emergency, group)
        lease_until = now + self._heard(answer.lease_ttl_s)
        if answer.region_lease:
            self._region_leases[group] = lease_until
            # The group's lease covers the promotions it serves; another group's lease is its own to renew. One
            # whose report this answer refuses (handed to another group, mostly) is not covered either, and one
            # the center changed since the agent heard of it is leased once the change is here (`_follow`).
            refused = {directive.promotion_id for directive in answer.directives if directive.refusal}
            behind = {named.promotion_id for named in (*answer.directives, *answer.notices) if self._behind(named)}
            for promotion_id in self._groups.owners.of(group, self._tracked):
                if promotion_id not in self._refusals and promotion_id not in refused | behind:
                    self._tracked[promotion_id].lease_until = lease_until
        for directive in answer.directives:
            if self._refused(directive):
                book.refused(directive.promotion_id)
                continue
            book.taken(directive.promotion_id, reports[directive.promotion_id], asked)
            await self._follow_safely(directive, lease_until, life)
        for notice in answer.notices if answer.region_lease else ():
            # One the agent does not track it spends nothing of: its change arrives with the catalog.
            if notice.promotion_id in self._tracked:
                await self._follow_safely(notice, lease_until, life)
        return answer

    def _behind(self, named: RenewalDirective) -> bool:
        """Whether the center names a newer revision of a tracked promotion than the agent holds."""
        item = self._tracked.get(named.promotion_id)
        return item is not None and named.revision > item.promotion.revision

    async def _follow_safely(self, directive: RenewalDirective, lease_until: float, life: str) -> None:
        try:
            await self._follow(directive, lease_until, life)
        except LedgerLost:
            raise
        except QuotaError as error:
            log.warning("directive for %s not followed yet: %s", directive.promotion_id, error.message)

    def _refused(self, directive: RenewalDirective) -> bool:
        """Whether the center refused this promotion's report: then its lease was not renewed and
        nothing of the directive stands. Said once per refusal, not at every renewal."""
        promotion_id, refusal = directive.promotion_id, directive.refusal
        if not refusal:
            self._refusals.pop(promotion_id, None)
            return False
        if self._refusals.get(promotion_id) != refusal:
            self._refusals[promotion_id] = refusal
            if len(self._groups.names) > 1:
                # It may have been handed to another group: asking for it where the agent sends it finds out.
                self._in_background(self._relocate(promotion_id))
            log.error(
                "the center refused the report of %s: %s; its lease is not renewed, so it stops being spent "
                "once the lease runs out",
                promotion_id,
                refusal,
            )
        return True

    async def _follow(self, directive: RenewalDirective, lease_until: float, life: str) -> None:
        item = await self._track_one(directive.promotion_id)
        if self._behind(directive):
            # The third way a change arrives (after push and pull): the renewal names the revision. The lease is
            # renewed once the change is here: renewed first, a freeze whose fetch failed (the center went down
            # right after answering) would leave the region selling on a lease renewed after the freeze.
            await self._fetch(directive.promotion_id)
        item.lease_until = lease_until
        item.exhausted = directive.exhausted
        for grant_id, amount in directive.unapplied_grants:
            await self._ledger.apply_grant(grant_id, directive.promotion_id, amount, life)
        if directive.reclaim > 0:
            await self.return_quota(directive.promotion_id, directive.reclaim)

    async def _relocate(self, promotion_id: str) -> None:
        with contextlib.suppress(QuotaError):
            await self._fetch(promotion_id)
