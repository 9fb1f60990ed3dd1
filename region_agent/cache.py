"""The agent's promotion cache: what it knows of every promotion its region may spend. Pure.

Two links feed it (the center's push stream and a periodic pull), and it may start from the
region's Redis copy. Entries only move forward: a promotion is replaced only by a higher
revision, so a late or repeated message can never bring back an older configuration.
`revision` is the cursor: everything the center changed up to it is here, so either link
resumes from it and misses nothing. With several center groups each has its catalog, its cursor and its
emergency switch (`revision_of`, the group named in `apply`); a promotion is served by one group at a time, and
the group it moves to gives it a revision above the one it had, so its entries compare across groups: the
entry of the group that serves it now wins over any copy its former group's catalog left behind. Each entry
belongs to the group whose catalog (or copy) brought it, and a group's `snapshot` holds only its own entries: what
the agent writes to that group's copy in the region's Redis, so no copy fills with the other groups' promotions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from quota_common.model import EmergencyFreeze, Promotion
from quota_common.shards import DEFAULT_GROUP


@dataclass(frozen=True)
class CatalogSnapshot:
    """A consistent view: every change up to `revision`."""

    promotions: Sequence[Promotion] = ()
    emergency: EmergencyFreeze = field(default_factory=EmergencyFreeze)
    revision: int = 0


class CacheTier(Protocol):
    """The region's shared copy of the cache (Redis), read when an agent starts: one copy per center group,
    each with its group's cursor and emergency switch."""

    async def load(self, group: str = DEFAULT_GROUP) -> CatalogSnapshot:
        """`group`'s copy: its promotions, its switch, and its cursor (0 for a group never stored)."""
        ...

    async def save(self, changes: CatalogSnapshot, since: int, group: str = DEFAULT_GROUP) -> bool:
        """Stores changes of `group`'s catalog in its copy (newer entries win) and moves that copy's cursor
        to `changes.revision` if they continue from where it stands (its cursor is at least `since`). False
        when they do not: the caller then saves its whole cache from 0."""
        ...


class PromotionCache:
    def __init__(self) -> None:
        self._revisions: dict[str, int] = {}
        self._emergencies: dict[str, EmergencyFreeze] = {}
        self._in_force = EmergencyFreeze()
        self._promotions: dict[str, Promotion] = {}
        self._groups: dict[str, str] = {}
        """By promotion: the group whose catalog (or copy) carried the entry held, if one did yet."""

    def __len__(self) -> int:
        return len(self._promotions)

    @property
    def revision(self) -> int:
        """The default group's cursor (the only one of a deployment of one group)."""
        return self.revision_of(DEFAULT_GROUP)

    def revision_of(self, group: str) -> int:
        return self._revisions.get(group, 0)

    @property
    def emergency(self) -> EmergencyFreeze:
        """The switch in force: with several groups, whatever any of them freezes (each group's switch is set
        by the same command; until all have it, the strictest stands). Every order reads it: it is worked out
        when a switch changes, not here."""
        return self._in_force

    def get(self, promotion_id: str) -> Promotion | None:
        return self._promotions.get(promotion_id)

    def snapshot(self, group: str = DEFAULT_GROUP) -> CatalogSnapshot:
        """`group`'s promotions, its switch and its cursor. An entry is the group's whose catalog (or copy)
        brought it: a promotion that moved is the group's whose newer entry the agent holds; one fetched by
        itself (`put`) stays with the group of the entry it replaced, or is the first group's to carry it."""
        switch = self._emergencies.get(group, EmergencyFreeze())
        own = [promotion for pid, promotion in self._promotions.items() if self._groups.get(pid) == group]
        return CatalogSnapshot(own, switch, self.revision_of(group))

    def apply(self, changes: CatalogSnapshot, group: str = DEFAULT_GROUP) -> list[Promotion]:
        """Takes in a consistent set of changes of `group`'s catalog (a page of either link, or the tier's
        copy) and moves its cursor to it; returns the promotions that changed."""
        changed = self.put(changes.promotions)
        for promotion in changes.promotions:  # the entry held is this one, or was fetched and is no group's yet
            if self._promotions[promotion.id].revision == promotion.revision or promotion.id not in self._groups:
                self._groups[promotion.id] = group
        self.take_emergency(changes.emergency, group)
        self._revisions[group] = max(self.revision_of(group), changes.revision)
        return changed

    def take_emergency(self, emergency: EmergencyFreeze, group: str = DEFAULT_GROUP) -> bool:
        """Takes `group`'s switch from any link (a renewal carries it too) if it is newer than the one held;
        it does not move the cursor. Returns whether it did."""
        if emergency.revision <= self._emergencies.get(group, EmergencyFreeze()).revision:
            return False
        self._emergencies[group] = emergency
        self._in_force = _strictest(list(self._emergencies.values()))
        return True

    def put(self, promotions: Iterable[Promotion]) -> list[Promotion]:
        """Takes in promotions fetched one by one: they do not move the cursor."""
        changed = []
        for promotion in promotions:
            known = self._promotions.get(promotion.id)
            if known is None or promotion.revision > known.revision:
                self._promotions[promotion.id] = promotion
                changed.append(promotion)
        return changed

    def starting(self, after_ms: int, until_ms: int) -> list[Promotion]:
        """Promotions that open in (after_ms, until_ms]."""
        return [p for p in self._promotions.values() if after_ms < p.start_ms <= until_ms]


def _strictest(switches: list[EmergencyFreeze]) -> EmergencyFreeze:
    if len(switches) == 1:
        return switches[0]
    return EmergencyFreeze(
        any(switch.everywhere for switch in switches),
        frozenset().union(*(switch.regions for switch in switches)),
        max(switch.revision for switch in switches),
    )
