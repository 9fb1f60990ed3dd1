"""The blocking client, for order services without asyncio: the same calls as AsyncQuotaClient (see it for
what each does), on gRPC's blocking channels.

    with QuotaClient(addresses, region) as quota:
        quota.deduct("order-1", [Line("coupon-10", 1, "user-7")])
"""

from __future__ import annotations

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


class QuotaClient:
    """Thread-safe: one client per process serves every thread."""

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
        transport = open_links(self.addresses, tls)
        self._channels = [transport.channel(address, CHANNEL_OPTIONS) for address in self.addresses]
        self._stubs = [pb_grpc.RegionAgentStub(channel) for channel in self._channels]
        self._policy = policy or RetryPolicy()
        self._clock = clock or SystemClock()
        self._preferred = 0
        self._closed = False

    def __enter__(self) -> QuotaClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Ends the calls in flight (each raises Unavailable that may have applied); a later call raises
        RuntimeError."""
        self._closed = True
        for channel in self._channels:
            channel.close()

    def deduct(self, order_key: str, lines: Sequence[Line], *, deadline_s: float | None = None) -> Deducted:
        return self._call(calls.deduct(order_key, self.region, lines), deadline_s)

    def reserve(
        self, order_key: str, lines: Sequence[Line], ttl_s: float = 0, *, deadline_s: float | None = None
    ) -> Reserved:
        return self._call(calls.reserve(order_key, self.region, lines, ttl_s), deadline_s)

    def confirm(self, order_key: str, *, deadline_s: float | None = None) -> Confirmed:
        return self._call(calls.confirm(order_key), deadline_s)

    def cancel(self, order_key: str, *, deadline_s: float | None = None) -> Cancelled:
        return self._call(calls.cancel(order_key), deadline_s)

    def refund(
        self,
        order_key: str,
        refund_id: str | None = None,
        lines: Sequence[RefundLine] | None = None,
        *,
        deadline_s: float | None = None,
    ) -> Refunded:
        return self._call(calls.refund(order_key, refund_id, lines), deadline_s)

    def get_order(self, order_key: str, *, deadline_s: float | None = None) -> OrderState:
        return self._call(calls.get_order(order_key), deadline_s)

    def status(self, *, deadline_s: float | None = None) -> RegionStatus:
        return self._call(calls.status(), deadline_s)

    def _call(self, call: Call[R], deadline_s: float | None) -> R:
        if self._closed:
            raise RuntimeError(CLOSED)
        attempts = Attempts(self._policy, self._clock, len(self.addresses), self._preferred, deadline_s)
        try:
            return self._attempt(call, attempts)
        except Unavailable as failure:
            if not retried(failure):
                raise
            first = failure
        try:
            return attempts.retry(first, functools.partial(self._attempt, call, attempts))
        finally:
            del first  # its traceback holds this frame: kept, the two would be a cycle after the call

    def _attempt(self, call: Call[R], attempts: Attempts) -> R:
        index = attempts.address()
        stub: Any = self._stubs[index]
        try:
            answer: Any = getattr(stub, call.method)(call.request, timeout=attempts.timeout())
        except grpc.RpcError as error:
            raise attempts.failed(error, call) from None
        self._preferred = index
        return call.answer(answer)
