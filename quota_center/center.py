"""The center's domain service: the ledger and the policy over a store, with per-promotion locks.

Every change is computed on a copy of the promotion's state and committed to the store
(compare-and-swap on its version) before anyone hears of it; only then does the copy
become the live state. Nothing that matters lives only in memory: `start` rebuilds it all
from the store. Lease expiries are the exception: they are soft, and a fresh center gives
every region a full TTL rather than guess when it last heard from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from quota_center import allocation, ledger, lifecycle, settlement
from quota_center.alert_book import Alert, Cause
from quota_center.alert_engine import AlertEngine, AlertSettings
from quota_center.alerting import AlertRuleSet, shipped_alert_rules
from quota_center.approvals import PendingChange
from quota_center.audit import PLAINTEXT_ACTOR, AuditRecord
from quota_center.catalog import RevisionIndex
from quota_center.gate import DEFAULT_PENDING_TTL_S, Gate, shipped_rules, terms
from quota_center.guard import Proposal, RuleSet
from quota_center.history import PromotionHistory
from quota_center.history_book import DEFAULT_INTERVAL_S, HistoryBook
from quota_center.issuer import IncarnationIssuer
from quota_center.leadership import Leadership, SingleNode
from quota_center.ledger import GrantRecord, PromotionState, RegionAccount
from quota_center.locks import NamedLocks
from quota_center.reconciliation import Discrepancies
from quota_center.store.base import MAX_BATCH, Store
from quota_center.trail import AuditTrail, By
from quota_common.clock import Clock
from quota_common.errors import (
    AlreadyExists,
    Conflict,
    Exhausted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NotLeader,
    QuotaError,
    Superseded,
    Unavailable,
)
from quota_common.identity import Role
from quota_common.model import (
    EMERGENCY_DOCUMENT,
    EmergencyFreeze,
    Promotion,
    Report,
    promotion_document,
    promotion_from_document,
)
from quota_common.reconcile import Finding

T = TypeVar("T")


RECONCILE_RULE = "reconcile"
HEARTBEAT_S = 5.0
"""An idle watch sends the current revision this often, so agents can tell a live stream from a dead one."""


@dataclass(frozen=True)
class CenterSettings:
    lease_ttl_s: float = 10.0
    """How long a region may spend its allotment without renewing."""
    horizon_s: float = 2.0
    """Seconds of demand the policy sizes grants and reclaims for."""
    pending_ttl_s: float = DEFAULT_PENDING_TTL_S
    """How long a change held by a guard rule waits for approval before it expires."""
    alerts: AlertSettings = field(default_factory=AlertSettings)
    """How often alert rules are evaluated, and where alerts are posted."""
    history_interval_s: float = DEFAULT_INTERVAL_S
    """How often the leading center samples every promotion's usage by region into its history."""
    settle_grace_s: float = settlement.DEFAULT_GRACE_S
    """How long after its end a promotion is settled (its statement final): refunds are honoured until then."""


@dataclass(frozen=True)
class Directive:
    promotion: Promotion
    reclaim: int
    unapplied_grants: list[tuple[str, int]]
    exhausted: bool


@dataclass(frozen=True)
class RegionView:
    region: str
    account: RegionAccount
    lease_active: bool | None
    """None when the region never held quota."""
    lease_age_s: float | None = None
    """Seconds since the region last renewed its lease (or since this leader took over)."""
    demand_per_minute: int = 0
    """The burn rate the region last reported."""
    below_floor: int = 0
    """Order lines below the price floor the region last reported (its ledger life's count)."""


@dataclass(frozen=True)
class UsageView:
    promotion: Promotion
    unallocated: int
    regions: list[RegionView] = field(default_factory=list)


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


