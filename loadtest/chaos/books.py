"""The final books, read after healing, and the verdict the checker returns.

Plain dataclasses, no protobuf: the workload step converts the center's usage and the agents' status into
these, and tests build them by hand.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from region_agent.ledger.base import UNLIMITED, UserLimit


@dataclass(frozen=True)
class RegionBooks:
    """One region's books for one promotion, read after healing and after every agent was stopped gracefully."""

    consumed: int = 0
    """Net: deducted minus refunded."""
    kept: int = 0
    """What the region's ledger still holds after its agents stopped: its open reservations and, on a ledger that
    outlives its agents (Redis), its unspent allotment too. The center must count exactly this as held."""
    granted: int = 0
    returned: int = 0
    written_off: int = 0
    outstanding: int = 0
    """The center's `held` for the region (granted - returned - consumed - written_off; not the center ledger's
    own `outstanding`, which counts consumed quota too), read after every agent stopped and reported."""


@dataclass(frozen=True)
class PromotionBooks:
    budget: int
    user_limit: UserLimit = UNLIMITED
    """Per user, per region: users are homed in one region, so each region enforces it alone."""
    regions: Mapping[str, RegionBooks] = field(default_factory=dict)


Books = Mapping[str, PromotionBooks]
"""By promotion id."""


class ViolationKind(enum.StrEnum):
    OVER_ISSUE = "over_issue"
    LOST_ACKNOWLEDGEMENT = "lost_acknowledgement"
    PHANTOM_CONSUMPTION = "phantom_consumption"
    TWO_ANSWERS = "two_answers"
    APPLIED_TWICE = "applied_twice"
    UNRESOLVED_UNKNOWN = "unresolved_unknown"
    AFTER_FREEZE = "after_freeze"
    USER_LIMIT = "user_limit"
    OVER_REFUND = "over_refund"
    HELD_AFTER_RETURN = "held_after_return"


@dataclass(frozen=True)
class Violation:
    kind: ViolationKind
    operations: tuple[int, ...]
    message: str


@dataclass(frozen=True)
class Verdict:
    violations: tuple[Violation, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.violations

    def counts(self) -> dict[str, int]:
        """Every kind, zeros included, so a JSON summary always has the same keys."""
        found = Counter(violation.kind for violation in self.violations)
        return {kind.value: found[kind] for kind in ViolationKind}
