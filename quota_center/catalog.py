"""The catalog: every promotion's configuration and the emergency switch, ordered by one revision
counter. Pure: no I/O, no clock.

Every configuration change (a promotion created, its budget changed, frozen or unfrozen, the
emergency switch moved) takes the next catalog revision, and the center commits changes one at
a time in that order. So "every change after revision r" is exactly the promotions whose
revision is above r, and an agent that has applied everything up to r can resume from r
(after a reconnect, or from its region's Redis copy) and miss nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from quota_center.errors import FailedPrecondition
from quota_center.validation import MAX_REGIONS

EMERGENCY_DOCUMENT = "emergency_freeze"


@dataclass(frozen=True)
class EmergencyFreeze:
    """The kill switch above single promotions: everything, or everything in some regions."""

    everywhere: bool = False
    regions: frozenset[str] = field(default_factory=frozenset)
    revision: int = 0

    def covers(self, region: str) -> bool:
        return self.everywhere or region in self.regions

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


class RevisionIndex:
    """Promotion ids in the order of their last configuration change, so the changes after a
    revision are found without scanning every promotion. `record` must be called in increasing
    revision order, which the center's one-at-a-time configuration changes guarantee."""

    def __init__(self) -> None:
        self._revisions: dict[str, int] = {}

    def record(self, promotion_id: str, revision: int) -> None:
        # Re-inserting moves the id to the end: the dict stays sorted by revision.
        self._revisions.pop(promotion_id, None)
        self._revisions[promotion_id] = revision

    def changed_after(self, revision: int) -> Iterator[str]:
        """Ids whose last change is above `revision`, oldest change first."""
        newest_first = []
        for promotion_id in reversed(self._revisions):
            if self._revisions[promotion_id] <= revision:
                break
            newest_first.append(promotion_id)
        return reversed(newest_first)

    def clear(self) -> None:
        self._revisions.clear()