class Center:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        settings: CenterSettings | None = None,
        leadership: Leadership | None = None,
        rules: Callable[[], RuleSet] = shipped_rules,
        alert_rules: Callable[[], AlertRuleSet] = shipped_alert_rules,
    ) -> None:
        """`rules`: the guard rules in force, asked for at every change (a file reloaded when it changes);
        `alert_rules` the same, asked for at every evaluation."""
        self._store = store
        self._clock = clock
        self.settings = settings or CenterSettings()
        self._leadership = leadership or SingleNode()
        self._serving = False
        self._states: dict[str, PromotionState] = {}
        self._locks = NamedLocks()
        self._lease_expiry: dict[tuple[str, str], float] = {}
        self._demand: dict[str, dict[str, int]] = {}
        self._below_floor: dict[tuple[str, str], int] = {}
        self._configuring = asyncio.Lock()
        """Held by every configuration change, so changes commit in catalog revision order."""
        self._revisions = RevisionIndex()
        self._catalog_revision = 0
        self._emergency = EmergencyFreeze()
        self._catalog_changed = asyncio.Event()
        self._trail = AuditTrail(store, clock)
        self._issuer = IncarnationIssuer(store, clock)
        self._gate = Gate(store, clock, self._trail, rules, self.settings.pending_ttl_s)
        self.alerts = AlertEngine(
            store,
            clock,
            self._trail,
            alert_rules,
            self._configuring,
            lambda: [self.usage(promotion.id) for promotion in self.promotions()],
            self._frozen_by_alert,
            self.settings.alerts,
        )
        self._discrepancies = Discrepancies()
        self._history = HistoryBook(store)

    async def start(self) -> None:
        """Rebuilds every promotion from the store, then serves (on winning an election too)."""
        self.stop_serving()
        grace = self._clock.monotonic() + self.settings.lease_ttl_s
        states = await self._store.load_all()
        document = await self._store.load_document(EMERGENCY_DOCUMENT)
        await self._trail.load()
        await self._issuer.load()
        await self._gate.load()
        await self.alerts.load()
        self._emergency = EmergencyFreeze.from_document(document) if document else EmergencyFreeze()
        for state in sorted(states, key=lambda s: s.promotion.revision):
            self._states[state.promotion.id] = state
            self._revisions.record(state.promotion.id, state.promotion.revision)
            for region in state.accounts:
                self._lease_expiry[(state.promotion.id, region)] = grace
        self._catalog_revision = max([self._emergency.revision, *(s.promotion.revision for s in states)])
        self._serving = True

    def stop_serving(self) -> None:
        """Forgets everything: a standby answers NotLeader until it leads and rebuilds."""
        self._serving = False
        self._states.clear()
        self._lease_expiry.clear()
        self._demand.clear()
        self._below_floor.clear()
        self._revisions.clear()
        self._discrepancies.clear()
        self._history.clear()
        self._publish()  # watchers wake up, find no leader, and end their streams

    @property
    def leading(self) -> bool:
        """Whether this replica answers now (it leads and has rebuilt its state)."""
        return self._serving and self._leadership.leading()

    def _require_leader(self) -> None:
        """Every answer, reads and lease renewals included, needs leadership that is still
        trustworthy now: a replica that lost it serves nothing from memory."""
        if not self.leading:
            raise NotLeader(self._leadership.leader_address())

    # Budget owners

    async def create_promotion(self, promotion: Promotion, by: By | None = None) -> Promotion:
        """`by`'s identity becomes the promotion's owner, once the guard rules let the create through (a
        held one raises Held and waits for `approve`)."""
        self._require_leader()
        ledger.check_new_promotion(promotion)
        by = by or By()
        async with self._configuring:
            if promotion.id in self._states:
                raise AlreadyExists(f"promotion {promotion.id!r} already exists")
            self._gate.reserved(promotion.id)
            proposal = Proposal(terms(promotion), None, by.actor)
            findings = await self._gate.judge(
                "CreatePromotion", promotion.id, proposal, promotion_document(promotion), by
            )
            owner = "" if by.identity is None else by.identity.uri
            return await self._create(promotion, owner, by, findings)

    async def _create(self, promotion: Promotion, owner: str, by: By, findings: list[str]) -> Promotion:
        """Under the configuration lock: the create itself, with its audit record."""

        async def work() -> Promotion:
            created = replace(promotion, frozen=False, revision=self._catalog_revision + 1, owner=owner)
            state = PromotionState(created)
            after = promotion_document(created)
            record = self._trail.seal(by, "CreatePromotion", promotion.id, None, after, findings)
            try:
                await self._trail.written(self._store.create(state, record), record)
            except BaseException:
                await self._adopt(promotion.id)
                raise
            self._states[promotion.id] = state
            self._changed(state.promotion)
            return state.promotion

        return await self._exclusively([promotion.id], work)

    async def set_budget(
        self, promotion_id: str, budget: int, expected_revision: int, by: By | None = None
    ) -> Promotion:
        """Through the guard rules: a held change raises Held and waits for `approve`."""
        request = {"budget": budget, "expected_revision": expected_revision}
        self._require_leader()
        async with self._configuring:
            return await self._configured(
                promotion_id, "SetBudget", _budget_change(budget, expected_revision), by or By(), request
            )

    async def update_promotion(self, promotion_id: str, update: lifecycle.Update, by: By | None = None) -> Promotion:
        """Through the guard rules, as `set_budget`; the rules of a change are `lifecycle`'s."""
        self._require_leader()
        async with self._configuring:
            return await self._configured(
                promotion_id, "UpdatePromotion", self._updating(update), by or By(), update.to_request()
            )

    def _updating(self, update: lifecycle.Update) -> Callable[[PromotionState, int], bool]:
        return lambda state, revision: lifecycle.update(state, update, revision, self._clock.wall_ms())

    async def end_promotion(self, promotion_id: str, by: By | None = None) -> Promotion:
        """Not judged by the guard rules: ending only lowers what may be spent."""

        def change(state: PromotionState, revision: int) -> bool:
            return lifecycle.end(state, revision, self._clock.wall_ms())

        return await self._configure(promotion_id, "EndPromotion", change, by or By())

    async def set_frozen(self, promotion_id: str, frozen: bool, by: By | None = None) -> Promotion:
        return await self._configure(promotion_id, "SetFrozen", _frozen_change(frozen), by or By())

    async def _frozen_by_alert(self, promotion_id: str, by: By) -> Promotion:
        """The alert engine's freeze, under the configuration lock it holds."""
        return await self._configured(promotion_id, "SetFrozen", _frozen_change(True), by)

    async def set_emergency_freeze(self, region: str, frozen: bool, by: By | None = None) -> EmergencyFreeze:
        """Freezes (or unfreezes) every promotion in `region`, or everywhere when it is empty."""
        self._require_leader()
        # Shielded as every write: a caller that gives up must not leave a switch stored but not enforced.
        return await asyncio.shield(self._switch(region, frozen, by or By()))

    async def _switch(self, region: str, frozen: bool, by: By) -> EmergencyFreeze:
        async with self._configuring:
            switched = self._emergency.switched(region, frozen, self._catalog_revision + 1)
            if switched is None:
                return self._emergency
            document = switched.to_document()
            record = self._trail.seal(by, "SetEmergencyFreeze", "", self._emergency.to_document(), document)
            try:
                await self._trail.written(self._store.save_document(EMERGENCY_DOCUMENT, document, record), record)
            except BaseException:
                await self._reload_switch()
                raise
            self._require_leader()
            self._install_switch(switched)
            return switched

    async def _reload_switch(self) -> None:
        """After a switch write that failed: what the store holds, since a write whose answer was lost
        may have landed, and the switch stored must be the switch enforced."""
        with contextlib.suppress(Exception):
            stored = await self._store.load_document(EMERGENCY_DOCUMENT)
            switch = None if stored is None else EmergencyFreeze.from_document(stored)
            if switch is not None and switch != self._emergency:
                self._install_switch(switch)

    def _install_switch(self, switch: EmergencyFreeze) -> None:
        self._emergency = switch
        self._catalog_revision = max(self._catalog_revision, switch.revision)
        self._publish()

    async def audit_records(self, after_seq: int, limit: int) -> list[AuditRecord]:
        """The audit trail after record `after_seq`, read from the store as it is there (not from memory),
        so a verifier sees what was stored, tampering included."""
        self._require_leader()
        return await self._store.audit_records(after_seq, limit)

    async def _configure(
        self, promotion_id: str, call: str, change: Callable[[PromotionState, int], object], by: By
    ) -> Promotion:
        """A configuration change the guard rules do not judge (it only lowers what may be spent)."""
        self._require_leader()
        async with self._configuring:
            return await self._configured(promotion_id, call, change, by)

    async def _configured(
        self,
        promotion_id: str,
        call: str,
        change: Callable[[PromotionState, int], object],
        by: By,
        guarded: dict[str, Any] | None = None,
        approved: tuple[str, ...] = (),
    ) -> Promotion:
        """Under the configuration lock, a change by the promotion's owner: judged by the guard rules when
        `guarded` (the request, booked if a rule holds it), or carrying the findings it was `approved`
        with; it takes the next catalog revision, is recorded in the audit trail, and watchers hear of it."""
        before = self._state(promotion_id).promotion
        settlement.refuse_if_settled(self._state(promotion_id), call)
        if by.identity is not None and by.identity.role is Role.OWNER:
            ledger.require_owner(before, by.identity.uri, call)
        findings = list(approved)
        if guarded is not None:
            trial = self._state(promotion_id).copy()
            # The change's own checks first: a stale revision is not held, and neither is a change of nothing.
            if change(trial, self._catalog_revision + 1) is not False:
                proposal = Proposal(terms(trial.promotion), terms(before), by.actor)
                findings = await self._gate.judge(call, promotion_id, proposal, guarded, by)

        def record(changed: PromotionState) -> AuditRecord:
            after = promotion_document(changed.promotion)
            return self._trail.seal(by, call, promotion_id, promotion_document(before), after, findings)

        state = await self._change(promotion_id, lambda s: change(s, self._catalog_revision + 1), record)
        return state.promotion

    # Settlement

    def statement(self, promotion_id: str) -> settlement.Statement:
        """Final once settled; until then computed from the books as they stand."""
        return settlement.statement_of(self._state(promotion_id), self._clock.wall_ms())

    async def settle_due(self, by: By) -> list[str]:
        """Settles every promotion whose grace has passed (the leader's periodic job, `by` the center itself);
        returns their ids. Each statement is stored with its promotion, with an audit record."""
        self._require_leader()
        grace_ms = round(self.settings.settle_grace_s * 1000)
        settled = []
        for promotion_id in settlement.due(self._states.values(), self._clock.wall_ms(), grace_ms):

            def settle(state: PromotionState) -> bool:
                return settlement.settle(state, self._clock.wall_ms(), grace_ms)

            def record(state: PromotionState, promotion_id: str = promotion_id) -> AuditRecord:
                return self._trail.seal(by, "SettlePromotion", promotion_id, None, state.statement or {})

            async with self._configuring:
                if (await self._change(promotion_id, settle, record)).statement is not None:
                    settled.append(promotion_id)
        return settled

    async def archive(self, promotion_id: str, by: By | None = None) -> Promotion:
        """Puts a settled promotion away (one catalog revision: agents drop it); archiving twice changes nothing."""
        grace_ms = round(self.settings.settle_grace_s * 1000)

        def change(state: PromotionState, revision: int) -> bool:
            return settlement.archive(state, revision, grace_ms)

        return await self._configure(promotion_id, settlement.ARCHIVE, change, by or By())

    # Second approval

    async def approve(self, pending_id: str, by: By) -> tuple[PendingChange, Promotion]:
        """Applies a held change as asked, by a person other than the one who asked; then books it approved."""
        self._require_leader()
        async with self._configuring:
            change = self._gate.decidable(pending_id, by)
            acting = replace(by, request_id=by.request_id or pending_id)
            if change.call == "CreatePromotion":
                promotion = promotion_from_document(change.request)
                if promotion.id in self._states:
                    raise AlreadyExists(f"promotion {promotion.id!r} already exists")
                owner = "" if change.requested_by == PLAINTEXT_ACTOR else change.requested_by
                applied = await self._create(promotion, owner, acting, list(change.findings))
            else:
                applied = await self._configured(
                    change.promotion_id, change.call, self._held(change), acting, None, change.findings
                )
            return await self._gate.decide(change, by, True, ""), applied

    def _held(self, change: PendingChange) -> Callable[[PromotionState, int], object]:
        """The change a held request makes, applied as it was asked."""
        if change.call == "UpdatePromotion":
            return self._updating(lifecycle.Update.from_request(change.request))
        return _budget_change(int(change.request["budget"]), int(change.request["expected_revision"]))

    async def reject(self, pending_id: str, by: By, reason: str) -> PendingChange:
        self._require_leader()
        async with self._configuring:
            change = self._gate.decidable(pending_id, by)
            return await self._gate.decide(change, by, False, reason)

    # Alerts

    def list_alerts(self, include_acknowledged: bool, promotion_id: str) -> list[Alert]:
        """Newest first."""
        self._require_leader()
        return self.alerts.listing(include_acknowledged, promotion_id)

    async def acknowledge_alert(self, alert_id: str, cause: Cause, note: str, by: By) -> Alert:
        self._require_leader()
        async with self._configuring:
            return await self.alerts.acknowledge(alert_id, cause, note, by)

    async def raise_alert(self, rule: str, promotion_id: str, region: str, message: str) -> Alert | None:
        """For the center's other jobs (reconciliation): one open alert per rule, promotion and region."""
        self._require_leader()
        return await self.alerts.raise_alert(rule, promotion_id, region, message)

    def pending(self) -> list[tuple[PendingChange, str]]:
        """Every change held, decided or expired (the newest decided ones kept), with its state now."""
        self._require_leader()
        return self._gate.listing()

    def _changed(self, promotion: Promotion) -> None:
        self._revisions.record(promotion.id, promotion.revision)
        self._catalog_revision = max(self._catalog_revision, promotion.revision)
        self._publish()

    def _publish(self) -> None:
        self._catalog_changed.set()
        self._catalog_changed = asyncio.Event()

    # The catalog, for agents' caches

    def catalog_page(self, region: str, after: int, page_size: int) -> CatalogPage:
        """The changes after revision `after` that matter to `region`, at most `page_size` of them."""
        self._require_leader()
        promotions: list[Promotion] = []
        for promotion_id in self._revisions.changed_after(after):
            state = self._states[promotion_id]
            # A region removed from the promotion keeps an account, so it hears that it may no longer spend it.
            if region not in state.promotion.regions and region not in state.accounts:
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

    def promotion(self, promotion_id: str) -> Promotion:
        self._require_leader()
        return self._state(promotion_id).promotion

    def promotions(self) -> list[Promotion]:
        self._require_leader()
        return [state.promotion for state in sorted(self._states.values(), key=lambda s: s.promotion.id)]

    def usage(self, promotion_id: str) -> UsageView:
        self._require_leader()
        state = self._state(promotion_id)
        now = self._clock.monotonic()
        demands = self._demand.get(promotion_id, {})
        regions = []
        # A region the promotion allows shows from the start, at zero, so an owner sees who holds
        # nothing as well as who spent; one since removed from it shows while it still has an account.
        for region in sorted(set(state.accounts) | set(state.promotion.regions)):
            account = state.accounts.get(region, RegionAccount())
            expiry = self._lease_expiry.get((promotion_id, region))
            lease_active = None if expiry is None else expiry > now
            age = None if expiry is None else max(0.0, now - (expiry - self.settings.lease_ttl_s))
            floor = self._below_floor.get((promotion_id, region), 0)
            regions.append(RegionView(region, account, lease_active, age, demands.get(region, 0), floor))
        return UsageView(state.promotion, state.unallocated, regions)

    async def sample_history(self) -> None:
        """One point of every promotion's usage by region: the leading center's periodic job."""
        self._require_leader()
        await self._history.sample(list(self._states.values()), self._clock.wall_ms())

    async def history(self, promotion_id: str) -> tuple[Promotion, PromotionHistory]:
        """The promotion's usage over time by region, oldest point first."""
        promotion = self.promotion(promotion_id)
        return promotion, await self._history.history(promotion_id)

    # Agents

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
                self._discrepancies.accepted(promotion_id, region)
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

    async def alert_discrepancies(self) -> None:
        """The periodic reconciliation: every difference the renewals showed is a `reconcile` alert (one
        open per promotion and region, so a difference that persists is raised once)."""
        for found in self.discrepancies():
            await self.raise_alert(RECONCILE_RULE, found.promotion_id, found.region, found.describe())

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
        self._below_floor[(promotion_id, region)] = report.below_floor
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

    # Internals

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

    def _state(self, promotion_id: str) -> PromotionState:
        self._require_leader()  # a call in flight when leadership was lost must not read a cleared state
        state = self._states.get(promotion_id)
        if state is None:
            raise NotFound(f"no promotion with id {promotion_id!r}")
        return state

    async def _exclusively(self, promotion_ids: Sequence[str], work: Callable[[], Awaitable[T]]) -> T:
        """Runs `work` under the promotions' locks (taken in id order, so two callers never wait
        on each other), shielded: a caller that gives up (its RPC was cancelled) neither releases
        a lock early nor stops a commit halfway, so a retry never runs beside the call it retries
        and memory never falls behind the store."""

        async def locked() -> T:
            async with contextlib.AsyncExitStack() as stack:
                for promotion_id in sorted(set(promotion_ids)):
                    await stack.enter_async_context(self._locks.held(promotion_id))
                return await work()

        return await asyncio.shield(locked())

    async def _change(
        self,
        promotion_id: str,
        mutate: Callable[[PromotionState], object],
        audit: Callable[[PromotionState], AuditRecord] | None = None,
    ) -> PromotionState:
        """Applies `mutate` to a copy and commits it, with the audit record `audit` makes of the changed
        state (an admin write); a mutation returning False changed nothing and is not recorded."""

        async def work() -> PromotionState:
            state = self._state(promotion_id).copy()
            if mutate(state) is False:
                return self._state(promotion_id)
            await self._commit([(state, None)], None if audit is None else audit(state))
            return state

        return await self._exclusively([promotion_id], work)

    async def _commit(
        self, changes: Sequence[tuple[PromotionState, GrantRecord | None]], audit: AuditRecord | None = None
    ) -> None:
        """Commits the states (with their grants) in one store write, then installs them; call it
        under the promotions' locks. A commit that failed in any way reloads the promotions, so
        the next attempt starts from the truth. Leadership is the election's business: a
        NotLeader from the store only answers this call."""
        if not changes:
            return
        commits = []
        for state, grant in changes:
            expected = self._state(state.promotion.id).version
            state.version = expected + 1
            commits.append((state, expected, grant))
        ids = [state.promotion.id for state, _ in changes]
        write = self._store.commit_many(commits, audit)
        try:
            await (write if audit is None else self._trail.written(write, audit))
        except Conflict:
            await self._reload(ids)
            raise Unavailable(f"promotion(s) {', '.join(ids)} changed by another writer; retry the call") from None
        except BaseException:
            await self._reload(ids)
            raise
        for state, _ in changes:
            self._states[state.promotion.id] = state
            if state.promotion.revision > self._catalog_revision:
                # A configuration change: indexed in the same step as installed, so no catalog page
                # ever shows a promotion's new revision at its old place in the revision order.
                self._changed(state.promotion)

    async def _adopt(self, promotion_id: str) -> None:
        """After a create that failed, what the store holds: a create whose answer was lost (etcd) did
        land, and the center must serve what is stored, or a retry would find it taken and the
        promotion would not exist here until the next election."""
        stored = await self._store.load(promotion_id)
        if stored is not None and promotion_id not in self._states:
            self._states[promotion_id] = stored
            self._changed(stored.promotion)

    async def _reload(self, promotion_ids: Sequence[str]) -> None:
        for promotion_id in promotion_ids:
            fresh = await self._store.load(promotion_id)
            if fresh is not None:
                self._states[promotion_id] = fresh


def _frozen_change(frozen: bool) -> Callable[[PromotionState, int], bool]:
    def change(state: PromotionState, revision: int) -> bool:
        return ledger.set_frozen(state, frozen, revision)

    return change


def _budget_change(budget: int, expected_revision: int) -> Callable[[PromotionState, int], None]:
    def change(state: PromotionState, revision: int) -> None:
        ledger.set_budget(state, budget, expected_revision, revision)

    return change
