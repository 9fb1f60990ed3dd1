"""A promotion's life after it is created: changed (UpdatePromotion) and ended early (EndPromotion). Pure: no
I/O; the time is the caller's.

What UpdatePromotion may change is what a budget owner gets wrong or wants to adjust during a sale: the window,
the regions, the per-user limits, the values and the price floor. Budget and freezing have calls of their own;
what a promotion is (id, kind, currency, pacing, owner) never changes: that is a new promotion.

The window rules a budget owner can rely on:

- an ended promotion (its end passed, or it was ended) is not changed or reopened: create a new one;
- once sales opened, the start stays where it is (pacing counts from it, and orders were taken under it);
- a start that has not come yet may move, but not into the past: a sale never opens retroactively;
- a new end lies in the future (to stop now, end the promotion) and after the start.

Each change is one catalog revision. A region removed from a promotion keeps an account (an empty one if it
never held quota), so it hears of the change, and of every later one, and gives back what it holds; an added
region takes quota as any other. A frozen promotion may be changed (freeze, fix, unfreeze); an archived one
refuses everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from quota_center import ledger
from quota_center.ledger import PromotionState
from quota_common.clock import iso
from quota_common.errors import FailedPrecondition, InvalidArgument
from quota_common.model import Promotion
from quota_common.validation import quoted

UPDATABLE = {
    "start_time": "start_ms",
    "end_time": "end_ms",
    "regions": "regions",
    "per_user_limit": "per_user_limit",
    "per_user_orders": "per_user_orders",
    "face_value": "face_value",
    "min_spend": "min_spend",
    "discount_bps": "discount_bps",
    "max_per_order": "max_per_order",
    "floor_price": "floor_price",
    "floor_bps": "floor_bps",
    "block_below_floor": "block_below_floor",
}
"""The fields of Promotion (wire names) UpdatePromotion changes, with the model's name of each."""

_ELSEWHERE = {
    "budget": "SetBudget (quota budget set-budget)",
    "frozen": "SetFrozen (quota budget freeze / unfreeze)",
    "archived": "ArchivePromotion (quota budget archive)",
    "revision": "none: the center sets it; pass the revision you read as expected_revision",
}
_FIXED = ("id", "kind", "currency", "pacing", "hourly_cap", "owner")


@dataclass(frozen=True)
class Update:
    """An UpdatePromotion as the center applies it (and the book of pending changes keeps it)."""

    changes: dict[str, Any]
    """Model attribute -> its new value, for the fields the mask named."""
    expected_revision: int

    def to_request(self) -> dict[str, Any]:
        changes = {name: list(value) if isinstance(value, tuple) else value for name, value in self.changes.items()}
        return {"changes": changes, "expected_revision": self.expected_revision}

    @classmethod
    def from_request(cls, request: dict[str, Any]) -> Update:
        changes = request["changes"]
        values = {name: tuple(value) if isinstance(value, list) else value for name, value in changes.items()}
        return cls(values, int(request["expected_revision"]))


def masked_fields(paths: Sequence[str]) -> tuple[str, ...]:
    """The model attributes an update mask names; InvalidArgument for an empty mask, a field named twice, or a
    field UpdatePromotion does not change (naming the call that does, where there is one)."""
    allowed = ", ".join(UPDATABLE)
    if not paths:
        raise InvalidArgument(f"update_mask names no field: name the fields to change, of {allowed}")
    fields = []
    for path in paths:
        if path in _ELSEWHERE:
            raise InvalidArgument(
                f"update_mask names {path}, which UpdatePromotion does not change; use {_ELSEWHERE[path]}"
            )
        if path in _FIXED:
            raise InvalidArgument(
                f"update_mask names {path}, which never changes after creation: create a new promotion instead"
            )
        if path not in UPDATABLE:
            raise InvalidArgument(f"update_mask names {quoted(path)}, not a field UpdatePromotion changes ({allowed})")
        if UPDATABLE[path] in fields:
            raise InvalidArgument(f"update_mask names {path} twice")
        fields.append(UPDATABLE[path])
    return tuple(fields)


def update(state: PromotionState, change: Update, revision: int, now_ms: int) -> bool:
    """Applies `change` as catalog revision `revision`; False when it changes nothing (no new revision).
    Raises, changing nothing, when the change breaks a rule (see the module docstring)."""
    before = state.promotion
    check_changeable(before, now_ms)
    ledger.check_revision(before, change.expected_revision)
    after = replace(before, **change.changes)
    if after == before:
        return False
    _check_window(before, after, now_ms)  # first: "the start of a running sale stays" says more than "end after start"
    ledger.check_new_promotion(after)
    for removed in set(before.regions) - set(after.regions):
        state.account(removed)
    state.promotion = replace(after, revision=revision)
    return True


def end(state: PromotionState, revision: int, now_ms: int) -> bool:
    """Ends the promotion at `now_ms`, or at its start when it has not started (an empty window); False when it
    has ended already, so ending twice is not a new revision."""
    promotion = state.promotion
    _check_not_archived(promotion)
    if promotion.has_ended(now_ms):
        return False
    state.promotion = replace(promotion, end_ms=max(now_ms, promotion.start_ms), revision=revision)
    return True


def _check_not_archived(promotion: Promotion) -> None:
    if promotion.archived:
        raise FailedPrecondition(f"promotion {promotion.id} is archived: it never changes again")


def check_changeable(promotion: Promotion, now_ms: int) -> None:
    _check_not_archived(promotion)
    if promotion.has_ended(now_ms):
        raise FailedPrecondition(
            f"promotion {promotion.id} ended at {iso(promotion.end_ms)}: an ended promotion is not changed or "
            "reopened; create a new one"
        )


def _check_window(before: Promotion, after: Promotion, now_ms: int) -> None:
    if after.start_ms != before.start_ms:
        if before.start_ms <= now_ms:
            raise FailedPrecondition(
                f"promotion {before.id} opened at {iso(before.start_ms)}: the start of a running sale stays "
                "where it is (pacing counts from it); change the end, or end it and create a new one"
            )
        if after.start_ms < now_ms:
            raise FailedPrecondition(
                f"start_time {iso(after.start_ms)} is in the past (it is now {iso(now_ms)}): a sale does not "
                "open retroactively; give a start from now on"
            )
    if after.end_ms != before.end_ms and after.end_ms <= now_ms:
        raise FailedPrecondition(
            f"end_time {iso(after.end_ms)} is not in the future (it is now {iso(now_ms)}): to stop the sale now, "
            "end the promotion (quota budget end)"
        )
