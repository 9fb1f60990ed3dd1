"""The production store: etcd v3 through etcd3aio (asyncio, typed, maintained).

Key layout, all under one prefix (default `/quota/v1`), ids percent-encoded so a `/` in
an id cannot change a key's meaning:

    {prefix}/promotions/{promotion_id}                     PromotionState document (JSON)
    {prefix}/grants/{promotion_id}/{region}/{request_id}   GrantRecord (JSON)
    {prefix}/documents/{name}                              a named document (JSON)
    {prefix}/audit/{seq, 20 digits}                         an AuditRecord {"body", "hash"} (JSON)

A promotion key's etcd `version` counts its writes since creation: 1 when created, +1 per
commit, exactly like the document's own `version`. So a commit is one transaction that
compares the key's version with the version the writer read (and that the grant's key is new),
and puts the new document and its grant together; a stale writer's transaction fails and writes
nothing. An admin write's
audit record goes in the same transaction, which also requires its key not to exist yet.

A secured etcd (`EtcdAccess`) is reached over TLS, verified with a CA and presenting a client
certificate (etcd's --client-cert-auth), and/or as a user with a password (etcd's RBAC): the
center then needs read and write on the prefix, `etcdctl role grant-permission ROLE readwrite
--prefix=true /quota/v1/`, and nothing else. `connect` checks all of it before the center serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote

import grpc
from etcd3aio import (
    Etcd3Client,
    EtcdError,
    EtcdPermissionDeniedError,
    EtcdUnauthenticatedError,
    SortOrder,
    prefix_range_end,
)
from etcd3aio._protobuf import Compare, RequestOp
from etcd3aio.kv import KVService

from quota_center.audit import AuditRecord
from quota_center.ledger import GrantRecord, PromotionState
from quota_center.store.base import Commit
from quota_common.errors import AlreadyExists, ConfigError, Conflict, NotLeader, Unavailable

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/quota/v1"
_TIMEOUT_S = 5.0
_PAGE = 200
TOKEN_RENEWAL_S = 30.0
"""How often a center logged in as a user asks etcd for a new token: well within etcd's token TTL
(--auth-token-ttl, 300 s by default), and soon after a restarted member forgot a simple token."""
_NEVER = -1
"""A key's version is never negative: a transaction comparing with it takes its failure branch."""


@dataclass(frozen=True)
class EtcdAccess:
    """What a secured etcd asks of its clients; the default asks nothing (plaintext, no user)."""

    ca: bytes | None = None
    """PEM of the CA certificates etcd's certificate is verified against; None: plaintext."""
    cert: bytes | None = None
    """PEM of the client certificate (then any intermediates) presented to etcd; None: none."""
    key: bytes | None = None
    """PEM of its private key."""
    user: str = ""
    """The etcd user to log in as; empty: none (etcd's authentication is off)."""
    password: str = field(default="", repr=False)

    @property
    def options(self) -> str:
        """The settings a person changes when etcd refuses the connection."""
        if self.ca is None:
            return "--store (etcds:// for TLS)"
        return "--etcd-ca, --etcd-cert and --etcd-key (default: --tls-ca, --tls-cert, --tls-key)"


def _endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--store: {endpoint!r} is no etcd endpoint; give HOST:PORT, such as etcd-0.etcd:2379")
    return host.strip("[]"), int(port)


def _ipv4(host: str) -> str | None:
    if host == "localhost":
        return "127.0.0.1"
    with contextlib.suppress(ValueError):
        return str(ipaddress.IPv4Address(host))
    return None


async def _target(endpoints: Sequence[str]) -> str:
    """The gRPC target of the etcd members: `ipv4:` with every address (gRPC balances over them), or
    `dns:///` for a single name, which gRPC resolves again when its addresses stop answering (a
    headless Service naming every member does best). Several names are resolved once, here."""
    addresses = [_endpoint(endpoint) for endpoint in endpoints]
    if len(addresses) == 1 and _ipv4(addresses[0][0]) is None:
        host, port = addresses[0]
        return f"dns:///{f'[{host}]' if ':' in host else host}:{port}"
    resolved: list[str] = []
    loop = asyncio.get_running_loop()
    for host, port in addresses:
        ip = _ipv4(host)
        if ip is not None:
            resolved.append(f"{ip}:{port}")
            continue
        try:
            found = await loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_STREAM)
        except OSError as error:
            log.warning("etcd member %s:%d does not resolve (%s); going on without it", host, port, error)
            continue
        resolved += dict.fromkeys(f"{info[4][0]}:{port}" for info in found)
    if not resolved:
        raise ConfigError(f"no etcd member in --store resolves ({', '.join(endpoints)}); fix --store")
    return f"ipv4:{','.join(resolved)}"


class _Client(Etcd3Client):
    """etcd3aio's client on a gRPC target chosen here: etcd3aio's own takes IPv4 addresses only."""

    def __init__(self, target: str, access: EtcdAccess, server_name: str) -> None:
        tls = access.ca is not None
        super().__init__(
            [target],
            tls_server_name=server_name if tls else None,
            ca_cert=access.ca,
            cert_chain=access.cert if tls else None,
            cert_key=access.key if tls else None,
        )
        self._manager.target = target  # what etcd3aio 0.3's get_channel dials


