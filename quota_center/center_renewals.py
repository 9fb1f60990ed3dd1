"""The center's answers to renewals: reports taken in (only what changed, in batched store writes),
leases renewed (each promotion's, or the region's at once), and what a region should do about each
promotion (give quota back, apply a grant whose answer was lost, reload a changed promotion)."""

from __future__ import annotations

import asyncio
import functools
import math
from dataclasses import dataclass, field

from quota_center import allocation, ledger
from quota_center.center_shards import CenterShards
from quota_center.ledger import GrantRecord, PromotionState
from quota_center.store.base import MAX_BATCH_BYTES, MAX_REPORT_BATCH, batches
from quota_common.errors import QuotaError, Superseded, Unavailable
from quota_common.model import Promotion, Report
from quota_common.reconcile import Finding

MAX_NOTICES = 1000
"""Notices one region-lease renewal carries. An agent whose catalog is further behind gets no region
lease (it reports every promotion instead, each answered with its revision) until its catalog catches up."""


@dataclass(frozen=True)
class Directive:
    promotion: Promotion
    reclaim: int
    unapplied_grants: list[tuple[str, int]]
    exhausted: bool


@dataclass(frozen=True)
class Renewal:
    """The answer to a region-lease renewal."""

    directives: list[Directive | QuotaError]
    """One per report, in order, as `renew` answers them."""
    region_lease: bool
    """Whether the lease of every promotion of the region was renewed (not when the caller's catalog is too
    far behind for the notices to name every change)."""
    notices: list[Directive] = field(default_factory=list)
    """For promotions not reported: a newer revision than the caller's catalog holds, or a reclaim."""
    report_all: bool = False
    """This leader has had no full report of the caller's incarnation yet."""


def _take_in(state: PromotionState, region: str, incarnation: str, report: Report) -> bool:
    """Admits the region's incarnation and merges its report into `state`; whether anything changed."""
    admitted = ledger.admit(state, region, incarnation)
    return ledger.apply_report(state, region, report) or admitted


