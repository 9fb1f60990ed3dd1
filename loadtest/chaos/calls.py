"""Requests to one region's agent, each a resendable call that turns its answer into a history `Outcome`.

A `Request` keeps everything needed to send the same key again (same lines, same refund id), so a retry after
an unknown, and the resolution of unknowns after healing, resend exactly what the first attempt sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

import grpc

from loadtest.chaos.history import Kind, Outcome
from quota_common.errors import REJECT_REASON_METADATA_KEY, trailing
from region_agent.ledger.base import Line
from region_agent.server import lines_pb
from region_agent.v1 import region_agent_pb2 as pb
from region_agent.v1 import region_agent_pb2_grpc as pb_grpc

CALL_TIMEOUT_S = 2.0
RESERVATION_TTL_MS = 30_000
"""Longer than any run's settle delay, so no reservation lapses before the client confirms or cancels it."""

_MAYBE_APPLIED = {
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAVAILABLE,
    # The agent may have applied the call before failing or being cut off; only a retry can tell.
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}
_NOT_APPLIED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS}


@dataclass(frozen=True)
class Request:
    kind: Kind
    order_key: str
    region: str
    agent: str
    lines: tuple[Line, ...]
    """As history records them: empty for confirm, cancel and a whole refund."""
    send: Callable[[], Awaitable[Outcome]]
    refund_id: str = ""


def classify(error: grpc.aio.AioRpcError) -> Outcome:
    reason = trailing(error, REJECT_REASON_METADATA_KEY)
    if reason:
        return Outcome.refused(reason)
    code = error.code()
    if code in _MAYBE_APPLIED:
        return Outcome.unknown(code.name)
    if code in _NOT_APPLIED:
        return Outcome.failed(code.name)
    return Outcome.refused(code.name)


def _lines(lines: Iterable[pb.Line]) -> tuple[Line, ...]:
    return tuple(Line(line.promotion_id, line.amount, line.user_id) for line in lines)


async def _answer(call: Awaitable[Outcome]) -> Outcome:
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        return classify(error)


class AgentCalls:
    """Builds requests to the agent `agent` of `region`."""

    def __init__(self, region: str, agent: str, stub: pb_grpc.RegionAgentAsyncStub) -> None:
        self.region, self.agent, self._stub = region, agent, stub

    def deduct(self, order: str, lines: tuple[Line, ...]) -> Request:
        message = pb.DeductRequest(order_key=order, region=self.region, lines=lines_pb(lines))

        async def call() -> Outcome:
            response = await self._stub.Deduct(message, timeout=CALL_TIMEOUT_S)
            return Outcome.ok(_lines(response.lines), response.replayed)

        return Request(Kind.DEDUCT, order, self.region, self.agent, lines, lambda: _answer(call()))

    def reserve(self, order: str, lines: tuple[Line, ...]) -> Request:
        message = pb.ReserveRequest(
            order_key=order, region=self.region, lines=lines_pb(lines), ttl_ms=RESERVATION_TTL_MS
        )

        async def call() -> Outcome:
            response = await self._stub.Reserve(message, timeout=CALL_TIMEOUT_S)
            return Outcome.ok(_lines(response.lines), response.replayed)

        return Request(Kind.RESERVE, order, self.region, self.agent, lines, lambda: _answer(call()))

    def settle(self, kind: Kind, order: str) -> Request:
        message = pb.SettleRequest(order_key=order)
        method = self._stub.Confirm if kind is Kind.CONFIRM else self._stub.Cancel

        async def call() -> Outcome:
            response = await method(message, timeout=CALL_TIMEOUT_S)
            return Outcome.ok(_lines(response.lines), response.replayed, response.expired)

        return Request(kind, order, self.region, self.agent, (), lambda: _answer(call()))

    def refund(self, order: str, refund_id: str, lines: tuple[Line, ...], users: Mapping[str, str]) -> Request:
        """`lines` empty: the whole order. `users` (promotion to user, from the order) names who a returned line
        belonged to, since the agent's answer gives only promotion and amount."""
        back = [pb.RefundLine(promotion_id=line.promotion_id, amount=line.amount) for line in lines]
        message = pb.RefundRequest(order_key=order, refund_id=refund_id, lines=back)

        async def call() -> Outcome:
            response = await self._stub.Refund(message, timeout=CALL_TIMEOUT_S)
            given = tuple(Line(r.promotion_id, r.amount, users.get(r.promotion_id, "")) for r in response.lines)
            return Outcome.ok(given, response.replayed)

        return Request(Kind.REFUND, order, self.region, self.agent, lines, lambda: _answer(call()), refund_id)
