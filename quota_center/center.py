"""The center's domain service (`Center`): what people do — create, change, freeze, end, settle and
archive promotions, the emergency switch, the guard rules and second approval, alerts, history — over the
core (`center_core`) and the agents' calls (`center_agents`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from quota_center import ledger, lifecycle, settlement
from quota_center.alert_book import Alert, Cause
from quota_center.alert_engine import AlertEngine
from quota_center.alerting import AlertRuleSet, shipped_alert_rules
from quota_center.approvals import PendingChange
from quota_center.audit import PLAINTEXT_ACTOR, AuditRecord
from quota_center.center_agents import CenterForAgents
from quota_center.center_core import CenterSettings, UsageView
from quota_center.gate import Gate, shipped_rules, terms
from quota_center.guard import Proposal, RuleSet
from quota_center.history import PromotionHistory
from quota_center.history_book import HistoryBook
from quota_center.leadership import Leadership
from quota_center.ledger import PromotionState
from quota_center.store.base import Store
from quota_center.trail import By
from quota_common.clock import Clock
from quota_common.errors import (
    AlreadyExists,
)
from quota_common.identity import Role
from quota_common.model import (
    EMERGENCY_DOCUMENT,
    EmergencyFreeze,
    Promotion,
    promotion_document,
    promotion_from_document,
)

RECONCILE_RULE = "reconcile"


class Center(CenterForAgents):
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
        super().__init__(store, clock, settings, leadership)
        self._gate = Gate(store, clock, self._trail, rules, self.settings.pending_ttl_s)
        self.alerts = AlertEngine(
            store,
            clock,
            self._trail,
            alert_rules,
            self._configuring,
            self._usages,
            self._frozen_by_alert,
            self.settings.alerts,
        )
        self._history = HistoryBook(store)

    async def _load_books(self) -> None:
        await super()._load_books()
        await self._gate.load()
        await self.alerts.load()

    def stop_serving(self) -> None:
        super().stop_serving()
        self._history.clear()

    async def create_promotion(self, promotion: Promotion, by: By | None = None) -> Promotion:
        """`by`'s identity becomes the promotion's owner, once the guard rules let the create through (a
        held one raises Held and waits for `approve`)."""
        self._require_leader()
        ledger.check_creatable(promotion, self._clock.wall_ms())
        self._require_known_case("regions", promotion.regions)
        self._check_shard(promotion.id, granting=True)
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
            created = replace(promotion, frozen=False, archived=False, revision=self._next_revision(), owner=owner)
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
                promotion_id,
                "SetBudget",
                _budget_change(budget, expected_revision, self._clock.wall_ms()),
                by or By(),
                request,
            )

    async def update_promotion(self, promotion_id: str, update: lifecycle.Update, by: By | None = None) -> Promotion:
        """Through the guard rules, as `set_budget`; the rules of a change are `lifecycle`'s."""
        self._require_leader()
        self._require_known_case("regions", update.changes.get("regions", ()))
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
        self._require_known_case("region", (region,) if region else ())
        # Shielded as every write: a caller that gives up must not leave a switch stored but not enforced.
        return await asyncio.shield(self._switch(region, frozen, by or By()))

    async def _switch(self, region: str, frozen: bool, by: By) -> EmergencyFreeze:
        async with self._configuring:
            switched = self._emergency.switched(region, frozen, self._next_revision())
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
            if change(trial, self._next_revision()) is not False:
                proposal = Proposal(terms(trial.promotion), terms(before), by.actor)
                findings = await self._gate.judge(call, promotion_id, proposal, guarded, by)

        def record(changed: PromotionState) -> AuditRecord:
            after = promotion_document(changed.promotion)
            return self._trail.seal(by, call, promotion_id, promotion_document(before), after, findings)

        state = await self._change(promotion_id, lambda s: change(s, self._next_revision()), record)
        return state.promotion

    def statement(self, promotion_id: str) -> settlement.Statement:
        """Final once settled; until then computed from the books as they stand."""
        return settlement.statement_of(self._state(promotion_id), self._clock.wall_ms())

    async def settle_due(self, by: By) -> list[str]:
        """Settles every promotion whose grace has passed (the leader's periodic job, `by` the center itself);
        returns their ids. Each statement is stored with its promotion, with an audit record."""
        self._require_leader()
        grace_ms = round(self.settings.settle_grace_s * 1000)
        settled = []
        # A promotion being handed to another group is settled there, once it arrives.
        settling = [state for state in self._states.values() if state.promotion.id not in self._draining]
        for promotion_id in settlement.due(settling, self._clock.wall_ms(), grace_ms):

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
        budget, expected = int(change.request["budget"]), int(change.request["expected_revision"])
        return _budget_change(budget, expected, self._clock.wall_ms())

    async def reject(self, pending_id: str, by: By, reason: str) -> PendingChange:
        self._require_leader()
        async with self._configuring:
            change = self._gate.decidable(pending_id, by)
            return await self._gate.decide(change, by, False, reason)

    def list_alerts(self, include_acknowledged: bool, promotion_id: str) -> list[Alert]:
        """Newest first."""
        self._require_leader()
        return self.alerts.listing(include_acknowledged, promotion_id)

    async def acknowledge_alert(self, alert_id: str, cause: Cause, note: str, by: By) -> Alert:
        """An owner answers alerts on their own promotions only (an answer is final and stops the re-sends,
        so another owner must not silence it); approvers and operators answer any."""
        self._require_leader()
        async with self._configuring:
            alerted = self._states.get(self.alerts.find(alert_id).promotion_id)
            if alerted is not None and by.identity is not None and by.identity.role is Role.OWNER:
                ledger.require_owner(alerted.promotion, by.identity.uri, "AcknowledgeAlert")
            return await self.alerts.acknowledge(alert_id, cause, note, by)

    async def raise_alert(self, rule: str, promotion_id: str, region: str, message: str) -> Alert | None:
        """For the center's other jobs (reconciliation): one open alert per rule, promotion and region."""
        self._require_leader()
        return await self.alerts.raise_alert(rule, promotion_id, region, message)

    def pending(self) -> list[tuple[PendingChange, str]]:
        """Every change held, decided or expired (the newest decided ones kept), with its state now."""
        self._require_leader()
        return self._gate.listing()

    async def sample_history(self) -> None:
        """One point of every promotion's usage by region: the leading center's periodic job."""
        self._require_leader()
        await self._history.sample(self._live_states(), self._clock.wall_ms())

    def _live_states(self) -> Iterator[PromotionState]:
        """Each promotion's state as it is when taken (the history takes them in slices); a settled promotion's
        figures are final, and sampling it again would only push its sale's points out."""
        for promotion_id in list(self._states):
            state = self._states.get(promotion_id)
            if state is not None and state.statement is None:
                yield state

    def _usages(self) -> Iterator[UsageView]:
        """Every promotion's usage, each as it is when taken (the alert rules take them in slices); one that
        left this group meanwhile is skipped."""
        for promotion in self.promotions():
            if promotion.id in self._states:
                yield self.usage(promotion.id)

    async def history(self, promotion_id: str) -> tuple[Promotion, PromotionHistory]:
        """The promotion's usage over time by region, oldest point first."""
        promotion = self.promotion(promotion_id)
        return promotion, await self._history.history(promotion_id)

    async def alert_discrepancies(self) -> None:
        """The periodic reconciliation: every difference the renewals showed is a `reconcile` alert (one per
        promotion and region, raised again only once the difference cleared and came back)."""
        self._require_leader()
        found = [(f.promotion_id, f.region, f.describe()) for f in self.discrepancies()]
        await self.alerts.raise_round(RECONCILE_RULE, found)


def _frozen_change(frozen: bool) -> Callable[[PromotionState, int], bool]:
    def change(state: PromotionState, revision: int) -> bool:
        return ledger.set_frozen(state, frozen, revision)

    return change


def _budget_change(budget: int, expected_revision: int, now_ms: int) -> Callable[[PromotionState, int], bool]:
    def change(state: PromotionState, revision: int) -> bool:
        # After its end a budget means nothing to sell and would only rewrite the statement being settled.
        lifecycle.check_changeable(state.promotion, now_ms)
        return ledger.set_budget(state, budget, expected_revision, revision)

    return change
