"""The center's answers to agents: the catalog their caches follow, incarnations, grants, openings,
renewals and returns."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from quota_center import allocation, ledger
from quota_center.center_core import CenterCore
from quota_center.ledger import GrantRecord, PromotionState
from quota_center.store.base import MAX_BATCH
from quota_common.errors import (
    Exhausted,
    FailedPrecondition,
    InvalidArgument,
    QuotaError,
    Superseded,
    Unavailable,
)
from quota_common.model import (
    EmergencyFreeze,
    Promotion,
    Report,
)
from quota_common.reconcile import Finding

HEARTBEAT_S = 5.0
"""An idle watch sends the current revision this often, so agents can tell a live stream from a dead one."""


@dataclass(frozen=True)
class Directive:
    promotion: Promotion
    reclaim: int
    unapplied_grants: list[tuple[str, int]]
    exhausted: bool


@dataclass(frozen=True)
class AcquireResult:
    grant: GrantRecord
    unallocated: int


@dataclass(frozen=True)
class Opening:
    promotion_id: str
    amount: int
    request_id: str


@dataclass(frozen=True)
class CatalogPage:
    promotions: list[Promotion]
    """Changed after the caller's revision, oldest change first."""
    emergency: EmergencyFreeze
    revision: int
    """Everything up to here is in this page or was before the caller's revision."""
    more: bool


def _replayed(grant: GrantRecord, incarnation: str) -> GrantRecord:
    """The grant a retried acquire gets back; only the incarnation that asked may have it."""
    if grant.incarnation != incarnation:
        raise InvalidArgument(f"request id {grant.request_id!r} was used by another incarnation")
    return grant


def _check_same_ask(grant: GrantRecord, amount: int) -> None:
    """A retry repeats its acquire; one asking another amount is a new acquire under a used id."""
    if grant.asked and grant.asked != amount:
        raise FailedPrecondition(
            f"request id {grant.request_id!r} was used for an acquire of {grant.asked} (granted {grant.amount}), "
            f"not {amount}: give a new acquire a new request id"
        )


