"""The center groups an agent talks to: one `CenterPort` per group, and which group serves each promotion.

A deployment of several center groups (`quota_common.shards`) gives the agent every group's replicas
(`--center default=h1:50051,g1=h2:50051`). The agent holds no etcd credentials, so it does not read the shard
map itself; it learns where each promotion is served from the groups, as the budget CLI does:

- each group's catalog (stream and pull) carries only the promotions that group serves now (`served`): a
  promotion handed to another group arrives on the new owner's catalog as it takes over;
- a group refuses a promotion it does not serve with `WrongGroup`, naming the owner and the version of the map
  it judged by (`told`): a refusal judged by a map no older than the one that last placed the promotion moves it,
  an older one (a group that has not caught up with a hand-over) does not, and the call is retried there later.

A promotion the agent has heard nothing of is asked of the first group (the default group); its refusal names
the owner. With one group (`CenterGroups.one`) every call goes to that group's port unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from typing import TypeVar

from quota_common.errors import Unavailable, WrongGroup
from quota_common.shards import DEFAULT_GROUP
from region_agent.center_port import CenterPort
from region_agent.ledger.base import Joined

T = TypeVar("T")


class Owners:
    """Where the agent sends each promotion's calls. Pure: no I/O."""

    def __init__(self, groups: Iterable[str]) -> None:
        self.groups = list(groups)
        if not self.groups:
            raise ValueError("an agent needs at least one center group")
        self._owner: dict[str, tuple[str, int]] = {}
        """By promotion: the group that serves it as last heard, and the map version that said so (0: a catalog)."""

    def owner(self, promotion_id: str) -> str:
        return self._owner.get(promotion_id, (self.groups[0], 0))[0]

    def served(self, group: str, promotion_ids: Iterable[str]) -> None:
        """`group`'s catalog carried these promotions: it serves them now (the version placing them stands)."""
        for promotion_id in promotion_ids:
            _, version = self._owner.get(promotion_id, ("", 0))
            self._owner[promotion_id] = (group, version)

    def told(self, promotion_id: str, owner: str, map_version: int) -> bool:
        """After a WrongGroup refusal: whether it moved the promotion to `owner` (so the call goes there now).
        One judged by an older map than the one that last placed it comes from a group that has not caught up."""
        current, version = self._owner.get(promotion_id, (self.groups[0], 0))
        if map_version < version or owner == current:
            return False
        self._owner[promotion_id] = (owner, map_version)
        return True

    def of(self, group: str, promotion_ids: Iterable[str]) -> list[str]:
        """Those of `promotion_ids` that `group` serves, as far as the agent knows."""
        return [promotion_id for promotion_id in promotion_ids if self.owner(promotion_id) == group]


class CenterGroups:
    def __init__(self, ports: Mapping[str, CenterPort]) -> None:
        """`ports`: by group, in the order a promotion the agent knows nothing of is asked (the default first)."""
        self.ports = dict(ports)
        self.owners = Owners(self.ports)

    @classmethod
    def one(cls, port: CenterPort) -> CenterGroups:
        """A deployment of one group: every call goes to `port`."""
        return cls({DEFAULT_GROUP: port})

    @property
    def names(self) -> list[str]:
        return self.owners.groups

    @property
    def calls(self) -> int:
        return sum(port.calls for port in self.ports.values())

    @property
    def fetches(self) -> int:
        return sum(port.fetches for port in self.ports.values())

    def port(self, group: str) -> CenterPort:
        return self.ports[group]

    async def call(self, promotion_id: str, send: Callable[[CenterPort], Awaitable[T]]) -> T:
        """`send` to the group serving the promotion, following refusals that name another owner (each group
        at most once: the groups move a promotion one hand-over at a time). A refusal that does not move the
        promotion is retried at its owner as known now when another call moved it meanwhile; only one judged by
        an older map than the one that placed it at the refusing group means that group has not caught up."""
        for _ in self.ports:
            group = self.owners.owner(promotion_id)
            try:
                return await send(self.ports[group])
            except WrongGroup as refusal:
                if refusal.owner not in self.ports:
                    raise Unavailable(
                        f"promotion {promotion_id!r} is served by center group {refusal.owner!r}, which this agent "
                        f"does not reach: name its replicas in --center, as {refusal.owner}=HOST:PORT"
                    ) from refusal
                moved = self.owners.told(promotion_id, refusal.owner, refusal.map_version)
                if not moved and self.owners.owner(promotion_id) == group:
                    raise Unavailable(
                        f"promotion {promotion_id!r} was just handed to center group {group!r}, which has not "
                        "taken it over yet; retry shortly"
                    ) from refusal
        raise Unavailable(f"the center groups kept handing promotion {promotion_id!r} on; retry shortly")

    async def join(self, replaces: str) -> Joined:
        """A new ledger life, issued by the first group that answers: every group of a deployment issues and
        checks lives under one key, so the life is good at all of them.

        A group knows only the earlier lives that held its own promotions, so with several groups an earlier
        life is assumed: an order key of a lost life then reads LEDGER_LIFE_LOST (reconcile it), never unknown
        (which a caller would retry as a new order, deducting it twice)."""
        last: Unavailable | None = None
        for port in self.ports.values():
            try:
                joined = await port.join(replaces)
                return joined if len(self.ports) == 1 else replace(joined, after_earlier_life=True)
            except Unavailable as error:
                last = error
        assert last is not None, "at least one group"
        raise last

    async def close(self) -> None:
        for port in self.ports.values():
            await port.close()
