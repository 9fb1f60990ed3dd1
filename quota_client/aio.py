"""The asyncio client: `async with AsyncQuotaClient(addresses, region) as quota: await quota.deduct(...)`."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from quota_client import calls
from quota_client.calls import Call
from quota_client.connection import CHANNEL_OPTIONS, CLOSED, Tls, addresses_of, open_links
from quota_client.errors import Unavailable
from quota_client.model import (
    Cancelled,
    Confirmed,
    Deducted,
    Line,
    OrderState,
    Refunded,
    RefundLine,
    RegionStatus,
    Reserved,
)
from quota_client.retry import Attempts, RetryPolicy, retried
from quota_common.clock import Clock, SystemClock
from region_agent.v1 import region_agent_pb2_grpc as pb_grpc

R = TypeVar("R")


class AsyncQuotaClient:
    """Calls the agents of one region: one channel per address, made on first use and kept until `close`.
    Each call goes to the address that answered last and fails over to the others (see quota_client.retry);
    `deadline_s` bounds one call, retries included (default: `policy.deadline_s`)."""

    def __init__(
        self,
        addresses: str | Sequence[str],
        region: str,
        *,
        tls: Tls | None = None,
        policy: RetryPolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.addresses = addresses_of(addresses)
        self.region = region
        self._transport = open_links(self.addresses, tls)
        self._policy = policy or RetryPolicy()
        self._clock = clock or SystemClock()
        self._stubs: dict[int, tuple[grpc.aio.Channel, Any]] = {}
        self._preferred = 0
        self._closed = False

    async def __aenter__(self) -> AsyncQuotaClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Ends the calls in flight (each raises Unavailable that may have applied); a later call raises
        RuntimeError."""
        self._closed = True
        stubs, self._stubs = self._stubs, {}
        for channel, _ in stubs.values():
            await channel.close()

    async def deduct(self, order_key: str, lines: Sequence[Line], *, deadline_s: float | None = None) -> Deducted:
        """Deducts every line or none; a retry with the same order key answers the first deduction (`replayed`)."""
        return await self._call(calls.deduct(order_key, self.region, lines), deadline_s)

    async def reserve(
        self, order_key: str, lines: Sequence[Line], ttl_s: float = 0, *, deadline_s: float | None = None
    ) -> Reserved:
        """Holds every line or none for `ttl_s` (1 s .. 24 h; 0: the agent's default) until confirm or cancel."""
        return await self._call(calls.reserve(order_key, self.region, lines, ttl_s), deadline_s)

    async def confirm(self, order_key: str, *, deadline_s: float | None = None) -> Confirmed:
        return await self._call(calls.confirm(order_key), deadline_s)

    async def cancel(self, order_key: str, *, deadline_s: float | None = None) -> Cancelled:
        return await self._call(calls.cancel(order_key), deadline_s)

    async def refund(
        self,
        order_key: str,
        refund_id: str | None = None,
        lines: Sequence[RefundLine] | None = None,
        *,
        deadline_s: float | None = None,
    ) -> Refunded:
        """Gives back `lines` (None: whatever the order still has); `refund_id` keys a partial refund (None:
        one refund per order, keyed by the order key)."""
        return await self._call(calls.refund(order_key, refund_id, lines), deadline_s)

    async def get_order(self, order_key: str, *, deadline_s: float | None = None) -> OrderState:
        """What became of an order, changing nothing: ask this after Unavailable(may_have_applied=True)."""
        return await self._call(calls.get_order(order_key), deadline_s)

    async def status(self, *, deadline_s: float | None = None) -> RegionStatus:
        return await self._call(calls.status(), deadline_s)

    async def _call(self, call: Call[R], deadline_s: float | None) -> R:
        if self._closed:
            raise RuntimeError(CLOSED)
        attempts = Attempts(self._policy, self._clock, len(self.addresses), self._preferred, deadline_s)
        try:
            return await self._attempt(call, attempts)
        except Unavailable as failure:
            if not retried(failure):
                raise
            first = failure
        try:
            return await attempts.retry_async(first, functools.partial(self._attempt, call, attempts))
        finally:
            del first  # its traceback holds this frame: kept, the two would be a cycle after the call

    async def _attempt(self, call: Call[R], attempts: Attempts) -> R:
        index = attempts.address()
        try:
            answer = await getattr(self._stub(index), call.method)(call.request, timeout=attempts.timeout())
        except grpc.RpcError as error:
            raise attempts.failed(error, call) from None
        except asyncio.CancelledError:
            # Closing the channel cancels its calls; grpc.aio raises that as this task's cancellation. Unless
            # the task itself is being cancelled, it is the call's outcome, as the blocking client reports it.
            task = asyncio.current_task()
            if not self._closed or (task is not None and task.cancelling()):
                raise
            closed = "the client was closed while the call was in flight"
            raise Unavailable(closed, code=grpc.StatusCode.CANCELLED, may_have_applied=call.writes) from None
        self._preferred = index
        return call.answer(answer)

    def _stub(self, index: int) -> Any:
        if index not in self._stubs:
            channel = self._transport.aio_channel(self.addresses[index], CHANNEL_OPTIONS)
            self._stubs[index] = (channel, pb_grpc.RegionAgentStub(channel))
        return self._stubs[index][1]
