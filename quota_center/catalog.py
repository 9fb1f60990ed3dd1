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
