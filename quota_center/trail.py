"""The center's side of the audit trail: who makes an admin write, the record it gets, and its head.

    By(identity, request_id)                  who makes a write (None: plaintext on loopback)
    AuditTrail(store, clock)
      .load()                                 the head, read from the store when this center leads
      .seal(by, call, promotion_id, before, after, guard) -> AuditRecord   the next record, chained to the head
      .written(write, record)                 awaits the store write carrying it; the record then heads
                                              the trail, and a failed write reads the head again

The records' chain is `quota_center.audit`'s; the store writes each in the same transaction as its
change. The center calls `seal` and `written` under its configuration lock, one write at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from quota_center.audit import PLAINTEXT_ACTOR, AuditRecord, Change, seal
from quota_center.store.base import Store
from quota_common.clock import Clock
from quota_common.errors import Conflict, Unavailable
from quota_common.identity import Identity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class By:
    """Who makes an admin write, for its audit record and the owner check."""

    identity: Identity | None = None
    """From the caller's certificate; None without TLS (plaintext on loopback)."""
    request_id: str = ""
    """The caller's id for this change; the trail makes one when it is empty."""
    job: str = ""
    """A job of the center acting on its own (the alert engine freezing a promotion), named as the actor in
    place of a person; it has no identity, so no owner check applies to it."""

    @property
    def actor(self) -> str:
        if self.job:
            return self.job
        return PLAINTEXT_ACTOR if self.identity is None else self.identity.uri


async def landed(write: Awaitable[None], reload: Callable[[], Awaitable[None]]) -> None:
    """Awaits a store write of a document the caller keeps in memory, shielded, and calls `reload` after a
    failure: a write whose caller gave up, or whose answer was lost, may have landed, and the next one must
    not write over what the store holds."""
    try:
        await asyncio.shield(write)
    except BaseException:
        with contextlib.suppress(Exception):
            await reload()
        raise


class AuditTrail:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._head: AuditRecord | None = None

    async def load(self) -> None:
        self._head = await self._store.audit_head()

    def seal(
        self,
        by: By,
        call: str,
        promotion_id: str,
        before: dict[str, Any] | None,
        after: dict[str, Any],
        guard: Sequence[str] = (),
    ) -> AuditRecord:
        request_id = by.request_id or uuid.uuid4().hex
        change = Change(by.actor, call, request_id, promotion_id, before, after, tuple(guard))
        return seal(self._head, change, self._clock.wall_ms())

    async def written(self, write: Awaitable[None], record: AuditRecord) -> None:
        """Awaits a store write carrying `record`, which then heads the trail. A record whose seq was taken
        means another center wrote since this one read the head: Unavailable, and the caller may retry."""
        try:
            await write
        except Conflict:
            self._head = await self._store.audit_head()
            raise Unavailable("the audit trail moved: another center wrote to the store; retry the call") from None
        except BaseException:
            # A write whose answer was lost (etcd) may have landed with its record: read what heads the trail.
            with contextlib.suppress(Exception):
                self._head = await self._store.audit_head()
            raise
        self._head = record
        fields = record.fields()
        log.info(
            "audit record %d, hash %s: %s by %s on %s",
            record.seq,
            record.hash,
            fields["call"],
            fields["actor"],
            fields["promotion_id"] or "the emergency switch",
        )
