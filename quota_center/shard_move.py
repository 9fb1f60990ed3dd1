"""Moving a slot of the shard map from one center group to another, as a pure state machine.

    DRAINING ──every region of every promotion of the slot gave back what it held, or its lease ran out──▶
    DRAINED ──the promotion records were copied under the target's prefix (one etcd transaction)──▶
    COPIED ──the map names the target (compare-and-swap on the map's version)──▶ DONE

Who may grant for a promotion of the slot (`standing`):

- before the move, and while DRAINING, DRAINED and COPIED, the **source** owns the slot in the map. While
  DRAINING it grants nothing (`Moving`: grants are refused, reports and returns still land, so regions can
  give back what they hold); from DRAINED on it is sealed: it refuses every call of the slot (`Moving`), so
  the copy it makes is final, and a late report waits to land at the target (counters are cumulative).
- the **target** refuses the slot (`WrongGroup`, naming the source) until the map names it, i.e. DONE.

Why nothing is over-issued: from DRAINING the source's books of the slot only shrink (returns, reports), the
copy is taken after the source stopped granting, and the target starts from that copy, whose
`budget - Σ outstanding` already counts every grant the source ever made; a region whose lease ran out
before giving back keeps its outstanding quota counted as allocated in the copy (never granted twice), and
reports to the target from then on. So at every instant what both groups may still grant together is at
most the budget minus what regions hold: `tests/unit/test_shard_move.py` checks it over random histories.
Draining first is what keeps the copy final: once every region holds nothing, no report sent to the source
after the copy can carry consumption the target does not know of.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace

from quota_common.errors import FailedPrecondition, Moving, WrongGroup
from quota_common.shards import ShardMap


class Phase(enum.Enum):
    DRAINING = "draining"
    DRAINED = "drained"
    COPIED = "copied"
    DONE = "done"


@dataclass(frozen=True)
class Holding:
    """What the source knows of one region's share of one promotion of the moving slot."""

    held: int
    """Unspent quota the region holds, as of its last report (granted - returned - consumed)."""
    lease_active: bool
    """False once the region's lease ran out: it can no longer spend, whatever it held."""

    @property
    def settled(self) -> bool:
        return self.held == 0 or not self.lease_active


@dataclass(frozen=True)
class SlotMove:
    slot: int
    source: str
    target: str
    phase: Phase = Phase.DRAINING

    def __post_init__(self) -> None:
        if self.source == self.target:
            raise ValueError(f"slot {self.slot} moves from {self.source!r} to itself")

    def observe(self, holdings: Mapping[str, Mapping[str, Holding]]) -> SlotMove:
        """After the source's books changed: DRAINED once every region of every promotion of the slot
        (`holdings`: by promotion, by region) settled. Later phases are unaffected."""
        if self.phase is not Phase.DRAINING:
            return self
        if all(holding.settled for regions in holdings.values() for holding in regions.values()):
            return replace(self, phase=Phase.DRAINED)
        return self

    def copied(self) -> SlotMove:
        """The records were written under the target's prefix; only a drained slot may be copied."""
        self._require(Phase.DRAINED, "copy its promotions to the target")
        return replace(self, phase=Phase.COPIED)

    def flip(self, current: ShardMap) -> tuple[SlotMove, ShardMap]:
        """The move done, and the map to compare-and-swap over `current` (the version read)."""
        self._require(Phase.COPIED, "hand it to the target")
        if current.owners[self.slot] != self.source:
            raise FailedPrecondition(
                f"slot {self.slot} is owned by {current.owners[self.slot]!r}, not the source {self.source!r}"
            )
        return replace(self, phase=Phase.DONE), current.with_owner(self.slot, self.target)

    def _require(self, phase: Phase, what: str) -> None:
        if self.phase is not phase:
            raise FailedPrecondition(f"slot {self.slot} is {self.phase.value}: it must be {phase.value} to {what}")


@dataclass(frozen=True)
class Standing:
    """How one group stands to one promotion: whether it serves it at all, and whether it may grant."""

    serves: bool
    grants: bool
    owner: str


def standing(group: str, current: ShardMap, moving: Mapping[int, SlotMove], promotion_id: str) -> Standing:
    slot = current.slot(promotion_id)
    owner = current.owners[slot]
    move = moving.get(slot)
    leaving = move.phase if move is not None and move.source == group else Phase.DONE
    serves = owner == group and leaving in (Phase.DRAINING, Phase.DONE)
    return Standing(serves=serves, grants=serves and leaving is Phase.DONE, owner=owner)


def check(group: str, current: ShardMap, moving: Mapping[int, SlotMove], promotion_id: str, granting: bool) -> None:
    """Raises what a group answers a call about a promotion it may not serve (or grant, when `granting`)."""
    where = standing(group, current, moving, promotion_id)
    if where.owner != group:
        raise WrongGroup.of(promotion_id, where.owner, current.version)
    if not where.serves or (granting and not where.grants):
        target = moving[current.slot(promotion_id)].target
        raise Moving(
            f"promotion {promotion_id!r} is moving to center group {target!r}: no grants until its regions gave"
            " back what they hold and it is handed over; retry shortly"
        )
