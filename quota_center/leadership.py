"""Who may answer and write: one replica leads, the others stand by and name it. Two implementations:

- `SingleNode`: a center on SQLite is the only replica. It owns the store's file from the moment it
  opened it (`SqliteStore` refuses a second process), so it leads at once and for as long as it runs.
- `EtcdLeadership`: replicas on one etcd prefix campaign for one key, tied to an etcd lease kept alive
  while the process lives:

      {prefix}/leader = the leader's gRPC address, attached to its lease

  The key's create revision is the leader's **fencing token**: every store write compares it,
  so a leader that was paused past its lease and still believes it leads cannot commit
  anything once another replica has won (see `EtcdStore.fence`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Protocol

import grpc
from etcd3aio import EtcdError
from etcd3aio.kv import KVService

from quota_center.store.etcd import EtcdStore
from quota_common.clock import Clock

log = logging.getLogger(__name__)

OnElected = Callable[[], Awaitable[None]]
"""Called once this replica leads, its store already fenced; it rebuilds state before serving."""
OnDeposed = Callable[[], Awaitable[None]]
"""Called when a leadership this replica won ends, lost or given up by `close`; it stops serving."""


class Leadership(Protocol):
    """Decides which replica answers. Guarantees, for every implementation:

    - Writes of a replica that no longer leads do not commit, however late they reach the store: the
      store this leadership was built with is fenced before `on_elected` runs.
    - `leading()` turns False, on this replica's monotonic clock, no later than another replica could
      win; a replica for which it is False answers nothing from memory.
    - `on_elected` and `on_deposed` alternate, `on_elected` first.
    """

    async def start(self, address: Callable[[], str], on_elected: OnElected, on_deposed: OnDeposed) -> None:
        """Campaigns in the background until `close`. `address()` is where callers reach this replica, for
        the others to name; a single node never asks. A leadership that leads at once has run `on_elected`
        when this returns, so the replica answers as soon as it listens."""
        ...

    def leading(self) -> bool:
        """Whether this replica may act as the leader now."""
        ...

    def leader_address(self) -> str | None:
        """Where the leader serves, as far as this replica knows (a standby's hint); None when unknown."""
        ...

    async def close(self) -> None:
        """Stops campaigning and gives leadership up at once (on shutdown), instead of letting another
        replica wait for a lease to run out; `on_deposed` runs first if this replica was leading."""
        ...


class SingleNode:
    def __init__(self) -> None:
        self._on_deposed: OnDeposed | None = None

    async def start(self, address: Callable[[], str], on_elected: OnElected, on_deposed: OnDeposed) -> None:
        await on_elected()
        self._on_deposed = on_deposed

    def leading(self) -> bool:
        return True

    def leader_address(self) -> str | None:
        return None  # there is no other replica to point to

    async def close(self) -> None:
        on_deposed, self._on_deposed = self._on_deposed, None
        if on_deposed is not None:
            await on_deposed()


class Tenure:
    """How long a leader may act on its etcd lease, on its own monotonic clock: the TTL etcd granted,
    counted from when the grant or renewal was *sent*. etcd starts its count when the request arrives,
    later; so the tenure ends before etcd can expire the lease and let another replica win, however slow
    the answer was (given clocks that run at about the same rate)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._until = -math.inf

    def sending(self) -> float:
        """Now, as a grant or renewal goes out: the instant `renewed` counts from."""
        return self._clock.monotonic()

    def renewed(self, sent: float, ttl_s: float) -> None:
        """etcd answered the request sent at `sent` with a lease of `ttl_s` seconds. Renewals may be answered
        out of order: an earlier one answered late extends nothing a later one was answered for."""
        self._until = max(self._until, sent + ttl_s)

    def end(self) -> None:
        self._until = -math.inf

    def holds(self) -> bool:
        return self._clock.monotonic() < self._until

    def left(self) -> float:
        """Seconds until the tenure ends; 0 once it has."""
        return max(0.0, self._until - self._clock.monotonic())


class EtcdLeadership:
    def __init__(self, store: EtcdStore, clock: Clock, ttl_s: int = 5) -> None:
        self._store = store
        self._client = store.client
        self._key = f"{store.prefix}/leader"
        self._ttl = ttl_s
        self._tenure = Tenure(clock)
        self._leader: str | None = None
        self._lease_id = 0
        self._campaign: asyncio.Task[None] | None = None

    async def start(self, address: Callable[[], str], on_elected: OnElected, on_deposed: OnDeposed) -> None:
        self._campaign = asyncio.create_task(self._run(address(), on_elected, on_deposed))

    def leader_address(self) -> str | None:
        return self._leader

    def leading(self) -> bool:
        """True while this replica holds the leader key on a lease it can still trust (`Tenure`)."""
        return self._tenure.holds()

    async def close(self) -> None:
        if self._campaign is not None:
            self._campaign.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._campaign
        await self._resign()

    async def _run(self, address: str, on_elected: OnElected, on_deposed: OnDeposed) -> None:
        """Campaigns for ever: `on_elected` when this replica wins, `on_deposed` when it loses."""
        assert self._client.lease is not None
        while True:
            try:
                sent = self._tenure.sending()
                self._lease_id = int((await self._client.lease.grant(self._ttl, timeout=self._ttl)).ID)
                won, fence = await self._campaign_once(address, self._lease_id)
                if won:
                    self._tenure.renewed(sent, self._ttl)
                    self._leader = address
                    log.info("elected leader with fencing token %d", fence)
                    keeping = asyncio.create_task(self._keep_alive(self._lease_id))
                    try:
                        self._store.fence(self._key, fence)
                        await on_elected()
                        await keeping
                    finally:
                        keeping.cancel()
                        self._tenure.end()
                        log.warning("leadership lost")
                        await on_deposed()
            except (EtcdError, grpc.aio.AioRpcError) as error:
                log.warning("election: %s", error)
            except Exception:
                log.exception("election round failed; campaigning again")
            await self._resign()
            await asyncio.sleep(self._ttl / 5)

    async def _resign(self) -> None:
        """Gives the leader key up at once, instead of letting its lease run out."""
        self._tenure.end()
        lease_id, self._lease_id = self._lease_id, 0
        if lease_id and self._client.lease is not None:
            # An expired lease answers NOT_FOUND, which etcd3aio raises as the raw gRPC error.
            with contextlib.suppress(EtcdError, grpc.aio.AioRpcError):
                await self._client.lease.revoke(lease_id, timeout=1)

    async def _campaign_once(self, address: str, lease_id: int) -> tuple[bool, int]:
        """One attempt: take the key if nobody holds it, else learn who does. A campaign whose
        answer was lost and that etcd3aio retried finds its own key, on its own lease: a win."""
        assert self._client.kv is not None
        answer = await self._client.kv.txn(
            [KVService.txn_compare_create_revision(self._key, 0)],
            [KVService.txn_op_put(self._key, address, lease=lease_id)],
            [KVService.txn_op_get(self._key)],
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
        """Renews the lease until it can no longer be trusted, then returns. A renewal goes out every TTL/4
        whether or not the previous ones were answered: on a busy event loop an answer can take seconds to be
        read, and waiting for each before sending the next left the tenure to a single slow round trip. Each
        answer counts from its own sending (`Tenure.renewed`), so a slow one costs nothing when a later one
        comes in time."""
        gone = asyncio.Event()
        renewals: set[asyncio.Task[None]] = set()
        try:
            while self._tenure.holds():
                renewal = asyncio.create_task(self._renew(lease_id, gone))
                renewals.add(renewal)
                renewal.add_done_callback(renewals.discard)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(self._ttl / 4, self._tenure.left())):
                        await gone.wait()
            if not gone.is_set():
                # Not etcd's word: no answer was read in time (a stalled event loop, or etcd slow or cut off).
                log.warning("lease tenure ran out with %d renewals unanswered", len(renewals))
        finally:
            for renewal in list(renewals):
                renewal.cancel()

    async def _renew(self, lease_id: int, gone: asyncio.Event) -> None:
        """One renewal; sets `gone` when etcd answers that the lease expired."""
        assert self._client.lease is not None
        sent = self._tenure.sending()
        stream = self._client.lease.keep_alive(lease_id)
        try:
            async with asyncio.timeout(self._ttl):  # an answer later than that extends nothing
                async for response in stream:
                    if response.TTL <= 0:
                        log.warning("etcd answered that the leader's lease expired")
                        self._tenure.end()
                        gone.set()
                    else:
                        self._tenure.renewed(sent, response.TTL)
                    return
        except (TimeoutError, grpc.aio.AioRpcError) as error:
            log.warning("lease keepalive failed: %s", error)
        finally:
            stream.cancel()
