"""The guard rules at the center's door: every create and budget change is judged by the rules in force
before anything is written, and a change a rule holds waits in the book of pending changes until a
second person decides it.

    Gate(store, clock, trail, rules, pending_ttl_s)
      .load()                                   the book, from the store (when this center leads)
      .judge(call, promotion_id, proposal, request, by) -> findings   refuse: FailedPrecondition; hold:
                                                the change is booked (with its audit record) and Held raised
      .reserved(promotion_id)                   AlreadyExists while a held create keeps the id
      .decide(pending_id, by, approve, reason)  the change, decided (the caller applies an approval first)
      .listing() -> [(PendingChange, state)]

Callers hold the center's configuration lock, so the book and the trail move one write at a time.
"""

from __future__ import annotations

import contextvars
import functools
import importlib.resources
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from quota_center.approvals import APPROVED, DOCUMENT, REJECTED, Pending, PendingChange
from quota_center.guard import Outcome, Proposal, RuleSet, Terms, evaluate, load_rules
from quota_center.store.base import Store
from quota_center.trail import AuditTrail, By, landed
from quota_common.clock import Clock
from quota_common.errors import AlreadyExists, FailedPrecondition, Held
from quota_common.model import Promotion

DEFAULT_PENDING_TTL_S = 24 * 3600.0
FIRED: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("guard_rules_fired", default=())
"""The rules that fired on the change the current call made and let through (a warning, say): set by
`judge` in the caller's own task, so the RPC handler can name them in its answer."""
SHIPPED_RULES = "guard_rules.toml"


@functools.cache
def shipped_rules() -> RuleSet:
    """The rules a center applies when it is given no file (quota_center/guard_rules.toml)."""
    text = (importlib.resources.files("quota_center") / SHIPPED_RULES).read_text()
    return load_rules(text, f"(shipped) {SHIPPED_RULES}")


def terms(promotion: Promotion) -> Terms:
    return Terms(
        promotion.kind.value,
        promotion.budget,
        promotion.start_ms,
        promotion.end_ms,
        len(promotion.regions),
        promotion.face_value,
        promotion.min_spend,
        promotion.discount_bps,
        promotion.max_per_order,
        promotion.per_user_limit,
        promotion.per_user_orders,
    )


class Gate:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        trail: AuditTrail,
        rules: Callable[[], RuleSet],
        pending_ttl_s: float = DEFAULT_PENDING_TTL_S,
    ) -> None:
        self._store = store
        self._clock = clock
        self._trail = trail
        self._rules = rules
        self._ttl_ms = round(pending_ttl_s * 1000)
        self._book = Pending({})

    async def load(self) -> None:
        self._book = Pending.from_document(await self._store.load_document(DOCUMENT))

    def reserved(self, promotion_id: str) -> None:
        held = self._book.holding("CreatePromotion", promotion_id, self._clock.wall_ms())
        if held is not None:
            raise AlreadyExists(f"promotion {promotion_id!r} is waiting for approval as pending change {held.id}")

    async def judge(
        self, call: str, promotion_id: str, proposal: Proposal, request: dict[str, Any], by: By
    ) -> list[str]:
        """What the rules in force say of the change: the findings of an allowed or warned change (for its
        audit record); FailedPrecondition when refused; Held once a held change is booked."""
        rules = self._rules()
        verdict = evaluate(rules, replace(proposal, owner_limit=rules.owner_limit(proposal.actor)))
        findings = [f"{found.rule} ({found.outcome.word}): {found.message}" for found in verdict.fired]
        if verdict.outcome is Outcome.REFUSE:
            raise FailedPrecondition(f"{call} of {promotion_id} refused by the guard rules: {verdict.explain()}")
        if verdict.outcome is not Outcome.HOLD:
            FIRED.set(tuple(found.rule for found in verdict.fired))
            return findings
        now = self._clock.wall_ms()
        asked = PendingChange(
            "", call, promotion_id, request, by.actor, now, now + self._ttl_ms, tuple(findings), rules.digest
        )
        book, held = self._book.hold(asked)
        await self._write(book, by, "HoldForApproval", held)
        raise Held(
            held.id,
            f"{call} of {promotion_id} is held for approval as pending change {held.id}: {verdict.explain()}. "
            f"Nothing of it applies until an approver other than you runs `quota budget approve {held.id}`",
        )

    def decidable(self, pending_id: str, by: By) -> PendingChange:
        decider = "" if by.identity is None else by.identity.uri
        return self._book.decidable(pending_id, decider, self._clock.wall_ms())

    async def decide(self, change: PendingChange, by: By, approved: bool, reason: str) -> PendingChange:
        state = APPROVED if approved else REJECTED
        book = self._book.decided(change, state, by.actor, reason)
        decided = book.changes[change.id]
        await self._write(book, by, "ApprovePending" if approved else "RejectPending", decided)
        return decided

    def listing(self) -> list[tuple[PendingChange, str]]:
        now = self._clock.wall_ms()
        return [(change, change.state_at(now)) for change in self._book.changes.values()]

    async def _write(self, book: Pending, by: By, call: str, change: PendingChange) -> None:
        before = self._book.changes.get(change.id)
        record = self._trail.seal(
            replace(by, request_id=by.request_id or change.id),
            call,
            change.promotion_id,
            None if before is None else _shown(before),
            _shown(change),
        )
        write = self._trail.written(self._store.save_document(DOCUMENT, book.to_document(), record), record)
        await landed(write, self.load)
        self._book = book


def _shown(change: PendingChange) -> dict[str, Any]:
    return {
        "pending_id": change.id,
        "call": change.call,
        "request": change.request,
        "requested_by": change.requested_by,
        "findings": list(change.findings),
        "rules_digest": change.rules_digest,
        "state": change.state,
        "decided_by": change.decided_by,
        "reason": change.reason,
    }
