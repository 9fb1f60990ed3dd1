"""The agent's port to the center, answered by a `Center` in this process: no gRPC, no protobuf.

Tests and the simulator drive the real agent against the real center on one event loop through it.
Around each `Center` call it does what the center's servicers (quota_center.server) do, in domain terms:
it checks the input as they do (the incarnation dated by the host's clock), answers what they answer, and
lets the center's QuotaErrors through as the gRPC adapter turns their statuses back into them (a standby's
NotLeader is an Unavailable). What only a wire needs is left out: messages bounded in bytes, and retries
and leader following, since there is one center and no call is lost on the way.

    port = DirectCenter(center, "eu")
    agent = Agent(AgentSettings("eu"), InProcessLedger(clock), port, clock)

A test cuts the region off from the center (or one center group) with `port.down = True`: every call then
fails as the gRPC adapter fails when no replica answers, and a stream already open breaks at its next page.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence

from quota_center.center import Center
from quota_center.center_agents import HEARTBEAT_S, CatalogPage, Opening
from quota_center.center_renewals import Directive
from quota_common.clock import Clock, SystemClock
from quota_common.errors import InvalidArgument, QuotaError, Unavailable
from quota_common.incarnation import require_incarnation
from quota_common.model import Promotion, Report
from quota_common.validation import (
    DEFAULT_PAGE,
    MAX_OPENINGS,
    MAX_RENEWAL,
    clamp_demand,
    require_amount,
    require_counter,
    require_id,
    require_unique,
)
from region_agent.cache import CatalogSnapshot
from region_agent.center_port import GrantAnswer, OpeningAnswer, Page, RegionLease, RenewalDirective, RenewAnswer
from region_agent.ledger.base import Joined


def _page(page: CatalogPage) -> Page:
    return Page(CatalogSnapshot(page.promotions, page.emergency, page.revision), page.more)


def _checked(report: Report) -> Report:
    return Report(
        granted=require_counter("counters.granted", report.granted),
        returned=require_counter("counters.returned", report.returned),
        deducted=require_counter("counters.deducted", report.deducted),
        refunded=require_counter("counters.refunded", report.refunded),
        demand_per_minute=clamp_demand("counters.demand_per_minute", report.demand_per_minute),
    )


def _directive(promotion_id: str, answer: Directive | QuotaError) -> RenewalDirective:
    if isinstance(answer, QuotaError):
        return RenewalDirective(promotion_id, refusal=answer.message)
    return RenewalDirective(
        promotion_id,
        frozen=answer.promotion.frozen,
        reclaim=answer.reclaim,
        unapplied_grants=tuple(answer.unapplied_grants),
        revision=answer.promotion.revision,
        exhausted=answer.exhausted,
    )


class DirectCenter:
    """The CenterPort of one region, calling `center` directly."""

    def __init__(self, center: Center, region: str, host_clock: Clock | None = None) -> None:
        """`host_clock`: the clock the region's incarnations are dated by; its ledger stamps them with this
        host's time, whatever clock the center runs on."""
        self._center = center
        self._region = require_id("agent.region", region)
        self._host_clock = host_clock or SystemClock()
        self.down = False
        """The center cannot be reached: every call raises Unavailable."""
        self.calls = 0
        self.fetches = 0
        self.entries = 0
        """Promotions reported in renewals so far."""

    def _call(self) -> None:
        """Counts a call, which fails if the center cannot be reached."""
        self.calls += 1
        self._reachable()

    def _reachable(self) -> None:
        if self.down:
            raise Unavailable("the center does not answer")

    def _identity(self, incarnation: str) -> str:
        """Counts a call made for `incarnation`, checked as the servicer checks it."""
        self._call()
        checked = require_incarnation("agent.incarnation", incarnation, self._host_clock.wall_ms())
        return self._center.require_issued(self._region, checked)

    async def join(self, replaces: str) -> Joined:
        self._call()
        return Joined(self._center.join(self._region, replaces), self._center.had_life(self._region))

    @property
    def _lease_ttl_s(self) -> float:
        return self._center.settings.lease_ttl_s

    async def acquire(
        self, incarnation: str, promotion_id: str, amount: int, request_id: str, demand_per_minute: int
    ) -> GrantAnswer:
        result = await self._center.acquire(
            region=self._region,
            incarnation=self._identity(incarnation),
            promotion_id=require_id("promotion_id", promotion_id),
            amount=require_amount("amount", amount),
            request_id=require_id("request_id", request_id),
            demand=clamp_demand("demand_per_minute", demand_per_minute),
        )
        return GrantAnswer(result.grant.grant_id, result.grant.amount, self._lease_ttl_s, result.unallocated)

    async def acquire_openings(
        self, incarnation: str, requests: Sequence[tuple[str, int, str]]
    ) -> tuple[list[OpeningAnswer], float]:
        life = self._identity(incarnation)
        if not 0 < len(requests) <= MAX_OPENINGS:
            raise InvalidArgument(f"items must hold 1 to {MAX_OPENINGS} openings, got {len(requests)}")
        openings = [
            Opening(
                require_id("items.promotion_id", promotion_id),
                require_amount("items.amount", amount),
                require_id("items.request_id", request_id),
            )
            for promotion_id, amount, request_id in requests
        ]
        require_unique("items.promotion_id", (opening.promotion_id for opening in openings))
        answers = await self._center.acquire_openings(self._region, life, openings)
        outcomes = [
            OpeningAnswer(opening.promotion_id, "", 0, answer.message)
            if isinstance(answer, QuotaError)
            else OpeningAnswer(opening.promotion_id, answer.grant_id, answer.amount, "")
            for opening, answer in zip(openings, answers, strict=True)
        ]
        return outcomes, self._lease_ttl_s

    async def list_changes(self, since_revision: int) -> Page:
        self._call()
        since = require_counter("since_revision", since_revision)
        return _page(self._center.catalog_page(self._region, since, DEFAULT_PAGE))

    async def watch(self, since_revision: int, idle_timeout_s: float) -> AsyncIterator[Page]:
        """The servicer's stream: every page, then a wait for the next change or the heartbeat. A center in
        this process is never silent, so `idle_timeout_s` never runs out; a center that stops leading ends
        the stream with NotLeader, as it ends the servicer's, and one cut off (`down`) ends it at its next page
        with Unavailable, as a broken connection does."""
        self._call()
        cursor = require_counter("since_revision", since_revision)
        while True:
            self._reachable()
            page = self._center.catalog_page(self._region, cursor, DEFAULT_PAGE)
            yield _page(page)
            cursor = page.revision
            if not page.more:
                await self._center.catalog_change(cursor, HEARTBEAT_S)

    async def renew(
        self, incarnation: str, reports: Mapping[str, Report], region_lease: RegionLease | None = None
    ) -> RenewAnswer:
        life = self._identity(incarnation)
        if len(reports) > MAX_RENEWAL:
            raise InvalidArgument(f"counters reports {len(reports)} promotions; at most {MAX_RENEWAL} are allowed")
        checked = {require_id("counters.promotion_id", pid): _checked(report) for pid, report in reports.items()}
        self.entries += len(checked)
        if region_lease is None:
            answers = await self._center.renew(self._region, life, checked)
            directives = [_directive(pid, answer) for pid, answer in zip(checked, answers, strict=True)]
            return RenewAnswer(self._lease_ttl_s, directives, self._center.emergency)
        since = require_counter("catalog_revision", region_lease.catalog_revision)
        renewal = await self._center.renew_region(
            self._region, life, checked, since, region_lease.full, region_lease.leaving
        )
        return RenewAnswer(
            self._lease_ttl_s,
            [_directive(pid, answer) for pid, answer in zip(checked, renewal.directives, strict=True)],
            self._center.emergency,
            region_lease=renewal.region_lease,
            notices=[_directive(notice.promotion.id, notice) for notice in renewal.notices],
            report_all=renewal.report_all,
        )

    async def return_quota(self, incarnation: str, promotion_id: str, counters: Report) -> int:
        life = self._identity(incarnation)
        promotion_id = require_id("counters.promotion_id", promotion_id)
        return await self._center.return_quota(self._region, life, promotion_id, _checked(counters))

    async def promotion(self, promotion_id: str) -> Promotion:
        self._call()
        self.fetches += 1
        return self._center.promotion(require_id("promotion_id", promotion_id))

    async def close(self) -> None:
        """Nothing to release: the center belongs to whoever made it."""
