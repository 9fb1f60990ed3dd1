"""What an agent is set up with (`AgentSettings`) and the records it answers about itself (a promotion's
status, what became of an order): plain data, shared by the agent, its servers and whoever embeds it."""

from __future__ import annotations

from dataclasses import dataclass, field

from quota_common.policy import RefillSettings
from region_agent.ledger.base import Balance, OrderView


@dataclass(frozen=True)
class AgentSettings:
    region: str
    refill: RefillSettings = field(default_factory=RefillSettings)
    renew_interval_s: float = 3.0
    """How often counters are reported and leases renewed: a third of the center's lease TTL,
    so two renewals may fail before the lease runs out. Freezes travel on the push stream."""
    pull_interval_s: float = 5.0
    """How often the promotion cache pulls changes (anti-entropy; jittered)."""
    push: bool = True
    """Follow the center's watch stream; off, changes arrive by pull and renewal only."""
    opening_lookahead_s: float = 30.0
    """Promotions that start within this get an opening allotment before they start; 0: none."""
    max_wait_s: float = 2.0
    """Longest a deduction waits for a refill; shorter when the call's deadline is nearer."""
    return_on_shutdown: bool = True
    """Give back unspent quota on a graceful stop (right for a ledger that dies with the process)."""
    reservation_ttl_ms: int = 15 * 60_000
    """How long a reservation holds its quota when the caller does not say."""

    @property
    def assumed_lease_ttl_s(self) -> float:
        """The center's lease TTL as the renew interval implies it, until the center states its own."""
        return 3 * self.renew_interval_s


@dataclass(frozen=True)
class PromotionStatus:
    promotion_id: str
    balance: Balance
    lease_remaining_s: float
    frozen: bool
    below_floor: int = 0
    """Order lines this agent saw below the promotion's price floor in this ledger life."""


@dataclass(frozen=True)
class LeaseAtGroup:
    """The region's lease at one center group, as this process knows it."""

    remaining_s: float
    """Until it runs out unless renewed, from the group's last renewal that granted it; 0: it ran out, or the
    group never granted one."""
    renewals_failing_s: float
    """Since the first failed renewal of the group's current outage; 0: its last renewal was answered."""
    promotions: int
    """Promotions tracked that the group serves; a group serving none is not renewed with (no lease)."""


@dataclass(frozen=True)
class GroupStatus:
    """One center group as the agent sees it: its catalog links and the region's lease there."""

    group: str
    stream_alive: bool
    catalog_revision: int
    """The cache holds every change of the group's catalog up to this revision."""
    staleness_s: float | None
    """Since the group last answered a pull or sent on its stream; None: it never did."""
    lease: LeaseAtGroup


@dataclass(frozen=True)
class OrderReport:
    """What became of an order, and the ledger life that answers."""

    order: OrderView | None
    """None: this ledger life holds no order with the key."""
    life_started_ms: int
    """When the answering ledger life began (Unix ms; 0 before the agent joined)."""
    life_lost: bool
    """The region lost an earlier ledger life: an order placed before `life_started_ms` may have gone with it."""
