"""Keeps the agent's promotion cache current through two independent links, each enough alone:

- push: the center's watch stream, resumed from the cache's revision after any break;
- pull: every `pull_interval_s` (jittered, so a region's agents do not pull in step), the
  changes since the cache's revision: it repairs whatever the stream missed.

What either link brings is written through to the region's Redis tier, if there is one, so an
agent that starts while the center is away serves from the region's copy.

With several center groups the agent runs one `CatalogSync` per group, each with its group's cursor in the
shared cache and its group's copy in the tier, so an agent that starts while one group is away still serves
that group's promotions from what another agent of the region learnt. What a group's catalog carries, that
group serves (`on_served`), which is how the agent follows a promotion handed from one group to another. The
region's copy does not say who serves what: a group's copy may hold a promotion another group serves now (left
from before a move), behind that group's newer entry.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable

from quota_common.clock import Clock
from quota_common.errors import QuotaError
from quota_common.model import Promotion
from quota_common.shards import DEFAULT_GROUP
from region_agent.cache import CacheTier, CatalogSnapshot, PromotionCache
from region_agent.center_port import CenterPort

log = logging.getLogger(__name__)

HEARTBEAT_TIMEOUT_S = 15.0
"""A stream silent this long (the center heartbeats every 5 s) is dead: reconnect."""


class CatalogSync:
    def __init__(
        self,
        cache: PromotionCache,
        center: CenterPort,
        tier: CacheTier | None,
        on_change: Callable[[list[Promotion]], None],
        clock: Clock,
        group: str = DEFAULT_GROUP,
        on_served: Callable[[str, Iterable[str]], None] | None = None,
    ) -> None:
        """`center`: `group`'s port; `on_served`: told which promotions each page of `group` carried."""
        self._cache = cache
        self.group = group
        self._on_served = on_served
        self._center = center
        self._tier = tier
        self._on_change = on_change
        self._clock = clock
        self.stream_alive = False
        self.heard_at: float | None = None
        """Monotonic time the center last answered a pull or sent on the stream; None: never."""

    def staleness_s(self) -> float | None:
        """Seconds since the group last answered a pull or sent on the stream; None: it never did."""
        return None if self.heard_at is None else self._clock.monotonic() - self.heard_at

    async def load_tier(self) -> None:
        """Starts the cache from the region's copy; a cold or unreachable tier is only slower."""
        if self._tier is None:
            return
        try:
            snapshot = await self._tier.load(self.group)
        except QuotaError as error:
            log.warning(
                "the region's promotion cache of group %s could not be read (%s); starting without it",
                self.group,
                error.message,
            )
            return
        self._take(snapshot, from_center=False)
        count, revision = len(snapshot.promotions), snapshot.revision
        log.info("%d promotions from the region's cache of group %s, up to revision %d", count, self.group, revision)

    async def pull(self) -> None:
        """Pulls every change since the cache's revision, page by page."""
        while True:
            since = self._cache.revision_of(self.group)
            page = await self._center.list_changes(since)
            self.heard_at = self._clock.monotonic()
            await self._store(self._take(page.changes), since)
            if not page.more:
                return

    async def pull_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s * random.uniform(0.8, 1.2))
            try:
                await self.pull()
            except QuotaError as error:
                log.warning("promotion pull failed (%s); the cache serves what it has", error.message)

    async def watch_forever(self) -> None:
        backoff = 0.1
        while True:
            since = self._cache.revision_of(self.group)
            try:
                async for page in self._center.watch(since, HEARTBEAT_TIMEOUT_S):
                    self.stream_alive, backoff = True, 0.1
                    self.heard_at = self._clock.monotonic()
                    await self._store(self._take(page.changes), since)
                    since = page.changes.revision
            except QuotaError as error:
                log.info("catalog stream broken (%s); resuming from revision %d", error.message, since)
            self.stream_alive = False
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, 5.0)

    def _take(self, changes: CatalogSnapshot, from_center: bool = True) -> CatalogSnapshot:
        if self._on_served is not None and from_center:  # the region's copy does not say who serves what
            self._on_served(self.group, (promotion.id for promotion in changes.promotions))
        changed = self._cache.apply(changes, self.group)
        if changed:
            self._on_change(changed)
        return changes

    async def _store(self, changes: CatalogSnapshot, since: int) -> None:
        if self._tier is None:
            return
        try:
            if not await self._tier.save(changes, since, self.group):
                # The group's copy missed changes before these (a failed write): give it all the group's entries.
                await self._tier.save(self._cache.snapshot(self.group), 0, self.group)
        except QuotaError as error:
            log.warning("the region's promotion cache was not updated (%s); the next change retries", error.message)