def _segment(value: str) -> str:
    return quote(value, safe="")


def promotion_key(prefix: str, promotion_id: str) -> str:
    return f"{prefix}/promotions/{_segment(promotion_id)}"


def document_key(prefix: str, name: str) -> str:
    return f"{prefix}/documents/{_segment(name)}"


async def txn_once(kv: KVService, compare: list[Compare], success: list[RequestOp]) -> bool:
    """Whether the transaction's compare held (and its writes were made); Unavailable when etcd did not answer.
    One attempt: a retried transaction whose first answer was lost would fail its own compare. Callers retry
    idempotently (request ids, cumulative counters) instead."""
    try:
        answer = await kv.txn(compare, success, timeout=_TIMEOUT_S, max_attempts=1)
    except EtcdError as error:
        raise Unavailable(f"etcd: {error}") from error
    return bool(answer.succeeded)


class EtcdStore:
    def __init__(self, client: Etcd3Client, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.prefix = prefix.rstrip("/")
        self._fence: tuple[str, int] | None = None
        self._token_renewal: asyncio.Task[None] | None = None

    def fence(self, leader_key: str, token: int) -> None:
        """From now on every write also requires `leader_key` to have been created at
        revision `token`: once this replica's leadership is gone, nothing it sends commits."""
        self._fence = (leader_key, token)

    def _fenced(self, compare: list[Compare]) -> list[Compare]:
        return [*compare, *self.fencing()]

    def fencing(self) -> list[Compare]:
        """What a transaction compares so that it commits only while this replica leads (nothing before `fence`)."""
        if self._fence is None:
            return []
        key, token = self._fence
        return [KVService.txn_compare_create_revision(key, token)]

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
    async def connect(
        cls, endpoints: Sequence[str], prefix: str = DEFAULT_PREFIX, access: EtcdAccess | None = None
    ) -> EtcdStore:
        """A store on etcd that answered a read and would take a write under `prefix`, as `access`'s
        user over its TLS; ConfigError saying what to change when it did not, so a center on a wrong
        address, certificate or password stops at start instead of campaigning forever."""
        access = access or EtcdAccess()
        if not endpoints:
            raise ConfigError("--store names no etcd endpoint; give etcd://HOST:PORT[,HOST:PORT...][/PREFIX]")
        where = ",".join(endpoints)
        client = _Client(await _target(endpoints), access, _endpoint(endpoints[0])[0])
        await client.connect()
        store = cls(client, prefix)
        try:
            if access.user:
                await store._log_in(access, where)
            await store._check_access(access, where)
        except BaseException:
            await store.close()
            raise
        return store

    async def _log_in(self, access: EtcdAccess, where: str) -> None:
        """Logs in as `access.user` and keeps its token fresh until `close`."""
        assert self.client.auth is not None, "connected"
        try:
            answer = await self.client.auth.authenticate(access.user, access.password, timeout=_TIMEOUT_S)
        except (EtcdError, grpc.aio.AioRpcError, TimeoutError) as error:
            if _refused_login(error):
                raise ConfigError(
                    f"etcd at {where} refused user {access.user}: {_detail(error)}; "
                    "fix --etcd-user or --etcd-password-file"
                ) from None
            if not (isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.FAILED_PRECONDITION):
                raise _unreachable(error, access, where) from None
            # "authentication is not enabled": etcd lets anyone in; the user will be needed once it does not.
            log.warning("etcd at %s has authentication off: it does not check --etcd-user %s", where, access.user)
            return
        self.client.set_token(answer.token)
        self._token_renewal = asyncio.create_task(self._renew_token(access))

    async def _renew_token(self, access: EtcdAccess) -> None:
        assert self.client.auth is not None, "connected"
        while True:
            await asyncio.sleep(TOKEN_RENEWAL_S)
            try:
                answer = await self.client.auth.authenticate(access.user, access.password, timeout=_TIMEOUT_S)
            except (EtcdError, grpc.aio.AioRpcError, TimeoutError) as error:
                log.warning("etcd: cannot renew the token of user %s (%s); retrying", access.user, _detail(error))
                continue
            self.client.set_token(answer.token)

    async def _check_access(self, access: EtcdAccess, where: str) -> None:
        """A read of the prefix, and a write to it that cannot happen (its transaction compares with a
        version no key has, and etcd checks the permission of every operation in it first)."""
        probe = f"{self.prefix}/leader"
        user = f"user {access.user}" if access.user else "a client without --etcd-user"
        try:
            await self._kv.get(probe, timeout=_TIMEOUT_S)
            await self._kv.txn(
                [KVService.txn_compare_version(probe, _NEVER)], [KVService.txn_op_put(probe, "")], timeout=_TIMEOUT_S
            )
        except (EtcdUnauthenticatedError, grpc.aio.AioRpcError) as error:
            if not _refused_login(error):
                raise _unreachable(error, access, where) from None
            change = "fix --etcd-user or --etcd-password-file"
            if not access.user:
                change = "give --etcd-user and --etcd-password-file"
            raise ConfigError(f"etcd at {where} refused {user}: {_detail(error)}; {change}") from None
        except EtcdPermissionDeniedError as error:
            # Without a user, etcd takes a client certificate's common name for one: give the user meant.
            login = "" if access.user else "give --etcd-user and --etcd-password-file, or "
            raise ConfigError(
                f"etcd at {where} does not let {user} read and write {self.prefix}/ ({_detail(error)}); {login}grant "
                f"its role readwrite on that prefix (etcdctl role grant-permission ROLE readwrite --prefix=true "
                f"{self.prefix}/), or fix --store's prefix"
            ) from None
        except (EtcdError, TimeoutError) as error:
            raise _unreachable(error, access, where) from None

    @property
    def _kv(self) -> KVService:
        assert self.client.kv is not None, "connected in EtcdStore.connect"
        return self.client.kv

    def _promotion_key(self, promotion_id: str) -> str:
        return promotion_key(self.prefix, promotion_id)

    def _document_key(self, name: str) -> str:
        return document_key(self.prefix, name)

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
        if not await self._txn(compare, [KVService.txn_op_put(key, state.encoded()), audit_put]):
            await self._raise_if_deposed()
            await self._raise_if_audit_taken(audit)
            raise AlreadyExists(f"promotion {state.promotion.id!r} already exists")

    async def commit_many(self, commits: Sequence[Commit], audit: AuditRecord | None = None) -> None:
        compare, puts = [], []
        for state, expected_version, grant in commits:
            key = self._promotion_key(state.promotion.id)
            compare.append(KVService.txn_compare_version(key, expected_version))
            puts.append(KVService.txn_op_put(key, state.encoded()))
            if grant is not None:
                grant_key = self._grant_key(grant.promotion_id, grant.region, grant.request_id)
                compare.append(KVService.txn_compare_create_revision(grant_key, 0))
                puts.append(KVService.txn_op_put(grant_key, json.dumps(asdict(grant))))
        if audit is not None:
            audit_compare, audit_put = self._append(audit)
            compare.append(audit_compare)
            puts.append(audit_put)
        if not await self._txn(self._fenced(compare), puts):
            await self._raise_if_deposed()
            await self._raise_if_audit_taken(audit)
            moved = ", ".join(f"{state.promotion.id}@{expected}" for state, expected, _ in commits)
            raise Conflict(f"a promotion moved past the version read, or a grant's request id is taken ({moved})")

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
        return await txn_once(self._kv, compare, success)

    async def find_grant(self, promotion_id: str, region: str, request_id: str) -> GrantRecord | None:
        record = await self._get_json(self._grant_key(promotion_id, region, request_id))
        return None if record is None else GrantRecord(**record)

    async def close(self) -> None:
        if self._token_renewal is not None:
            self._token_renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._token_renewal
        await self.client.close()


def _detail(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return error.details() or error.code().name
    return str(error) or f"nothing within {_TIMEOUT_S:.0f} s"


def _refused_login(error: BaseException) -> bool:
    """etcd answers a wrong password, and a call without a user when it wants one, INVALID_ARGUMENT."""
    if isinstance(error, EtcdUnauthenticatedError):
        return True
    return isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.INVALID_ARGUMENT


def _unreachable(error: BaseException, access: EtcdAccess, where: str) -> ConfigError:
    """What to change when etcd does not answer, as far as gRPC's words tell what happened."""
    detail = _detail(error)
    if access.ca is None:
        closed = any(sign in detail for sign in ("Socket closed", "reset by peer"))
        change = "if it serves TLS only, use etcds://" if closed else "fix --store"
        return ConfigError(f"etcd at {where} does not answer ({detail}); start it, or {change}")
    if "CERTIFICATE_VERIFY_FAILED" in detail:
        return ConfigError(
            f"etcd at {where} presented a certificate this process does not trust ({detail}); give --etcd-ca "
            "(default: --tls-ca) the CA that signed it, and a certificate naming the host in --store to etcd"
        )
    if "TSI_DATA_CORRUPTED" in detail or "CERTIFICATE_REQUIRED" in detail:
        return ConfigError(
            f"etcd at {where} refused this process's TLS connection ({detail}); it wants a client certificate its "
            "--trusted-ca-file signed: give --etcd-cert and --etcd-key (default: --tls-cert and --tls-key)"
        )
    if "Handshake read failed" in detail or "WRONG_VERSION_NUMBER" in detail:
        return ConfigError(f"etcd at {where} does not speak TLS ({detail}); use etcd://, or give etcd its certificate")
    return ConfigError(
        f"etcd at {where} does not answer over TLS ({detail}); start it, or fix --store, {access.options}"
    )


def _audit_record(key: bytes, value: bytes) -> AuditRecord:
    """The record as stored, unchecked: its seq from its key, so a record moved to another key shows."""
    stored = json.loads(value)
    return AuditRecord(int(key.rsplit(b"/", 1)[1]), str(stored.get("body", "")), str(stored.get("hash", "")))
