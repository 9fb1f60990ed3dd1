"""Whether a region may spend an order's promotions now: pure checks, no I/O, on what the agent tracks.

`check_spendable` and `check_order_limit` raise the refusal an order service reads (its reason, the
promotion, a message saying what to do). `plainly_spendable` decides in one pass that none of them, nor
the price floor, has anything to say: every order to an open promotion comes that way, and in place between
gRPC's C calls a call per check costs the agent more than its decisions do.
"""

from __future__ import annotations

from quota_common.clock import iso
from quota_common.errors import Rejected, RejectReason
from quota_common.model import EmergencyFreeze, Promotion
from region_agent.ledger.base import Line
from region_agent.supply_core import Tracked


def plainly_spendable(region: str, tracked: list[Tracked], lines: tuple[Line, ...], now: float, wall_ms: int) -> bool:
    """True only when `check_spendable` and `check_order_limit` pass for every line and no promotion has a
    price floor (`floor.below_floor` finds nothing), given that the agent is not retired and no emergency
    freeze covers `region`. False decides nothing: the checks then say what, if anything, is wrong.
    `now` is monotonic, `wall_ms` the wall clock; `tracked` match `lines` one to one."""
    for item, line in zip(tracked, lines, strict=True):
        promotion = item.promotion
        if not (
            region in promotion.regions
            and not (promotion.archived or promotion.frozen)
            and promotion.start_ms <= wall_ms < promotion.end_ms
            and now < item.lease_until
            and promotion.floor_price <= 0
            and promotion.floor_bps <= 0
            and (not promotion.max_per_order or line.amount <= promotion.max_per_order)
            and line.amount <= promotion.budget
        ):
            return False
    return True


def check_spendable(
    item: Tracked, region: str, retired: str, emergency: EmergencyFreeze, now: float, wall_ms: int
) -> None:
    """Raises why `region` may not spend the promotion now. `retired`: why the center retired this agent ("" if
    it did not); `now` monotonic, `wall_ms` the wall clock."""
    promotion = item.promotion
    if retired:
        raise Rejected(
            RejectReason.LEASE_EXPIRED,
            f"{retired}; it spends nothing more: send orders to the region's other agents",
            promotion.id,
        )
    if not promotion.allows(region):
        raise Rejected(
            RejectReason.REGION_NOT_ALLOWED,
            f"promotion {promotion.id} may not be spent in region {region} (allowed: {', '.join(promotion.regions)})",
            promotion.id,
        )
    if promotion.archived:
        raise Rejected(RejectReason.NOT_ACTIVE, f"promotion {promotion.id} is settled and archived", promotion.id)
    if promotion.frozen:
        raise Rejected(RejectReason.FROZEN, f"promotion {promotion.id} is frozen by its budget owner", promotion.id)
    if emergency.covers(region):
        raise Rejected(
            RejectReason.FROZEN,
            f"the emergency freeze covers {emergency.describe()}: no promotion is spent until it is lifted",
            promotion.id,
        )
    if not promotion.is_active(wall_ms):
        raise Rejected(
            RejectReason.NOT_ACTIVE,
            f"promotion {promotion.id} runs from {iso(promotion.start_ms)} until {iso(promotion.end_ms)}; "
            f"it is now {iso(wall_ms)}",
            promotion.id,
        )
    if now >= item.lease_until:
        raise Rejected(
            RejectReason.LEASE_EXPIRED,
            f"region {region} could not renew its lease on promotion {promotion.id} with the center; it spends "
            "nothing until the center is reachable",
            promotion.id,
        )


def check_order_limit(promotion: Promotion, line: Line) -> None:
    """A line may take at most the promotion's `max_per_order` units, and never more than its whole budget:
    checked here, with no center call. A line beyond the budget can never be served, and asking the center
    for it would pull everything the other regions have not taken into this one, for an order refused all
    the same, and size this region's refills by a demand that is not there."""
    if promotion.max_per_order and line.amount > promotion.max_per_order:
        raise Rejected(
            RejectReason.OVER_ORDER_LIMIT,
            f"the line asks {line.amount} units of promotion {promotion.id}, which allows at most "
            f"{promotion.max_per_order} in one order",
            promotion.id,
        )
    if line.amount > promotion.budget:
        raise Rejected(
            RejectReason.OVER_ORDER_LIMIT,
            f"the line asks {line.amount} units of promotion {promotion.id}, more than its whole budget "
            f"({promotion.budget}): no order can take that much",
            promotion.id,
        )
