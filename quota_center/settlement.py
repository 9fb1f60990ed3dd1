"""Settlement: where a promotion's budget went, and the moment that becomes final. Pure: no I/O, no clock.

A promotion is `open` until its end_time, then `ended`: regions stop spending and give back what they hold
(every renewal reclaims it all), refunds are still honoured (a refund puts quota back in the region's
ledger, which the next renewal gives back too). Once the grace period after its end has passed, the
leading center settles it: the statement of that moment is stored with the promotion and is its answer
from then on, whatever late refunds or reports come in. It settles only after the full grace, even when
every region already holds nothing: a refund can arrive at any time until then, and a region that holds
nothing now may hold a refund's quota a minute later, so an early settlement would strand it.

Every figure is in the promotion's units (coupons, or minor units):

    budget = (issued - refunded) + written_off + stranded + unspent

    issued       deducted by orders, over every ledger life of every region
    refunded     given back by refunds
    written_off  held by ledger lives that were lost (an agent restarted without its ledger)
    stranded     held by regions when it settled: never returned, never spent. Before settlement the same
                 column shows what regions hold now, which would be stranded if it settled then.
    unspent      never spent: not granted, or granted and given back
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

from quota_center.ledger import PromotionState, RegionAccount
from quota_common.clock import iso
from quota_common.errors import FailedPrecondition
from quota_common.model import Promotion

OPEN, ENDED, SETTLED = "open", "ended", "settled"
DEFAULT_GRACE_S = 24 * 3600.0
ARCHIVE = "ArchivePromotion"
"""The one change a settled promotion still takes."""


@dataclass(frozen=True)
class RegionStatement:
    region: str
    granted: int
    returned: int
    issued: int
    refunded: int
    written_off: int
    stranded: int


@dataclass(frozen=True)
class Statement:
    promotion_id: str
    state: str
    """OPEN, ENDED or SETTLED."""
    budget: int
    regions: tuple[RegionStatement, ...]
    ended_at_ms: int
    """The promotion's end; 0 while it is open."""
    settled_at_ms: int = 0
    """When the center settled it; 0 before."""

    @property
    def issued(self) -> int:
        return sum(region.issued for region in self.regions)

    @property
    def refunded(self) -> int:
        return sum(region.refunded for region in self.regions)

    @property
    def written_off(self) -> int:
        return sum(region.written_off for region in self.regions)

    @property
    def stranded(self) -> int:
        return sum(region.stranded for region in self.regions)

    @property
    def unspent(self) -> int:
        return self.budget - (self.issued - self.refunded) - self.written_off - self.stranded

    def to_document(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Statement:
        regions = tuple(RegionStatement(**region) for region in document["regions"])
        return cls(**{**document, "regions": regions})


def settles_at_ms(promotion: Promotion, grace_ms: int) -> int:
    return promotion.end_ms + grace_ms


def statement_of(state: PromotionState, now_ms: int) -> Statement:
    """The stored statement of a settled promotion; else the one its books give now."""
    if state.statement is not None:
        return Statement.from_document(state.statement)
    promotion = state.promotion
    ended = now_ms >= promotion.end_ms
    regions = tuple(
        _region(region, state.accounts.get(region, RegionAccount()))
        for region in sorted(set(state.accounts) | set(promotion.regions))
    )
    return Statement(
        promotion.id, ENDED if ended else OPEN, promotion.budget, regions, promotion.end_ms if ended else 0
    )


def _region(region: str, account: RegionAccount) -> RegionStatement:
    return RegionStatement(
        region=region,
        granted=account.total_granted,
        returned=account.total_returned,
        issued=account.issued,
        refunded=account.total_refunded,
        written_off=account.written_off,
        stranded=account.held,
    )


def due(states: Iterable[PromotionState], now_ms: int, grace_ms: int) -> list[str]:
    """The promotions whose grace has passed and that are not settled yet, by id."""
    return sorted(
        state.promotion.id
        for state in states
        if state.statement is None and now_ms >= settles_at_ms(state.promotion, grace_ms)
    )


def settle(state: PromotionState, now_ms: int, grace_ms: int) -> bool:
    """Stores the final statement in `state` once its grace has passed; whether it did (a settled promotion
    stays as it was settled)."""
    if state.statement is not None or now_ms < settles_at_ms(state.promotion, grace_ms):
        return False
    final = replace(statement_of(state, now_ms), state=SETTLED, settled_at_ms=now_ms)
    state.statement = final.to_document()
    return True


def refuse_if_settled(state: PromotionState, call: str) -> None:
    """A settled promotion's statement is final, so nothing may change what it was settled on."""
    if state.statement is not None and call != ARCHIVE:
        promotion_id = state.promotion.id
        raise FailedPrecondition(
            f"promotion {promotion_id} is settled ({iso(state.statement['settled_at_ms'])}): its statement is "
            f"final and {call} would change what it was settled on; run the sale again as a new promotion"
        )


def archive(state: PromotionState, revision: int, grace_ms: int) -> bool:
    """Puts a settled promotion away at `revision`; whether anything changed (archiving twice does not)."""
    promotion = state.promotion
    if promotion.archived:
        return False
    if state.statement is None:
        raise FailedPrecondition(
            f"promotion {promotion.id} is not settled, so it cannot be archived yet: it ends at "
            f"{iso(promotion.end_ms)} and settles once its grace has passed, at "
            f"{iso(settles_at_ms(promotion, grace_ms))} (within a minute after); quota budget statement "
            f"{promotion.id} shows where it stands"
        )
    state.promotion = replace(promotion, archived=True, revision=revision)
    return True
