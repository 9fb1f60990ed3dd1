"""Where ledger incarnations come from: the center issues them (Allocation/Join), under a key every
replica shares through the store, so no caller can invent one (`quota_common.incarnation`).

    IncarnationIssuer(store, clock)
      .load()                          the key, made by the first center that leads
      .issue(region, known) -> str     a new life of `region`, newer than every one in `known`
      .require(region, incarnation)    the incarnation if it was issued to `region`; InvalidArgument if not
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from quota_center.store.base import Store
from quota_common.clock import Clock
from quota_common.errors import InvalidArgument
from quota_common.incarnation import issue_incarnation, issued_with, started_ns

KEY_DOCUMENT = "incarnation_key"
"""The store document holding the key, shared by every replica."""


class IncarnationIssuer:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._key = b""
        self._last_issued_ns = 0

    async def load(self) -> None:
        """Only the leader writes to the store (etcd fences the others), so two replicas never make two keys."""
        document = await self._store.load_document(KEY_DOCUMENT)
        if document is None:
            document = {"key": secrets.token_hex(32)}
            await self._store.save_document(KEY_DOCUMENT, document)
        self._key = bytes.fromhex(str(document["key"]))

    def issue(self, region: str, known: Iterable[str]) -> str:
        """A life that sorts after each of `known` (the region's lives this center saw), whatever this
        host's clock says. Noise goes on top of the floor: two replicas that lead one after the other know
        only the lives they saw admitted and may start from the same one; with up to a millisecond of
        noise, two joins of one region still get two lives whatever clocks and failovers did."""
        floor = max(
            self._clock.wall_ms() * 1_000_000, self._last_issued_ns + 1, *(started_ns(life) + 1 for life in known)
        )
        self._last_issued_ns = floor + secrets.randbelow(1_000_000)
        return issue_incarnation(self._last_issued_ns, region, self._key)

    def require(self, region: str, incarnation: str) -> str:
        if not issued_with(incarnation, region, self._key):
            raise InvalidArgument(
                f"agent.incarnation {incarnation} was not issued to region {region} by this deployment's center: "
                "an agent joins with Allocation.Join and uses the incarnation it answers (its ledger keeps it); "
                "a ledger from before incarnations were issued starts a new life (see the README, Security)"
            )
        return incarnation
