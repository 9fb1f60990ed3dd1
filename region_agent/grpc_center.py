"""The agent's port to the center over gRPC: the one agent module that sees the center's wire.

Every call of the port may be repeated (region_agent.center_port), so UNAVAILABLE and DEADLINE_EXCEEDED
are retried a few times with jittered backoff, following the leader; everything else surfaces at once as
the QuotaError its status stands for.

With mutual TLS, a channel keeps the certificate it was made with, so when the files change on disk the
channels are replaced: the next call connects with the new certificate, and calls in flight on the old
channels finish first (the catalog stream, which never finishes, is broken and resumed on a new one).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from quota_center.v1 import quota_center_pb2 as pb
from quota_center.v1 import quota_center_pb2_grpc as pb_grpc
from quota_center.wire import emergency_from_pb, promotion_from_pb
from quota_common.errors import LEADER_METADATA_KEY, Unavailable, from_grpc, trailing
from quota_common.model import Promotion, Report
from quota_common.tls import TlsMaterial
from quota_common.transport import Transport
from region_agent.cache import CatalogSnapshot
from region_agent.center_port import GrantAnswer, OpeningAnswer, Page, RegionLease, RenewalDirective, RenewAnswer
from region_agent.ledger.base import Joined

T = TypeVar("T")

RECONNECT_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    # gRPC's shortest connect attempt (MIN_CONNECT_TIMEOUT): long enough for a handshake across regions.
    ("grpc.min_reconnect_backoff_ms", 1000),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
"""gRPC's default backoff grows to 120 s while the center is away, and the region stays dark that
long after it returns; capped at a second, the agent notices the center within one."""
OPENINGS_TIMEOUTS = 5
"""AcquireOpenings, the longest call, may take this many call timeouts (it commits up to 1,000 grants)."""


@dataclass(frozen=True)
class _Stubs:
    admin: pb_grpc.PromotionAdminAsyncStub
    allocation: pb_grpc.AllocationAsyncStub
    catalog: pb_grpc.CatalogAsyncStub


def _page(message: pb.CatalogChanges) -> Page:
    promotions = [promotion_from_pb(promotion) for promotion in message.promotions]
    return Page(CatalogSnapshot(promotions, emergency_from_pb(message.emergency), message.revision), message.more)


def _counters(promotion_id: str, report: Report) -> pb.Counters:
    return pb.Counters(
        promotion_id=promotion_id,
        granted=report.granted,
        returned=report.returned,
        deducted=report.deducted,
        refunded=report.refunded,
        demand_per_minute=report.demand_per_minute,
        below_floor=report.below_floor,
        available=report.available,
        held=report.held,
    )


def _directive(message: pb.PromotionDirective) -> RenewalDirective:
    return RenewalDirective(
        promotion_id=message.promotion_id,
        refusal=message.refusal,
        frozen=message.frozen,
        reclaim=message.reclaim,
        unapplied_grants=tuple((grant.grant_id, grant.amount) for grant in message.unapplied_grants),
        revision=message.revision,
        exhausted=message.exhausted,
    )


class GrpcCenter:
    """The CenterPort over gRPC, calling whichever center replica leads. A standby answers UNAVAILABLE with
    the leader's address in the trailing metadata, and the next attempt goes there; a replica that does
    not answer at all sends the next attempt to the next address in the list.

    With several addresses listed, a leader named outside the list is not followed: the operator
    listed how this region reaches each replica (through a gateway or proxy per replica, say), and
    the address a replica advertises may bypass it or not be reachable from here; the next listed
    address is tried instead, which finds the leader within one pass. A single address (a Service
    in front of every replica) cannot reach the leader by itself, so there the name is followed."""

    def __init__(
        self,
        addresses: list[str],
        region: str,
        call_timeout_s: float = 2.0,
        attempts: int = 5,
        budget_s: float = 6.0,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        transport: Transport | None = None,
    ) -> None:
        """Each call makes at most `attempts` tries and starts none after `budget_s`;
        `interceptors` see every call (metrics); `transport` secures the channels (default: plaintext)."""
        self._interceptors = list(interceptors)
        self._transport = transport or Transport()
        self._addresses = list(addresses)
        self._current = self._addresses[0]
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._material: TlsMaterial | None = self._transport.material()
        """What the channels in `_channels` were made with."""
        self._closing: set[asyncio.Task[None]] = set()
        self._region = region
        self._timeout = call_timeout_s
        self._attempts = attempts
        self._budget_s = budget_s
        self.calls = 0
        """RPCs sent to the center, retries included."""
        self.fetches = 0
        """Promotions fetched one by one (GetPromotion calls)."""

    def _stubs(self) -> _Stubs:
        material = self._transport.material()
        if material is not self._material:
            self._retire_channels()
            self._material = material
        channel = self._channels.get(self._current)
        if channel is None:
            channel = self._transport.aio_channel(self._current, RECONNECT_OPTIONS, self._interceptors)
            self._channels[self._current] = channel
        return _Stubs(
            pb_grpc.PromotionAdminStub(channel), pb_grpc.AllocationStub(channel), pb_grpc.CatalogStub(channel)
        )

    def _retire_channels(self) -> None:
        """Closes the channels made with replaced TLS files once their unary calls are done (each ends by its
        deadline), so that none is cancelled midway; the next call makes a new channel."""
        for channel in self._channels.values():
            closing = asyncio.ensure_future(channel.close(self._timeout * OPENINGS_TIMEOUTS))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        self._channels.clear()

    def _follow(self, error: grpc.aio.AioRpcError) -> None:
        if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return
        leader = trailing(error, LEADER_METADATA_KEY)
        listed = leader in self._addresses or len(self._addresses) == 1
        if leader and leader != self._current and listed and self._transport.may_call(leader):
            self._current = leader
            return
        if self._current in self._addresses:
            self._current = self._addresses[(self._addresses.index(self._current) + 1) % len(self._addresses)]
        else:
            self._current = self._addresses[0]

    async def _call(self, send: Callable[[_Stubs], Awaitable[T]]) -> T:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Unavailable),
            stop=stop_after_attempt(self._attempts) | stop_after_delay(self._budget_s),
            wait=wait_random_exponential(multiplier=0.05, max=1.0),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                self.calls += 1
                try:
                    return await send(self._stubs())
                except grpc.aio.AioRpcError as error:
                    self._follow(error)
                    raise from_grpc(error) from None
        raise AssertionError("unreachable: tenacity reraises the last error")

    def _agent(self, incarnation: str) -> pb.AgentIdentity:
        return pb.AgentIdentity(region=self._region, incarnation=incarnation)

    async def join(self, replaces: str) -> Joined:
        request = pb.JoinRequest(region=self._region, replaces=replaces)
        answer = await self._call(lambda stubs: stubs.allocation.Join(request, timeout=self._timeout))
        # A center from before the field does not say: an earlier life may have held orders.
        known = answer.HasField("after_earlier_life")
        return Joined(answer.incarnation, answer.after_earlier_life if known else True)

    async def acquire(
        self, incarnation: str, promotion_id: str, amount: int, request_id: str, demand_per_minute: int
    ) -> GrantAnswer:
        request = pb.AcquireRequest(
            agent=self._agent(incarnation),
            promotion_id=promotion_id,
            amount=amount,
            request_id=request_id,
            demand_per_minute=demand_per_minute,
        )
        answer = await self._call(lambda stubs: stubs.allocation.Acquire(request, timeout=self._timeout))
        return GrantAnswer(answer.grant.grant_id, answer.grant.amount, answer.lease_ttl_ms / 1000, answer.unallocated)

    async def acquire_openings(
        self, incarnation: str, requests: Sequence[tuple[str, int, str]]
    ) -> tuple[list[OpeningAnswer], float]:
        request = pb.AcquireOpeningsRequest(
            agent=self._agent(incarnation),
            items=[pb.AcquireRequest(promotion_id=p, amount=a, request_id=r) for p, a, r in requests],
        )
        timeout = self._timeout * OPENINGS_TIMEOUTS
        answer = await self._call(lambda stubs: stubs.allocation.AcquireOpenings(request, timeout=timeout))
        outcomes = [OpeningAnswer(o.promotion_id, o.grant.grant_id, o.grant.amount, o.refusal) for o in answer.outcomes]
        return outcomes, answer.lease_ttl_ms / 1000

    async def list_changes(self, since_revision: int) -> Page:
        request = pb.CatalogRequest(region=self._region, since_revision=since_revision)
        return _page(await self._call(lambda stubs: stubs.catalog.ListChanges(request, timeout=self._timeout)))

    async def watch(self, since_revision: int, idle_timeout_s: float) -> AsyncIterator[Page]:
        request = pb.CatalogRequest(region=self._region, since_revision=since_revision)
        self.calls += 1
        call = self._stubs().catalog.Watch(request)
        try:
            while True:
                # asyncio.timeout, not wait_for: wait_for reads in a task of its own, and on Python 3.11 a stop
                # that cancels the watch while that task is mid-read could wait out the whole idle timeout.
                async with asyncio.timeout(idle_timeout_s):
                    message = await call.read()
                if not isinstance(message, pb.CatalogChanges):
                    raise Unavailable("the center ended the catalog stream")
                yield _page(message)
        except TimeoutError:
            raise Unavailable(f"the catalog stream was silent for {idle_timeout_s:.0f} s") from None
        except grpc.aio.AioRpcError as error:
            self._follow(error)
            raise from_grpc(error) from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this task was cancelled (the agent stops), not the stream
            # gRPC cancels the stream when its channel closes: the TLS files changed (_retire_channels).
            raise Unavailable("the catalog stream's channel closed: the TLS files changed") from None
        finally:
            call.cancel()

    async def renew(
        self, incarnation: str, reports: Mapping[str, Report], region_lease: RegionLease | None = None
    ) -> RenewAnswer:
        counters = [_counters(promotion_id, report) for promotion_id, report in reports.items()]
        request = pb.RenewRequest(agent=self._agent(incarnation), counters=counters)
        if region_lease is not None:
            request.region_lease = True
            request.catalog_revision = region_lease.catalog_revision
            request.full = region_lease.full
            request.leaving = region_lease.leaving
        answer = await self._call(lambda stubs: stubs.allocation.Renew(request, timeout=self._timeout))
        return RenewAnswer(
            answer.lease_ttl_ms / 1000,
            [_directive(directive) for directive in answer.directives],
            emergency_from_pb(answer.emergency),
            # A center older than the region lease leaves it 0: it renewed only the promotions reported.
            region_lease=answer.region_lease_ttl_ms > 0,
            notices=[_directive(notice) for notice in answer.notices],
            report_all=answer.report_all,
        )

    async def return_quota(self, incarnation: str, promotion_id: str, counters: Report) -> int:
        request = pb.ReturnRequest(agent=self._agent(incarnation), counters=_counters(promotion_id, counters))
        answer = await self._call(lambda stubs: stubs.allocation.Return(request, timeout=self._timeout))
        return answer.unallocated

    async def promotion(self, promotion_id: str) -> Promotion:
        self.fetches += 1
        request = pb.GetPromotionRequest(promotion_id=promotion_id)
        return promotion_from_pb(
            await self._call(lambda stubs: stubs.admin.GetPromotion(request, timeout=self._timeout))
        )

    async def close(self) -> None:
        await asyncio.gather(*self._closing)
        for channel in self._channels.values():
            await channel.close()