class CenterForAgents(CenterCore):
    def catalog_page(self, region: str, after: int, page_size: int) -> CatalogPage:
        """The changes after revision `after` that matter to `region`, at most `page_size` of them."""
        self._require_leader()
        promotions: list[Promotion] = []
        for promotion_id in self._revisions.changed_after(after):
            state = self._states[promotion_id]
            # A region removed from the promotion keeps an account, so it hears that it may no longer spend it.
            if not state.promotion.allows(region) and region not in state.accounts:
                continue
            promotion = state.promotion
            if len(promotions) == page_size:
                return CatalogPage(promotions, self._emergency, promotions[-1].revision, more=True)
            promotions.append(promotion)
        return CatalogPage(promotions, self._emergency, max(after, self._catalog_revision), more=False)

    @property
    def emergency(self) -> EmergencyFreeze:
        """The emergency switch as it stands."""
        self._require_leader()
        return self._emergency

    async def catalog_change(self, after: int, timeout_s: float) -> None:
        """Returns once the catalog moves past revision `after`, or after `timeout_s`."""
        changed = self._catalog_changed
        if self._catalog_revision <= after:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout_s)

    def join(self, region: str) -> str:
        """A new ledger life for `region`: newer than every one the region had here, and one only this
        deployment's centers can make."""
        self._require_leader()
        known = (state.accounts[region].incarnation for state in self._states.values() if region in state.accounts)
        return self._issuer.issue(region, known)

    def require_issued(self, region: str, incarnation: str) -> str:
        """`incarnation` if a center of this deployment issued it to `region`; InvalidArgument otherwise."""
        self._require_leader()
        return self._issuer.require(region, incarnation)

    async def acquire(
        self, region: str, incarnation: str, promotion_id: str, amount: int, request_id: str, demand: int
    ) -> AcquireResult:
        self._require_leader()
        self._refuse_if_emergency(region)

        async def work() -> AcquireResult:
            demands = self._demands(promotion_id, region, demand)
            try:
                state, record = await self._book(region, incarnation, promotion_id, amount, request_id, demands)
            except Exhausted:
                # A region refused for lack of quota still counts when idle regions are asked to return theirs.
                self._demand[promotion_id] = demands
                raise
            if state is None:
                _check_same_ask(record, amount)
                state = self._state(promotion_id)
            else:
                await self._commit([(state, record)])
                self._demand[promotion_id] = demands
            self._renew_lease(promotion_id, region)
            return AcquireResult(record, state.unallocated)

        return await self._exclusively([promotion_id], work)

    async def acquire_openings(
        self, region: str, incarnation: str, openings: Sequence[Opening]
    ) -> list[GrantRecord | QuotaError]:
        """Opening allotments for many promotions, committed MAX_BATCH at a time; each is
        answered on its own (a grant, or the error an acquire of it alone would raise)."""
        self._require_leader()
        self._refuse_if_emergency(region)
        answers: list[GrantRecord | QuotaError] = []
        for first in range(0, len(openings), MAX_BATCH):
            batch = openings[first : first + MAX_BATCH]
            opening = functools.partial(self._open, region, incarnation, batch)
            answers.extend(await self._exclusively([o.promotion_id for o in batch], opening))
        return answers

    async def _open(self, region: str, incarnation: str, batch: Sequence[Opening]) -> list[GrantRecord | QuotaError]:
        answers: list[GrantRecord | QuotaError] = []
        commits: list[tuple[PromotionState, GrantRecord | None]] = []
        for opening in batch:
            demands = self._demands(opening.promotion_id, region, 0)
            try:
                state, record = await self._book(
                    region, incarnation, opening.promotion_id, opening.amount, opening.request_id, demands
                )
            except Superseded:
                raise
            except QuotaError as error:
                answers.append(error)
                continue
            # A replayed opening is not held to the amount it first asked, unlike an acquire: an agent
            # keeps one opening request id per promotion and sizes it from the budget, which may change.
            if state is not None:
                commits.append((state, record))
            answers.append(record)
        await self._commit(commits)
        for state, _ in commits:
            self._renew_lease(state.promotion.id, region)
        return answers

    async def _book(
        self, region: str, incarnation: str, promotion_id: str, amount: int, request_id: str, demands: dict[str, int]
    ) -> tuple[PromotionState | None, GrantRecord]:
        """The grant answering this request: the one booked before (with no state to commit), or
        a new one booked on a copy of the promotion's state, which the caller commits."""
        previous = await self._store.find_grant(promotion_id, region, request_id)
        if previous is not None:
            return None, _replayed(previous, incarnation)
        state = self._state(promotion_id).copy()
        ids = (uuid.uuid4().hex, request_id)
        record = allocation.grant(
            state, region, incarnation, amount, ids, demands, self.settings.horizon_s, self._clock.wall_ms()
        )
        return state, record

    def _refuse_if_emergency(self, region: str) -> None:
        if self._emergency.covers(region):
            raise FailedPrecondition(
                f"the emergency freeze covers {self._emergency.describe()}: no quota is granted until it is lifted"
            )

    async def renew(self, region: str, incarnation: str, reports: dict[str, Report]) -> list[Directive | QuotaError]:
        """Takes in each promotion's report and renews its lease, answering each on its own and in
        order: a Directive, or the error that refused that report (then nothing of it was taken in
        and its lease was not renewed), so one bad counter does not stop the region's other
        promotions. A superseded incarnation is refused as a whole: its process must stop."""
        self._require_leader()
        for promotion_id in reports:
            if (known := self._states.get(promotion_id)) is not None:
                ledger.check_not_superseded(known, region, incarnation)
        answers: list[Directive | QuotaError] = []
        for promotion_id, report in reports.items():
            try:
                answers.append(await self._renew_one(region, incarnation, promotion_id, report))
                self._discrepancies.accepted(promotion_id, region, report)
            except (Superseded, Unavailable):
                raise
            except QuotaError as refusal:
                answers.append(refusal)
                self._discrepancies.refused(self._states.get(promotion_id), region, report)
        return answers

    def discrepancies(self) -> list[Finding]:
        """Where the latest renewals showed a region's ledger disagreeing with the center's books (a report
        the center refused), one finding per promotion and region, for the alert rules."""
        self._require_leader()
        return self._discrepancies.findings()

    async def _renew_one(self, region: str, incarnation: str, promotion_id: str, report: Report) -> Directive:
        state = self._state(promotion_id)
        # A region renews every promotion it knows, thousands at a time; most reports say
        # nothing new, and those need neither a copy nor a commit.
        if ledger.report_is_news(state, region, incarnation, report):
            state = await self._report(region, incarnation, promotion_id, report)
        else:
            ledger.check_report(state, region, report)
        self._renew_lease(promotion_id, region)
        demands = self._demand[promotion_id] = self._demands(promotion_id, region, report.demand_per_minute)
        life, counted = self._below_floor.get((promotion_id, region), (incarnation, 0))
        seen = max(counted, report.below_floor) if life == incarnation else report.below_floor
        self._below_floor[(promotion_id, region)] = (incarnation, seen)
        now_ms = self._clock.wall_ms()
        return Directive(
            promotion=state.promotion,
            reclaim=allocation.reclaim(state, region, demands, self.settings.horizon_s, now_ms),
            unapplied_grants=ledger.unapplied_grants(state.accounts[region], report),
            exhausted=state.grantable(now_ms) == 0,
        )

    async def return_quota(self, region: str, incarnation: str, promotion_id: str, report: Report) -> int:
        """Takes in a return the agent already removed from its ledger; returns unallocated."""
        self._require_leader()
        return (await self._report(region, incarnation, promotion_id, report)).unallocated

    async def _report(self, region: str, incarnation: str, promotion_id: str, report: Report) -> PromotionState:
        def apply(state: PromotionState) -> bool:
            admitted = ledger.admit(state, region, incarnation)
            return ledger.apply_report(state, region, report) or admitted

        return await self._change(promotion_id, apply)

    def _demands(self, promotion_id: str, region: str, demand: int) -> dict[str, int]:
        """Every region's latest demand for the promotion, with `region`'s updated. Demand
        is soft state, like leases: kept in memory, remembered once the call succeeds."""
        return {**self._demand.get(promotion_id, {}), region: demand}

    def _renew_lease(self, promotion_id: str, region: str) -> None:
        self._lease_expiry[(promotion_id, region)] = self._clock.monotonic() + self.settings.lease_ttl_s
