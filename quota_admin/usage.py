"""What the center says of a promotion's spending, as plain data: the numbers `quota budget usage` prints and
the console's pages show, read from the same answer the same way so that the two never disagree."""

from __future__ import annotations

from dataclasses import dataclass

from quota_center.v1 import quota_center_pb2 as pb
from quota_center.wire import promotion_from_pb
from quota_common.model import Promotion


@dataclass(frozen=True)
class RegionSpend:
    region: str
    granted: int
    spent: int
    """Net of refunds, as the region last reported."""
    returned: int
    held: int
    written_off: int
    lease_state: str
    """none (never held quota), active, or expired (the region stopped spending)."""
    burn_per_minute: int


@dataclass(frozen=True)
class UsageReport:
    promotion: Promotion
    unallocated: int
    regions: list[RegionSpend]

    @property
    def spent(self) -> int:
        return sum(region.spent for region in self.regions)

    @property
    def burn_per_minute(self) -> int:
        return sum(region.burn_per_minute for region in self.regions)


def usage_from_pb(message: pb.Usage) -> UsageReport:
    """Every region the promotion allows, in its order (the center lists only those that ever held quota), then
    those removed from it that the center still keeps an account of (what they hold goes back)."""
    promotion = promotion_from_pb(message.promotion)
    reported = {usage.region: usage for usage in message.regions}
    regions = []
    for region in [*promotion.regions, *(region for region in reported if region not in promotion.regions)]:
        usage = reported.get(region, pb.RegionUsage(region=region, lease_state=pb.LEASE_STATE_NONE))
        regions.append(
            RegionSpend(
                region=region,
                granted=usage.granted,
                spent=usage.consumed,
                returned=usage.returned,
                held=usage.held,
                written_off=usage.written_off,
                lease_state=pb.LeaseState.Name(usage.lease_state).removeprefix("LEASE_STATE_").lower(),
                burn_per_minute=usage.demand_per_minute,
            )
        )
    return UsageReport(promotion, message.unallocated, regions)
