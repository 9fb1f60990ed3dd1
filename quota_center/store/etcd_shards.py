"""The shard map in etcd, and the copy of a slot's promotions from one group's prefix to another's.

    {base}/shards/map                 {"version", "owners": [group by slot], "moving": {slot: target group}}
    {base}/shards/audit/{version}     who changed the map, when, and what changed (written with it)
    {base}/promotions/...             the default group's store (where a one-group deployment keeps it)
    {base}/groups/{group}/...         any other group's store and election (`group_prefix`)

`base` is the prefix of the centers' --store URL (default `/quota/v1`).

The map key's etcd `version` (its write count) equals the map's `version`, so replacing it is one
transaction comparing the key's version with the version read: of two writers, one wins. No key: the
implicit one-group map, version 0.

A copied promotion replaces whatever the target's prefix holds of it (an earlier copy of a hand-over retried
after a crash, or what the target kept from a time it owned the slot before: nobody writes there while the
target does not own the slot); its document `version` restarts at 1, the new key's write count, which the
target's compare-and-swap relies on.

Every group issues and checks ledger incarnations under one key, the default group's
(`{base}/documents/incarnation_key`): `share_incarnation_key` creates it if no group did yet and copies it
under the group's prefix before the group's leader loads it, so an agent's one incarnation is good at every
group, and one no group issued (forged) is refused by all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
from etcd3aio import EtcdError, prefix_range_end
from etcd3aio._protobuf import Compare, RequestOp
from etcd3aio.kv import KVService

from quota_center.issuer import KEY_DOCUMENT
from quota_center.ledger import PromotionState
from quota_center.store.etcd import DEFAULT_PREFIX, EtcdStore, document_key, promotion_key, txn_once
from quota_common.errors import NotLeader, Unavailable
from quota_common.shards import DEFAULT_GROUP, ShardMap, check_group_name, moves

log = logging.getLogger(__name__)

_TIMEOUT_S = 5.0
_PAGE = 200
REWATCH_S = 1.0
"""After a watch broke or ended, how long before the map is read and watched again."""
_DELETE = 1
"""etcd's event type of a deleted key (mvccpb.Event.DELETE)."""


def shards_key(base: str = DEFAULT_PREFIX) -> str:
    return f"{base.rstrip('/')}/shards/map"


def group_prefix(group: str, base: str = DEFAULT_PREFIX) -> str:
    """Where a group keeps its store: the default group where a one-group deployment always has."""
    return base if group == DEFAULT_GROUP else f"{base.rstrip('/')}/groups/{check_group_name(group)}"


@dataclass(frozen=True)
class Layout:
    """The map and the slots being handed over (slot: target group); both change under one version."""

    shard_map: ShardMap
    moving: dict[int, str] = field(default_factory=dict)

    def to_document(self) -> bytes:
        document = json.loads(self.shard_map.to_document())
        document["moving"] = {str(slot): target for slot, target in sorted(self.moving.items())}
        return json.dumps(document, separators=(",", ":")).encode()

    @classmethod
    def from_document(cls, document: bytes) -> Layout:
        try:
            moving = {int(slot): check_group_name(str(t)) for slot, t in json.loads(document).get("moving", {}).items()}
        except (ValueError, AttributeError) as error:
            raise ValueError(f"stored shard map is unreadable: {error}") from error
        return cls(ShardMap.from_document(document), moving)

    def next(self, owners: Sequence[str] | None = None, moving: dict[int, str] | None = None) -> Layout:
        """The layout one version on."""
        shard_map = ShardMap(self.shard_map.version + 1, tuple(owners or self.shard_map.owners))
        return Layout(shard_map, self.moving if moving is None else moving)


def change_record(before: Layout, after: Layout, actor: str, at_ms: int) -> dict[str, Any]:
    """An audit record of one change of the map: what changed, not the maps (a migration writes one per slot)."""
    return {
        "version": after.shard_map.version,
        "actor": actor,
        "at_ms": at_ms,
        "owners": {str(slot): list(pair) for slot, pair in moves(before.shard_map, after.shard_map).items()},
        "planned": {str(slot): target for slot, target in after.moving.items() if slot not in before.moving},
        "done": sorted(slot for slot in before.moving if slot not in after.moving),
    }


