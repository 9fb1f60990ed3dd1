"""The center's decisions over one promotion's state: pure, like the ledger and the policy.

`Center` runs these under the promotion's lock and commits the result; the simulator and
the property tests run the very same functions without a store.
"""

from __future__ import annotations

from collections.abc import Mapping

from quota_center import ledger
from quota_center.ledger import GrantRecord, PromotionState
from quota_common import policy
from quota_common.clock import iso
from quota_common.errors import Exhausted, FailedPrecondition


def grant(
    state: PromotionState,
    region: str,
    incarnation: str,
    asked: int,
    ids: tuple[str, str],
    demands: Mapping[str, int],
    horizon_s: float,
    now_ms: int,
) -> GrantRecord:
    """Admits the region's incarnation, sizes a grant with the policy and books it in `state`.

    `ids` is (grant id, request id); `demands` maps each region to its measured demand
    (units per minute), the asking one included. Grants never exceed what the promotion's
    pacing has released by `now_ms`. Raises Exhausted when nothing is left to grant now."""
    ledger.check_region(state.promotion, region)
    ledger.admit(state, region, incarnation)
    promotion = state.promotion
    if promotion.frozen:
        raise FailedPrecondition(f"promotion {promotion.id} is frozen; no quota is granted")
    if promotion.has_ended(now_ms):
        raise FailedPrecondition(f"promotion {promotion.id} ended at {iso(promotion.end_ms)}; no quota is granted")
    grantable = state.grantable(now_ms)
    size = policy.grant_amount(
        asked=asked,
        unallocated=grantable,
        demand_per_minute=demands.get(region, 0),
        total_demand_per_minute=sum(demands.values()),
        horizon_s=horizon_s,
    )
    if size == 0 and state.unallocated > 0:
        raise Exhausted(
            f"promotion {promotion.id} is paced ({promotion.pacing.value}): what is released so far is "
            "allocated; more is released as its window goes on"
        )
    if size == 0:
        raise Exhausted(
            f"promotion {promotion.id} has nothing left to grant (budget {promotion.budget}, all of it allocated)"
        )
    grant_id, request_id = ids
    record = GrantRecord(grant_id, request_id, promotion.id, region, incarnation, size, asked)
    ledger.grant(state, record)
    return record


def reclaim(state: PromotionState, region: str, demands: Mapping[str, int], horizon_s: float, now_ms: int) -> int:
    """What the region should give back: everything when the region may not spend it now or again (frozen,
    ended, or the region removed from it), else the policy's reclaim.
    Measured against what the center can grant now: under pacing, budget not yet released
    cannot serve the regions that lack quota, so it must not stop idle quota coming back."""
    held = state.accounts[region].held
    promotion = state.promotion
    if promotion.frozen or promotion.has_ended(now_ms) or not promotion.allows(region):
        return held
    others = sum(demand for other, demand in demands.items() if other != region)
    return policy.reclaim_amount(held, demands.get(region, 0), others, state.grantable(now_ms), horizon_s)
