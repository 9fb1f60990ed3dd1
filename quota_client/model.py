"""What an order service sends and gets back: plain frozen dataclasses, amounts as ints in minor units."""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True)
class Line:
    """One promotion an order spends: `amount` units (or minor units of money) for `user_id`, who benefits."""

    promotion_id: str
    amount: int
    user_id: str
    unit_price: int = 0
    """What one unit of the goods costs before the promotion (minor units); 0: not stated."""
    discount: int = 0
    """What the promotion takes off one unit, at most `unit_price`; checked against the promotion's floor."""


@dataclass(frozen=True)
class RefundLine:
    promotion_id: str
    amount: int


@dataclass(frozen=True)
class Deducted:
    order_key: str
    lines: tuple[Line, ...]
    replayed: bool
    """The order had been deducted before (a retry): nothing changed now."""


@dataclass(frozen=True)
class Reserved:
    order_key: str
    lines: tuple[Line, ...]
    replayed: bool
    expires_at_ms: int
    """Unix ms, by the region's ledger clock, after which the hold lapses unless confirmed."""


@dataclass(frozen=True)
class Confirmed:
    order_key: str
    lines: tuple[Line, ...]
    replayed: bool


@dataclass(frozen=True)
class Cancelled:
    order_key: str
    lines: tuple[Line, ...]
    replayed: bool
    expired: bool
    """The reservation had lapsed at its deadline already; its quota went back then."""


@dataclass(frozen=True)
class Refunded:
    order_key: str
    lines: tuple[RefundLine, ...]
    """What this refund gave back."""
    replayed: bool


class OrderStatus(enum.Enum):
    UNKNOWN = "unknown"
    """This ledger life holds no such order (see OrderState.ledger_life_lost)."""
    DEDUCTED = "deducted"
    RESERVED = "reserved"
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


@dataclass(frozen=True)
class OrderState:
    """What became of an order, read without changing anything."""

    order_key: str
    status: OrderStatus
    lines: tuple[Line, ...]
    reserved_until_ms: int
    """RESERVED: Unix ms, by the ledger's clock."""
    refunded: tuple[RefundLine, ...]
    ledger_life_started_ms: int
    ledger_life_lost: bool
    """An earlier ledger life was lost: an UNKNOWN order placed before `ledger_life_started_ms` may have
    applied there. Reconcile it; do not retry it blindly."""


@dataclass(frozen=True)
class Balance:
    promotion_id: str
    available: int
    granted: int
    returned: int
    deducted: int
    refunded: int
    held: int
    lease_remaining_ms: int
    frozen: bool
    below_floor: int = 0
    """Order lines this agent let through below the promotion's price floor in this ledger life (a floor that
    does not block counts them for the center's alert)."""


@dataclass(frozen=True)
class CenterGroup:
    """One center group as the agent sees it (a deployment of one group has one, "default")."""

    group: str
    catalog_stream_alive: bool
    catalog_revision: int
    """The agent's cache holds every change of this group's catalog up to here (revisions are per group)."""
    catalog_staleness_ms: int | None
    """Since the group last answered a pull or sent on its stream; None: it never did."""
    lease_remaining_ms: int
    """Until the region's lease at the group runs out unless renewed; 0: it ran out, or none was granted."""
    renewals_failing_ms: int
    """Since the first failed renewal of the group's current outage; 0: its last renewal was answered."""
    promotions: int
    """Promotions the agent tracks that the group serves."""


@dataclass(frozen=True)
class RegionStatus:
    """What one agent reports of its region's ledger."""

    region: str
    incarnation: str
    balances: tuple[Balance, ...]
    center_calls: int
    groups: tuple[CenterGroup, ...] = ()
    """Each center group the agent follows, the default group first: which one is unreachable."""