class EtcdShards:
    def __init__(self, store: EtcdStore, key: str) -> None:
        """`key`: where the map is (`shards_key`); its audit records sit beside it."""
        self._store = store
        self._key = key
        self._audit = key.rpartition("/")[0] + "/audit"

    @property
    def _kv(self) -> KVService:
        kv = self._store.client.kv
        assert kv is not None, "connected in EtcdStore.connect"
        return kv

    async def read(self, group: str = DEFAULT_GROUP) -> Layout:
        """The layout as stored; with none stored, `group`'s implicit one-group map."""
        try:
            answer = await self._kv.get(self._key, timeout=_TIMEOUT_S)
        except EtcdError as error:
            raise Unavailable(f"etcd: {error}") from error
        if not answer.kvs:
            return Layout(ShardMap.single(group))
        return Layout.from_document(answer.kvs[0].value)

    async def watch(self, group: str = DEFAULT_GROUP) -> AsyncGenerator[Layout, None]:
        """The layout as stored, then each one written after it, as it is written: read at a revision, then
        watched from the next one. When changes may have been missed (compacted away before the watch reached
        them, or the watch broke or ended), the map is read again and watched from there, `REWATCH_S` later.
        etcd3aio sends no require-leader metadata, so a watch on a partitioned member may stall silently: the
        follower reads the map at every step as well (`ShardFollower.step`)."""
        watcher = self._store.client.watch
        assert watcher is not None, "connected in EtcdStore.connect"
        while True:
            try:
                answer = await self._kv.get(self._key, timeout=_TIMEOUT_S)
                yield Layout.from_document(answer.kvs[0].value) if answer.kvs else Layout(ShardMap.single(group))
                async for response in watcher.watch(self._key, start_revision=answer.header.revision + 1):
                    if response.compact_revision > 0 or response.canceled:
                        break
                    for event in response.events:
                        deleted = event.type == _DELETE
                        yield Layout(ShardMap.single(group)) if deleted else Layout.from_document(event.kv.value)
                log.info("watch of the shard map ended; reading it again in %.0f s", REWATCH_S)
            except (EtcdError, grpc.aio.AioRpcError) as error:
                log.warning("watch of the shard map broken (%s); reading it again in %.0f s", error, REWATCH_S)
            await asyncio.sleep(REWATCH_S)  # an ended stream as much as a broken one: never a tight loop

    async def replace(self, before: Layout, after: Layout, actor: str) -> bool:
        """Stores `after` if the map is still `before`; False if another writer changed it first."""
        if after.shard_map.version != before.shard_map.version + 1:
            raise ValueError("a new layout is the next version of the one it replaces")
        record = change_record(before, after, actor, int(time.time() * 1000))  # a stamp, not lease arithmetic
        audit_key = f"{self._audit}/{after.shard_map.version:020d}"
        # Fenced when a group's leader flips a slot: a deposed one's late flip changes nothing.
        compare = [KVService.txn_compare_version(self._key, before.shard_map.version), *self._store.fencing()]
        puts = [
            KVService.txn_op_put(self._key, after.to_document()),
            KVService.txn_op_put(audit_key, json.dumps(record)),
        ]
        return await self._txn(compare, puts)

    async def audit(self) -> list[dict[str, Any]]:
        """Every change of the map, oldest first (`change_record`), read a page at a time."""
        prefix = f"{self._audit}/".encode()
        start, end = prefix, prefix_range_end(prefix)
        records: list[dict[str, Any]] = []
        while True:
            try:
                answer = await self._kv.get(start, end, limit=_PAGE, timeout=_TIMEOUT_S)
            except EtcdError as error:
                raise Unavailable(f"etcd: {error}") from error
            records.extend(json.loads(kv.value) for kv in answer.kvs)
            if not answer.more:
                return records
            start = answer.kvs[-1].key + b"\0"

    async def copy(self, states: Sequence[PromotionState], target_prefix: str) -> None:
        """Writes each promotion under `target_prefix` as a new key (version 1)."""
        for state in states:
            key = promotion_key(target_prefix.rstrip("/"), state.promotion.id)
            document = json.dumps(replace(state.copy(), version=1).to_document())
            # Create it if absent, else delete what is there and create it again: etcd takes one operation per
            # key in a transaction, and a put over a key would not restart its version. Both fenced: a deposed
            # leader's late copy must not overwrite what the target serves after a newer leader's hand-over.
            fence = self._store.fencing()
            while not await self._txn(
                [*fence, KVService.txn_compare_create_revision(key, 0)], [KVService.txn_op_put(key, document)]
            ):
                if not await self._txn(fence, [KVService.txn_op_delete(key)]):
                    raise NotLeader(None)

    async def share_incarnation_key(self, group: str, base: str = DEFAULT_PREFIX) -> None:
        """Makes `group`'s incarnation key the deployment's (the default group's), creating that one if no
        group has yet: created only where absent, so of two groups starting at once one key wins."""
        shared = document_key(base.rstrip("/"), KEY_DOCUMENT)
        made = json.dumps({"key": secrets.token_hex(32)})
        await self._txn([KVService.txn_compare_create_revision(shared, 0)], [KVService.txn_op_put(shared, made)])
        try:
            answer = await self._kv.get(shared, timeout=_TIMEOUT_S)
        except EtcdError as error:
            raise Unavailable(f"etcd: {error}") from error
        own = document_key(group_prefix(group, base).rstrip("/"), KEY_DOCUMENT)
        if own != shared and not await self._txn(
            self._store.fencing(), [KVService.txn_op_put(own, answer.kvs[0].value)]
        ):
            raise NotLeader(None)

    async def _txn(self, compare: list[Compare], success: list[RequestOp]) -> bool:
        return await txn_once(self._kv, compare, success)
