"""Requests to one region's agent through quota_client, each a resendable call that turns its answer into a history
`Outcome`.

A `Request` keeps everything needed to send the same key again (same lines, same refund id), so a retry after
an unknown, and the resolution of unknowns after healing, resend exactly what the first attempt sent.

Each agent has a client of its own, on its address alone, that makes one attempt per call (`ONE_ATTEMPT`): the
workload retries and fails over itself, round the region's agents, and records every attempt as it happened. A
client that retried would resolve unknowns out of the checker's sight and hide which agent answered.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

import grpc

from loadtest.chaos.history import Kind, Outcome
from quota_client import AsyncQuotaClient, InvalidRequest, QuotaClientError, RefundLine, Refused, RetryPolicy
from quota_client import Line as OrderLine
from region_agent.ledger.base import Line

CALL_TIMEOUT_S = 2.0
RESERVATION_TTL_S = 30.0
"""Longer than any run's settle delay, so no reservation lapses before the client confirms or cancels it."""
ONE_ATTEMPT = RetryPolicy(deadline_s=CALL_TIMEOUT_S, attempt_timeout_s=CALL_TIMEOUT_S, max_attempts=1)

_MAYBE_APPLIED = {
    grpc.StatusCode.DEADLINE_EXCEEDED,
    # Whatever its may_have_applied says: the checker learns what an unknown did from the retry's answer
    # (replayed or not), and an UNAVAILABLE that applied nothing resolves like any other.
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


def classify(error: QuotaClientError) -> Outcome:
    """A refusal by its reason (a RejectReason name); any other error by its status code."""
    if isinstance(error, Refused):
        return Outcome.refused(error.reason)
    if error.code is None:
        # No agent answered: refused by the client before it was sent, or lost on the way.
        if isinstance(error, InvalidRequest):
            return Outcome.failed("INVALID_ARGUMENT")
        return Outcome.unknown("UNAVAILABLE")
    if error.code in _MAYBE_APPLIED:
        return Outcome.unknown(error.code.name)
    if error.code in _NOT_APPLIED:
        return Outcome.failed(error.code.name)
    return Outcome.refused(error.code.name)


def _lines(lines: Iterable[OrderLine]) -> tuple[Line, ...]:
    return tuple(Line(line.promotion_id, line.amount, line.user_id) for line in lines)


def _order_lines(lines: Iterable[Line]) -> list[OrderLine]:
    return [OrderLine(line.promotion_id, line.amount, line.user_id) for line in lines]


async def _answer(call: Awaitable[Outcome]) -> Outcome:
    try:
        return await call
    except QuotaClientError as error:
        return classify(error)


class AgentCalls:
    """Builds requests to the agent `agent` of `region`, sent by `client` (that agent's address, `ONE_ATTEMPT`)."""

    def __init__(self, region: str, agent: str, client: AsyncQuotaClient) -> None:
        self.region, self.agent, self._client = region, agent, client

    def deduct(self, order: str, lines: tuple[Line, ...]) -> Request:
        async def call() -> Outcome:
            answer = await self._client.deduct(order, _order_lines(lines))
            return Outcome.ok(_lines(answer.lines), answer.replayed)

        return Request(Kind.DEDUCT, order, self.region, self.agent, lines, lambda: _answer(call()))

    def reserve(self, order: str, lines: tuple[Line, ...]) -> Request:
        async def call() -> Outcome:
            answer = await self._client.reserve(order, _order_lines(lines), RESERVATION_TTL_S)
            return Outcome.ok(_lines(answer.lines), answer.replayed)

        return Request(Kind.RESERVE, order, self.region, self.agent, lines, lambda: _answer(call()))

    def settle(self, kind: Kind, order: str) -> Request:
        async def call() -> Outcome:
            if kind is Kind.CONFIRM:
                confirmed = await self._client.confirm(order)
                return Outcome.ok(_lines(confirmed.lines), confirmed.replayed)
            cancelled = await self._client.cancel(order)
            return Outcome.ok(_lines(cancelled.lines), cancelled.replayed, cancelled.expired)

        return Request(kind, order, self.region, self.agent, (), lambda: _answer(call()))

    def refund(self, order: str, refund_id: str, lines: tuple[Line, ...], users: Mapping[str, str]) -> Request:
        """`lines` empty: the whole order; `refund_id` empty: the order's one refund. `users` (promotion to user,
        from the order) names who a returned line belonged to, since the agent's answer gives only promotion and
        amount."""
        back = [RefundLine(line.promotion_id, line.amount) for line in lines] or None

        async def call() -> Outcome:
            answer = await self._client.refund(order, refund_id or None, back)
            given = tuple(Line(r.promotion_id, r.amount, users.get(r.promotion_id, "")) for r in answer.lines)
            return Outcome.ok(given, answer.replayed)

        return Request(Kind.REFUND, order, self.region, self.agent, lines, lambda: _answer(call()), refund_id)
