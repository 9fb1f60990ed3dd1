"""Who may write, when the center runs as several replicas on etcd (a center on SQLite is a
single node and simply leads). `EtcdLeadership` campaigns for one key under the store's
prefix, tied to an etcd lease kept alive while the process lives:

    {prefix}/leader = the leader's gRPC address, attached to its lease

The key's create revision is the leader's **fencing token**: every store write compares it,
so a leader that was paused past its lease and still believes it leads cannot commit
anything once another replica has won (see `EtcdStore.fence`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import grpc
from etcd3aio import Etcd3Client, EtcdError
from etcd3aio.kv import KVService

log = logging.getLogger(__name__)

OnElected = Callable[[int], Awaitable[None]]
"""Called with the fencing token once this replica leads; it rebuilds state before serving."""
OnDeposed = Callable[[], Awaitable[None]]


class EtcdLeadership:
    def __init__(self, client: Etcd3Client, prefix: str, address: str, ttl_s: int = 5) -> None:
        self._client = client
        self.key = f"{prefix.rstrip('/')}/leader"
        self._address = address
        self._ttl = ttl_s
        self._leader: str | None = None
        self._lease_id = 0
        self._valid_until = 0.0

    def leader_address(self) -> str | None:
        """Where the leader serves, as far as this replica knows; None when unknown."""
        return self._leader

    def leading(self) -> bool:
        """True while this replica holds the leader key on a lease it can still trust: the
        lease's TTL, counted from when its last renewal was *sent*, has not run out."""
        return time.monotonic() < self._valid_until

    async def run(self, on_elected: OnElected, on_deposed: OnDeposed) -> None:
        """Campaigns for ever: `on_elected` when this replica wins, `on_deposed` when it loses."""
        assert self._client.kv is not None
        assert self._client.lease is not None
        while True:
            try:
                sent = time.monotonic()
                self._lease_id = int((await self._client.lease.grant(self._ttl, timeout=self._ttl)).ID)
                won, fence = await self._campaign(self._lease_id)
                if won:
                    self._valid_until = sent + self._ttl
                    self._leader = self._address
                    log.info("elected leader with fencing token %d", fence)
                    keeping = asyncio.create_task(self._keep_alive(self._lease_id))
                    try:
                        await on_elected(fence)
                        await keeping
                    finally:
                        keeping.cancel()
                        self._valid_until = 0.0
                        log.warning("leadership lost")
                        await on_deposed()
            except (EtcdError, grpc.aio.AioRpcError) as error:
                log.warning("election: %s", error)
            except Exception:
                log.exception("election round failed; campaigning again")
            await self.resign()
            await asyncio.sleep(self._ttl / 5)

    async def resign(self) -> None:
        """Gives the leader key up at once (on shutdown), instead of letting its lease run out."""
        self._valid_until = 0.0
        lease_id, self._lease_id = self._lease_id, 0
        if lease_id and self._client.lease is not None:
            # An expired lease answers NOT_FOUND, which etcd3aio raises as the raw gRPC error.
            with contextlib.suppress(EtcdError, grpc.aio.AioRpcError):
                await self._client.lease.revoke(lease_id, timeout=1)

    async def _campaign(self, lease_id: int) -> tuple[bool, int]:
        """One attempt: take the key if nobody holds it, else learn who does. A campaign whose
        answer was lost and that etcd3aio retried finds its own key, on its own lease: a win."""
        assert self._client.kv is not None
        answer = await self._client.kv.txn(
            [KVService.txn_compare_create_revision(self.key, 0)],
            [KVService.txn_op_put(self.key, self._address, lease=lease_id)],
            [KVService.txn_op_get(self.key)],
            timeout=self._ttl,
        )
        if answer.succeeded:
            return True, int(answer.header.revision)
        holders = answer.responses[0].response_range.kvs
        if holders and holders[0].lease == lease_id:
            return True, int(holders[0].create_revision)
        self._leader = holders[0].value.decode() if holders else None
        return False, 0

    async def _keep_alive(self, lease_id: int) -> None:
        """Renews the lease until it can no longer be trusted, then returns."""
        assert self._client.lease is not None
        while self.leading():
            await asyncio.sleep(min(self._ttl / 4, max(0.0, self._valid_until - time.monotonic())))
            sent = time.monotonic()
            stream = self._client.lease.keep_alive(lease_id)
            try:
                async with asyncio.timeout(max(0.05, self._valid_until - sent)):
                    async for response in stream:
                        if response.TTL <= 0:
                            return
                        self._valid_until = sent + response.TTL
                        break
            except (TimeoutError, grpc.aio.AioRpcError) as error:
                log.warning("lease keepalive failed: %s", error)
            finally:
                stream.cancel()