class CenterRenewals(CenterShards):
    async def renew(self, region: str, incarnation: str, reports: dict[str, Report]) -> list[Directive | QuotaError]:
        """Takes in each promotion's report and renews its lease, answering each on its own and in
        order: a Directive, or the error that refused that report (then nothing of it was taken in
        and its lease was not renewed), so one bad counter does not stop the region's other
        promotions. A superseded incarnation is refused as a whole: its process must stop.

        Only reports that change something are committed, MAX_REPORT_BATCH promotions (and at most
        MAX_BATCH_BYTES of documents) to a store write, the writes at once."""
        self._require_leader()
        for promotion_id in reports:
            if (known := self._states.get(promotion_id)) is not None:
                ledger.check_not_superseded(known, region, incarnation)
        refusals: dict[str, QuotaError] = {}
        news = []
        for promotion_id, report in reports.items():
            try:
                state = self._state(promotion_id)
                if ledger.report_is_news(state, region, incarnation, report):
                    news.append(promotion_id)
                else:
                    ledger.check_report(state, region, report)
            except (Superseded, Unavailable):
                raise
            except QuotaError as refusal:
                refusals[promotion_id] = refusal
        # The writes run side by side (their promotions differ, and each takes its locks in id order), so a call
        # lasts about one store round trip however many promotions moved.
        takes = [
            self._exclusively(
                batch, functools.partial(self._take_reports, region, incarnation, {p: reports[p] for p in batch})
            )
            for batch in batches(news, self._document_bytes, MAX_REPORT_BATCH, MAX_BATCH_BYTES)
        ]
        for taken in await asyncio.gather(*takes):
            refusals.update(taken)
        answers: list[Directive | QuotaError] = []
        for promotion_id, report in reports.items():
            if (refused := refusals.get(promotion_id)) is not None:
                answers.append(refused)
                self._discrepancies.refused(self._states.get(promotion_id), region, report)
            else:
                answers.append(self._renewed(region, incarnation, promotion_id, report))
                self._discrepancies.accepted(promotion_id, region, report)
        self._hold(region, incarnation)
        return answers

    async def renew_region(
        self,
        region: str,
        incarnation: str,
        reports: dict[str, Report],
        catalog_revision: int,
        full: bool,
        leaving: bool = False,
    ) -> Renewal:
        """`renew`, and the region lease: one lease over every promotion of the region, so that an agent
        reports only what moved. A promotion not reported gets a notice when the caller should hear of it
        (changed after `catalog_revision`, or quota to give back). `full`: the caller reports (in this
        call and the others of its round) every promotion it knows. `leaving`: the caller's last renewal
        (its ledger dies with it), after which the region is no longer held by its life."""
        self._require_leader()
        newest = self._newest_life.get(region, "")
        if incarnation < newest:
            # Reported or not, no promotion of the region is this process's to spend any more.
            raise Superseded(
                f"ledger incarnation {incarnation} of region {region} is older than the current one ({newest}): "
                "another agent process of the region replaced this one"
            )
        directives = await self.renew(region, incarnation, reports)
        if leaving and self._holder.get(region, ("",))[0] == incarnation:
            del self._holder[region]
        if full:
            self._fully_reported[region] = incarnation
        report_all = self._fully_reported.get(region) != incarnation
        notices = self._notices(region, reports, catalog_revision)
        if notices is None:
            return Renewal(directives, region_lease=False, report_all=report_all)
        self._region_lease[region] = self._clock.monotonic() + self.settings.lease_ttl_s
        return Renewal(directives, region_lease=True, notices=notices, report_all=report_all)

    def _notices(self, region: str, reported: dict[str, Report], after: int) -> list[Directive] | None:
        """What the region should hear of promotions it did not report: each changed after revision `after`
        (found through the revision index, so the work follows the changes), and each contested one it holds
        quota of that it should give back. None when more changed than one answer may name."""
        notices: dict[str, Directive] = {}
        now_ms = self._clock.wall_ms()
        for promotion_id in self._revisions.changed_after(after):
            if not self.serves(promotion_id):  # before the lookup: a slot handed away is forgotten here
                continue
            state = self._states[promotion_id]
            if promotion_id in reported or (region not in state.promotion.regions and region not in state.accounts):
                continue
            if len(notices) == MAX_NOTICES:
                return None
            notices[promotion_id] = self._directive(region, state, now_ms)
        for promotion_id in sorted((self._contested | self._draining) - notices.keys() - reported.keys()):
            state = self._states[promotion_id]
            account = state.accounts.get(region)
            if account is None or account.held <= 0 or len(notices) == MAX_NOTICES:
                continue
            notice = self._directive(region, state, now_ms)
            if notice.reclaim > 0:
                notices[promotion_id] = notice
        return list(notices.values())

    def _document_bytes(self, promotion_id: str) -> int:
        """About what the promotion's document weighs in a store write (0: no such promotion, nothing to write)."""
        state = self._states.get(promotion_id)
        return 0 if state is None else len(state.encoded())

    async def _take_reports(self, region: str, incarnation: str, reports: dict[str, Report]) -> dict[str, QuotaError]:
        """Takes in reports that change the books, in one store write; returns the ones refused. Call it
        under the promotions' locks."""
        refusals: dict[str, QuotaError] = {}
        commits: list[tuple[PromotionState, GrantRecord | None]] = []
        for promotion_id, report in reports.items():
            state = self._state(promotion_id).copy()
            try:
                if _take_in(state, region, incarnation, report):
                    commits.append((state, None))
            except Superseded:
                raise
            except QuotaError as refusal:
                refusals[promotion_id] = refusal
        await self._commit(commits)
        return refusals

    def _renewed(self, region: str, incarnation: str, promotion_id: str, report: Report) -> Directive:
        """After a report was taken in: its lease renewed, its demand and below-floor count noted, and what
        the region should do about the promotion."""
        state = self._state(promotion_id)
        self._renew_lease(promotion_id, region, incarnation)
        self._note_demands(promotion_id, self._demands(promotion_id, region, report.demand_per_minute))
        life, counted = self._below_floor.get((promotion_id, region), (incarnation, 0))
        seen = max(counted, report.below_floor) if life == incarnation else report.below_floor
        self._below_floor[(promotion_id, region)] = (incarnation, seen)
        directive = self._directive(region, state, self._clock.wall_ms())
        unapplied = ledger.unapplied_grants(state.accounts[region], report)
        return Directive(directive.promotion, directive.reclaim, unapplied, directive.exhausted)

    def _directive(self, region: str, state: PromotionState, now_ms: int) -> Directive:
        """What the region should do about the promotion now, whatever it reported (no grants to resend)."""
        promotion_id = state.promotion.id
        demands = self._demand.get(promotion_id, {})
        account = state.accounts.get(region)
        if promotion_id in self._draining:
            # Moving to another group: everything the region holds comes back, so the slot drains.
            return Directive(state.promotion, max(0, account.held) if account else 0, [], exhausted=True)
        reclaim = allocation.reclaim(state, region, demands, self.settings.horizon_s, now_ms) if account else 0
        return Directive(state.promotion, reclaim, [], exhausted=state.grantable(now_ms) == 0)

    def _note_demands(self, promotion_id: str, demands: dict[str, int]) -> None:
        """Remembers every region's demand for the promotion, and whether it is contested: the regions want
        more over a horizon than the center can grant, so one holding idle quota may be asked for it."""
        self._demand[promotion_id] = demands
        state = self._states.get(promotion_id)
        wanted = math.ceil(sum(demands.values()) * self.settings.horizon_s / 60)
        if state is not None and wanted > state.grantable(self._clock.wall_ms()):
            self._contested.add(promotion_id)
        else:
            self._contested.discard(promotion_id)

    def discrepancies(self) -> list[Finding]:
        """Where the latest renewals showed a region's ledger disagreeing with the center's books (a report
        the center refused), one finding per promotion and region, for the alert rules."""
        self._require_leader()
        return self._discrepancies.findings()

    async def return_quota(self, region: str, incarnation: str, promotion_id: str, report: Report) -> int:
        """Takes in a return the agent already removed from its ledger; returns unallocated."""
        self._require_leader()
        return (await self._report(region, incarnation, promotion_id, report)).unallocated

    async def _report(self, region: str, incarnation: str, promotion_id: str, report: Report) -> PromotionState:
        return await self._change(promotion_id, lambda state: _take_in(state, region, incarnation, report))

    def _demands(self, promotion_id: str, region: str, demand: int) -> dict[str, int]:
        """Every region's latest demand for the promotion, with `region`'s updated. Demand
        is soft state, like leases: kept in memory, remembered once the call succeeds."""
        return {**self._demand.get(promotion_id, {}), region: demand}

    def _renew_lease(self, promotion_id: str, region: str, incarnation: str) -> None:
        self._lease_expiry[(promotion_id, region)] = self._hold(region, incarnation)

    def _hold(self, region: str, incarnation: str) -> float:
        """Notes that `incarnation` renewed a lease of `region` just now; returns when that lease runs out. An
        older life does not take the hold back from a newer one whose lease is live (the older is on its way
        out: superseded once the newer is admitted)."""
        now = self._clock.monotonic()
        expiry = now + self.settings.lease_ttl_s
        holder = self._holder.get(region)
        if holder is None or incarnation >= holder[0] or holder[1] <= now:
            self._holder[region] = (incarnation, expiry)
        return expiry
