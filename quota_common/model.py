"""The domain model the center and the agents share: a promotion, an agent's report of what it did with one, and
the emergency switch. Plain values, no I/O; the center's ledger and the agents' caches hold them, the wire and the
stores convert them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

from quota_common.cells import region_of
from quota_common.errors import FailedPrecondition
from quota_common.policy import Pacing
from quota_common.validation import MAX_REGIONS


class Kind(enum.Enum):
    COUNT = "COUNT"
    AMOUNT = "AMOUNT"


@dataclass(frozen=True)
class Promotion:
    id: str
    kind: Kind
    currency: str
    budget: int
    start_ms: int
    end_ms: int
    regions: tuple[str, ...]
    frozen: bool = False
    revision: int = 1
    per_user_limit: int = 0
    """Units per user; 0 is no limit."""
    per_user_orders: int = 0
    """Orders per user; 0 is no limit."""
    pacing: Pacing = Pacing.NONE
    hourly_cap: int = 0
    """With Pacing.HOURLY_CAP, what each hour of the window releases."""
    owner: str = ""
    """Who created it (the creator's SPIFFE ID, set by the center); "" when created without TLS, or
    before owners were recorded."""
    face_value: int = 0
    """What one unit costs the platform, minor units; 0: not stated."""
    min_spend: int = 0
    """The order total a unit needs, minor units; 0: no threshold."""
    discount_bps: int = 0
    """Percentage offers: basis points of the order; 0: none."""
    max_per_order: int = 0
    """Units per order line; 0: no limit."""
    floor_price: int = 0
    """The least one unit may cost the buyer after a line's discount, minor units; 0: none."""
    floor_bps: int = 0
    """The same floor as a share of the line's unit price, basis points; 0: none."""
    block_below_floor: bool = False
    """Refuse a line below the floor; False lets it through, and the center raises an alert."""
    archived: bool = False
    """Ended, settled and put away: never spent again, listed only when asked for."""

    def is_active(self, wall_ms: int) -> bool:
        return self.start_ms <= wall_ms < self.end_ms

    def allows(self, region: str) -> bool:
        """Whether `region` may spend the promotion: it is listed, or (a cell) its region is."""
        return region in self.regions or region_of(region) in self.regions

    def has_ended(self, wall_ms: int) -> bool:
        """Its window is over, or empty (a promotion ended before it started): it is never spent again."""
        return wall_ms >= self.end_ms or self.end_ms <= self.start_ms


@dataclass(frozen=True)
class Report:
    """An agent's cumulative counters for one promotion, since its incarnation began."""

    granted: int
    returned: int
    deducted: int
    refunded: int
    demand_per_minute: int = 0
    below_floor: int = 0
    """Order lines below the promotion's price floor this ledger life (the agent's count, not the ledger's)."""
    available: int | None = None
    """What the ledger would let be spent now, as it decides it; None when the agent did not say."""
    held: int | None = None
    """What reservations hold in the ledger; None when the agent did not say."""


_PROMOTION_FIELDS = tuple(Promotion.__dataclass_fields__)


def promotion_document(promotion: Promotion) -> dict[str, Any]:
    """The promotion as JSON-ready values (the center's store and the regions' cache tier): what
    `dataclasses.asdict` gives (every field is a scalar or a tuple of strings), at a third of its cost."""
    document = {name: getattr(promotion, name) for name in _PROMOTION_FIELDS}
    document["kind"] = promotion.kind.value
    document["pacing"] = promotion.pacing.value
    return document


def promotion_from_document(document: dict[str, Any]) -> Promotion:
    fields = dict(document)
    fields["kind"] = Kind(fields["kind"])
    # Documents written before pacing existed release everything at once.
    fields["pacing"] = Pacing(fields.get("pacing", Pacing.NONE.value))
    fields["regions"] = tuple(fields["regions"])
    return Promotion(**fields)


EMERGENCY_DOCUMENT = "emergency_freeze"


@dataclass(frozen=True)
class EmergencyFreeze:
    """The kill switch above single promotions: everything, or everything in some regions."""

    everywhere: bool = False
    regions: frozenset[str] = field(default_factory=frozenset)
    revision: int = 0

    def covers(self, region: str) -> bool:
        """Whether the switch stops `region`: frozen everywhere, or `region` or, for a cell, its region."""
        if not self.regions:
            return self.everywhere  # the usual case, asked on every order
        return self.everywhere or region in self.regions or region_of(region) in self.regions

    def switched(self, region: str, frozen: bool, revision: int) -> EmergencyFreeze | None:
        """The switch after freezing (or unfreezing) `region`, "" meaning everywhere; None when
        that changes nothing, so a repeated call is not a new revision. Every catalog message
        carries the switch, so it names at most MAX_REGIONS regions."""
        if not region:
            if self.everywhere == frozen:
                return None
            return replace(self, everywhere=frozen, revision=revision)
        if (region in self.regions) == frozen:
            return None
        if frozen and len(self.regions) >= MAX_REGIONS:
            raise FailedPrecondition(
                f"the emergency switch already freezes {len(self.regions)} regions, the most it holds: "
                "unfreeze regions that no longer need it, or freeze every region at once (an empty region)"
            )
        regions = self.regions | {region} if frozen else self.regions - {region}
        return replace(self, regions=frozenset(regions), revision=revision)

    def describe(self) -> str:
        return "every region" if self.everywhere else f"region(s) {', '.join(sorted(self.regions))}"

    def to_document(self) -> dict[str, Any]:
        return {"everywhere": self.everywhere, "regions": sorted(self.regions), "revision": self.revision}

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> EmergencyFreeze:
        return cls(bool(document["everywhere"]), frozenset(document["regions"]), int(document["revision"]))
