"""The shard map: which center group serves which promotion.

A promotion belongs to one slot, `slot_of(id)`, a stable hash of its id (the same in every process and
release: blake2b, not Python's salted `hash`) modulo the map's slot count; each slot is owned by one group.
The map is versioned: every change bumps `version`, and a writer replaces it only by compare-and-swap on
the version it read, so two operators resizing at once cannot both win. With one group (SQLite, the demo)
the map is implicit: `ShardMap.single()`, every slot owned by the default group.

A group refuses a promotion of another group's slot with `errors.WrongGroup`, naming the owner and the
version of the map it judged by, so a router whose map is older learns it is stale, re-reads, and retries.

Resizing (`rebalance`) moves as few slots as possible: a group keeps its slots up to its fair share, and
only the surplus of over-full groups moves to the groups below theirs. Which slots move, from whom to whom,
is `moves(old, new)`; the migration of each moving slot is `quota_center.shard_move`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass

SLOTS = 1024
"""Slots of a new map: enough that groups stay even within 0.1%, few enough to store as one document."""
DEFAULT_GROUP = "default"
"""The one group of a deployment that never configured groups (its store prefix is the historical one)."""
_GROUP_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


def slot_of(promotion_id: str, slots: int = SLOTS) -> int:
    digest = hashlib.blake2b(promotion_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % slots


def center_groups(addresses: list[str]) -> dict[str, list[str]]:
    """By group, its replicas' addresses, the default group first: `NAME=host:port` starts a group, a bare
    address joins the last one (so a list without names is the default group's, as it always was)."""
    groups: dict[str, list[str]] = {}
    group = DEFAULT_GROUP
    for entry in addresses:
        name, _, address = entry.rpartition("=")
        group = check_group_name(name) if name else group
        groups.setdefault(group, []).append(address)
    return dict(sorted(groups.items(), key=lambda item: item[0] != DEFAULT_GROUP))


def check_group_name(name: str) -> str:
    """A group names an etcd prefix, a StatefulSet and a metric label: lower-case letters, digits, dashes."""
    if not _GROUP_NAME.match(name):
        raise ValueError(f"group name {name!r}: use 1 to 32 lower-case letters, digits or dashes, not first a dash")
    return name


@dataclass(frozen=True)
class ShardMap:
    version: int
    owners: tuple[str, ...]
    """By slot: the group that owns it."""

    def __post_init__(self) -> None:
        if self.version < 0:
            raise ValueError(f"shard map version {self.version} is negative")
        if not self.owners:
            raise ValueError("a shard map needs at least one slot")
        for name in set(self.owners):
            check_group_name(name)

    @classmethod
    def single(cls, group: str = DEFAULT_GROUP, slots: int = SLOTS) -> ShardMap:
        """The implicit map of a deployment with one group (version 0: never stored)."""
        return cls(0, (group,) * slots)

    @classmethod
    def even(cls, groups: list[str], version: int = 1, slots: int = SLOTS) -> ShardMap:
        """A fresh map spreading the slots over `groups` in turn."""
        _check_groups(groups)
        return cls(version, tuple(groups[slot % len(groups)] for slot in range(slots)))

    @property
    def slots(self) -> int:
        return len(self.owners)

    @property
    def groups(self) -> list[str]:
        """Every group that owns a slot, sorted."""
        return sorted(set(self.owners))

    def owner_of(self, promotion_id: str) -> str:
        return self.owners[slot_of(promotion_id, self.slots)]

    def slot(self, promotion_id: str) -> int:
        return slot_of(promotion_id, self.slots)

    def slots_of(self, group: str) -> list[int]:
        return [slot for slot, owner in enumerate(self.owners) if owner == group]

    def with_owner(self, slot: int, group: str) -> ShardMap:
        """The map after one slot changed hands (the last step of its migration): the next version."""
        owners = list(self.owners)
        owners[slot] = check_group_name(group)
        return ShardMap(self.version + 1, tuple(owners))

    def to_document(self) -> bytes:
        return json.dumps({"version": self.version, "owners": list(self.owners)}, separators=(",", ":")).encode()

    @classmethod
    def from_document(cls, document: bytes) -> ShardMap:
        try:
            data = json.loads(document)
            return cls(int(data["version"]), tuple(str(owner) for owner in data["owners"]))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"stored shard map is unreadable: {error}") from error


def _check_groups(groups: list[str]) -> None:
    if not groups or len(set(groups)) != len(groups):
        raise ValueError(f"groups {groups!r}: name at least one, each once")
    for name in groups:
        check_group_name(name)


def rebalance(current: ShardMap, groups: list[str]) -> ShardMap:
    """The map with `groups` as its owners, moving the fewest slots from `current`: every group ends with
    `slots // n` or one more, and a slot changes hands only if its owner had more than its share (or left).
    Deterministic, so the operator can preview exactly what `quota shards resize` will move."""
    _check_groups(groups)
    share, extra = divmod(current.slots, len(groups))
    # The first `extra` groups (sorted) may keep one slot more than the share.
    quota = {group: share + (1 if index < extra else 0) for index, group in enumerate(sorted(groups))}
    kept: Counter[str] = Counter()
    owners: list[str | None] = []
    for owner in current.owners:
        if owner in quota and kept[owner] < quota[owner]:
            kept[owner] += 1
            owners.append(owner)
        else:
            owners.append(None)
    needing = [group for group in sorted(groups) for _ in range(quota[group] - kept[group])]
    free = iter(needing)
    return ShardMap(current.version + 1, tuple(owner if owner is not None else next(free) for owner in owners))


def moves(old: ShardMap, new: ShardMap) -> dict[int, tuple[str, str]]:
    """By slot: (source group, target group) of every slot that changes hands."""
    if old.slots != new.slots:
        raise ValueError(f"maps of {old.slots} and {new.slots} slots cannot be compared; slots never change")
    return {slot: (a, b) for slot, (a, b) in enumerate(zip(old.owners, new.owners, strict=True)) if a != b}


class Router:
    """Where a client sends a call about a promotion: the owner by the map it last read. A refusal judged by a
    newer map (`learn`) names the owner to retry at, and tells the client to re-read the map; one judged by a
    map no newer than the client's came from a group that has not caught up yet (a slot just handed to it):
    the client retries the same group shortly."""

    def __init__(self, shard_map: ShardMap) -> None:
        self.shard_map = shard_map
        self._told: dict[str, str] = {}
        """By promotion: the owner a refusal named, until a newer map is read."""

    def route(self, promotion_id: str) -> str:
        return self._told.get(promotion_id) or self.shard_map.owner_of(promotion_id)

    def learn(self, promotion_id: str, owner: str, map_version: int) -> bool:
        """After a WrongGroup: True when the client should re-read the map (the group judged by a newer one)."""
        if map_version <= self.shard_map.version:
            return False
        self._told[promotion_id] = owner
        return True

    def update(self, shard_map: ShardMap) -> None:
        if shard_map.version >= self.shard_map.version:
            self.shard_map, self._told = shard_map, {}
