"""The production store: etcd v3 through etcd3aio (asyncio, typed, maintained).

Key layout, all under one prefix (default `/quota/v1`), ids percent-encoded so a `/` in
an id cannot change a key's meaning:

    {prefix}/promotions/{promotion_id}                     PromotionState document (JSON)
    {prefix}/grants/{promotion_id}/{region}/{request_id}   GrantRecord (JSON)
    {prefix}/documents/{name}                              a named document (JSON)
    {prefix}/audit/{seq, 20 digits}                         an AuditRecord {"body", "hash"} (JSON)

A promotion key's etcd `version` counts its writes since creation: 1 when created, +1 per
commit, exactly like the document's own `version`. So a commit is one transaction that
compares the key's version with the version the writer read, and puts the new document
and its grant together; a stale writer's transaction fails and writes nothing. An admin write's
audit record goes in the same transaction, which also requires its key not to exist yet.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any
from urllib.parse import quote

from etcd3aio import Etcd3Client, EtcdError, SortOrder, prefix_range_end
from etcd3aio._protobuf import Compare, RequestOp
from etcd3aio.kv import KVService

from quota_center.audit import AuditRecord
from quota_center.ledger import GrantRecord, PromotionState
from quota_center.store.base import Commit
from quota_common.errors import AlreadyExists, ConfigError, Conflict, NotLeader, Unavailable

DEFAULT_PREFIX = "/quota/v1"
_TIMEOUT_S = 5.0
_PAGE = 200


def _segment(value: str) -> str:
    return quote(value, safe="")


class EtcdStore:
    def __init__(self, client: Etcd3Client, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.prefix = prefix.rstrip("/")
        self._fence: tuple[str, int] | None = None

    def fence(self, leader_key: str, token: int) -> None:
        """From now on every write also requires `leader_key` to have been created at
        revision `token`: once this replica's leadership is gone, nothing it sends commits."""
        self._fence = (leader_key, token)

    def _fenced(self, compare: list[Compare]) -> list[Compare]:
        if self._fence is None:
            return compare
        key, token = self._fence
        return [*compare, KVService.txn_compare_create_revision(key, token)]

    async def _raise_if_deposed(self) -> None:
        if self._fence is None:
            return
        key, token = self._fence
        try:
            answer = await self._kv.get(key, timeout=_TIMEOUT_S)
        except EtcdError as error:
            raise Unavailable(f"etcd: {error}") from error
        holder = answer.kvs[0] if answer.kvs else None
        if holder is None or holder.create_revision != token:
            raise NotLeader(holder.value.decode() if holder else None)

    @classmethod
    async def connect(cls, endpoints: Sequence[str], prefix: str = DEFAULT_PREFIX) -> EtcdStore:
        """A store on etcd that answered a read; ConfigError naming the endpoints when it did not,
        so a center on a wrong address stops at start instead of campaigning forever."""
        client = Etcd3Client(list(endpoints))
        await client.connect()
        try:
            await client.ping(write_check=False, timeout=_TIMEOUT_S)
        except (EtcdError, TimeoutError) as error:
            await client.close()
            where, detail = ",".join(endpoints), str(error) or f"nothing within {_TIMEOUT_S:.0f} s"
            raise ConfigError(f"etcd at {where} does not answer ({detail}); start it, or fix --store") from None
        return cls(client, prefix)

    @property
    def _kv(self) -> KVService:
        assert self.client.kv is not None, "connected in EtcdStore.connect"
        return self.client.kv

    def _promotion_key(self, promotion_id: str) -> str:
        return f"{self.prefix}/promotions/{_segment(promotion_id)}"

    def _document_key(self, name: str) -> str:
        return f"{self.prefix}/documents/{_segment(name)}"

    def _audit_key(self, seq: int) -> str:
        return f"{self.prefix}/audit/{seq:020d}"

    def _append(self, audit: AuditRecord) -> tuple[Compare, RequestOp]:
        """The compare and the put that add `audit` to a transaction: only where no record is yet."""
        key = self._audit_key(audit.seq)
        value = json.dumps({"body": audit.body, "hash": audit.hash})
        return KVService.txn_compare_create_revision(key, 0), KVService.txn_op_put(key, value)

    async def _raise_if_audit_taken(self, audit: AuditRecord | None) -> None:
        if audit is not None and await self._get_json(self._audit_key(audit.seq)) is not None:
            raise Conflict(f"audit record {audit.seq} was written by another center")

    def _grant_key(self, promotion_id: str, region: str, request_id: str) -> str:
        return f"{self.prefix}/grants/{_segment(promotion_id)}/{_segment(region)}/{_segment(request_id)}"

    async def load_all(self) -> list[PromotionState]:
        """Pages through the promotions, so their number is not bounded by one gRPC message."""
        prefix = f"{self.prefix}/promotions/".encode()
        end, start = prefix_range_end(prefix), prefix
        states: list[PromotionState] = []
        while True:
            try:
                answer = await self._kv.get(start, end, limit=_PAGE, timeout=_TIMEOUT_S)
            except EtcdError as error:
                raise Unavailable(f"etcd: {error}") from error
            states.extend(PromotionState.from_document(json.loads(kv.value)) for kv in answer.kvs)
            if not answer.more:
                return states
            start = answer.kvs[-1].key + b"\0"

    async def _get_json(self, key: str) -> Any:
        """The JSON value at `key`, None if there is none."""
        try:
            answer = await self._kv.get(key, timeout=_TIMEOUT_S)
        except EtcdError as error:
            raise Unavailable(f"etcd: {error}") from error
        return json.loads(answer.kvs[0].value) if answer.kvs else None

    async def load(self, promotion_id: str) -> PromotionState | None:
        document = await self._get_json(self._promotion_key(promotion_id))
        return None if document is None else PromotionState.from_document(document)

    async def create(self, state: PromotionState, audit: AuditRecord) -> None:
        key = self._promotion_key(state.promotion.id)
        audit_compare, audit_put = self._append(audit)
        compare = self._fenced([KVService.txn_compare_create_revision(key, 0), audit_compare])
        if not await self._txn(compare, [KVService.txn_op_put(key, json.dumps(state.to_document())), audit_put]):
            await self._raise_if_deposed()
            await self._raise_if_audit_taken(audit)
            raise AlreadyExists(f"promotion {state.promotion.id!r} already exists")

    async def commit_many(self, commits: Sequence[Commit], audit: AuditRecord | None = None) -> None:
        compare, puts = [], []
        for state, expected_version, grant in commits:
            key = self._promotion_key(state.promotion.id)
            compare.append(KVService.txn_compare_version(key, expected_version))
            puts.append(KVService.txn_op_put(key, json.dumps(state.to_document())))
            if grant is not None:
                grant_key = self._grant_key(grant.promotion_id, grant.region, grant.request_id)
                puts.append(KVService.txn_op_put(grant_key, json.dumps(asdict(grant))))
        if audit is not None:
            audit_compare, audit_put = self._append(audit)
            compare.append(audit_compare)
            puts.append(audit_put)
        if not await self._txn(self._fenced(compare), puts):
            await self._raise_if_deposed()
            await self._raise_if_audit_taken(audit)
            moved = ", ".join(f"{state.promotion.id}@{expected}" for state, expected, _ in commits)
            raise Conflict(f"a promotion moved past the version read ({moved})")

    async def load_document(self, name: str) -> dict[str, Any] | None:
        document = await self._get_json(self._document_key(name))
        return None if document is None else dict(document)

    async def save_document(self, name: str, document: dict[str, Any], audit: AuditRecord | None = None) -> None:
        key = self._document_key(name)
        compare, puts = [], [KVService.txn_op_put(key, json.dumps(document))]
        if audit is not None:
            audit_compare, audit_put = self._append(audit)
            compare.append(audit_compare)
            puts.append(audit_put)
        if not await self._txn(self._fenced(compare), puts):
            await self._raise_if_deposed()
            await self._raise_if_audit_taken(audit)
            raise Unavailable(f"etcd refused the write of {key}; retry")

    async def audit_records(self, after_seq: int = 0, limit: int = 1000) -> list[AuditRecord]:
        start, end = self._audit_key(after_seq + 1), prefix_range_end(f"{self.prefix}/audit/".encode())
        try:
            answer = await self._kv.get(start, end, limit=limit, timeout=_TIMEOUT_S)
        except EtcdError as error:
            raise Unavailable(f"etcd: {error}") from error
        return [_audit_record(kv.key, kv.value) for kv in answer.kvs]

    async def audit_head(self) -> AuditRecord | None:
        prefix = f"{self.prefix}/audit/".encode()
        try:
            answer = await self._kv.get(
                prefix, prefix_range_end(prefix), limit=1, sort_order=SortOrder.DESCEND, timeout=_TIMEOUT_S
            )
        except EtcdError as error:
            raise Unavailable(f"etcd: {error}") from error
        return _audit_record(answer.kvs[0].key, answer.kvs[0].value) if answer.kvs else None

    async def _txn(self, compare: list[Compare], success: list[RequestOp]) -> bool:
        try:
            # One attempt: a retried transaction whose first answer was lost would fail its own
            # compare. Callers retry idempotently (request ids, cumulative counters) instead.
            answer = await self._kv.txn(compare, success, timeout=_TIMEOUT_S, max_attempts=1)
        except EtcdError as error:
            raise Unavailable(f"etcd: {error}") from error
        return bool(answer.succeeded)

    async def find_grant(self, promotion_id: str, region: str, request_id: str) -> GrantRecord | None:
        record = await self._get_json(self._grant_key(promotion_id, region, request_id))
        return None if record is None else GrantRecord(**record)

    async def close(self) -> None:
        await self.client.close()


def _audit_record(key: bytes, value: bytes) -> AuditRecord:
    """The record as stored, unchecked: its seq from its key, so a record moved to another key shows."""
    stored = json.loads(value)
    return AuditRecord(int(key.rsplit(b"/", 1)[1]), str(stored.get("body", "")), str(stored.get("hash", "")))
