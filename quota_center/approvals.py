"""Changes held by a guard rule until a second person approves them. Pure: the center keeps the book in
one store document and writes it, with the audit record of each step, under its configuration lock.

    PendingChange      a held create or budget change: what was asked, by whom, why it was held, until when
    Pending            the book: hold, decide (approve or reject), list; refusing what may not be decided
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from quota_common.errors import FailedPrecondition, NotFound, PermissionDenied

DOCUMENT = "pending_changes"
"""The store document holding the book."""
HELD, APPROVED, REJECTED = "held", "approved", "rejected"
KEEP = 1000
"""Decided and expired changes kept for the listing; the oldest go first."""
MAX_HELD = 1000
"""Changes that may wait at once: the book is one store document (etcd takes values up to 1.5 MiB), so a
flood of held changes is refused rather than grown past what the store holds."""


@dataclass(frozen=True)
class PendingChange:
    id: str
    call: str
    """"CreatePromotion" or "SetBudget"."""
    promotion_id: str
    request: dict[str, Any]
    """For a create, the promotion document; for a budget change, {"budget", "expected_revision"}."""
    requested_by: str
    requested_at_ms: int
    expires_at_ms: int
    findings: tuple[str, ...]
    """Each rule that held it: "name (outcome): message"."""
    rules_digest: str
    state: str = HELD
    decided_by: str = ""
    reason: str = ""

    def state_at(self, now_ms: int) -> str:
        return "expired" if self.state == HELD and now_ms >= self.expires_at_ms else self.state


@dataclass
class Pending:
    changes: dict[str, PendingChange]
    next_number: int = 1

    @classmethod
    def from_document(cls, document: dict[str, Any] | None) -> Pending:
        if document is None:
            return cls({})
        changes = {
            change["id"]: PendingChange(**{**change, "findings": tuple(change["findings"])})
            for change in document["changes"]
        }
        return cls(changes, int(document["next_number"]))

    def to_document(self) -> dict[str, Any]:
        return {"next_number": self.next_number, "changes": [asdict(change) for change in self.changes.values()]}

    def hold(self, change: PendingChange) -> tuple[Pending, PendingChange]:
        """A copy with `change` added under the next id (the one given is replaced), and the change as added."""
        waiting = sum(1 for pending in self.changes.values() if pending.state == HELD)
        if waiting >= MAX_HELD:
            raise FailedPrecondition(
                f"{waiting} changes wait for approval already, the most the book holds: approve or reject some "
                "(quota budget pending lists them), or let them expire"
            )
        book = Pending(dict(self.changes), self.next_number + 1)
        held = replace(change, id=f"P-{self.next_number}")
        book.changes[held.id] = held
        book._trim()
        return book, held

    def holding(self, call: str, promotion_id: str, now_ms: int) -> PendingChange | None:
        """A create waiting for approval reserves its promotion id."""
        return next(
            (
                change
                for change in self.changes.values()
                if change.call == call and change.promotion_id == promotion_id and change.state_at(now_ms) == HELD
            ),
            None,
        )

    def decidable(self, pending_id: str, decider: str, now_ms: int) -> PendingChange:
        """The change `decider` may approve or reject now: held, not expired, and asked by someone else."""
        change = self.changes.get(pending_id)
        if change is None:
            raise NotFound(f"no pending change {pending_id!r}; quota budget pending lists them")
        state = change.state_at(now_ms)
        if state != HELD:
            raise FailedPrecondition(f"pending change {pending_id} is {state}: only a held change can be decided")
        if not decider:
            raise PermissionDenied(
                "approving or rejecting needs an identity: call with an approver's certificate (mutual TLS)"
            )
        if decider == change.requested_by:
            raise PermissionDenied(
                f"{decider} asked for pending change {pending_id}, so may not decide it: a second person must"
            )
        return change

    def decided(self, change: PendingChange, state: str, decider: str, reason: str) -> Pending:
        book = Pending(dict(self.changes), self.next_number)
        book.changes[change.id] = replace(change, state=state, decided_by=decider, reason=reason)
        return book

    def _trim(self) -> None:
        settled = [key for key, change in self.changes.items() if change.state != HELD]
        for key in settled[: max(0, len(self.changes) - KEEP)]:
            del self.changes[key]
