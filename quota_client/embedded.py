"""The region's agent inside the order service's own process, called as the client is: the methods, results
and exceptions of `AsyncQuotaClient`, so a service switches between the two by how it opens them.

    from quota_client.embedded import EmbeddedAgent
    from region_agent.agent import AgentSettings
    from region_agent.app import AgentConfig

    config = AgentConfig(AgentSettings("eu"), center=("center:50051",), ledger="redis://ledger-eu:6379/0")
    async with EmbeddedAgent.start(config) as quota:
        deducted = await quota.deduct("order-1", [Line("coupon-10", 1, "user-7")])

A deduction is then one EVALSHA on the region's Redis (batched with concurrent ones), with no gRPC hop; what
the process must hold and trust for that is `region_agent.embedded`'s to say. Unlike the rest of
quota_client, this module imports the agent itself (the servers' code and its dependencies); importing
quota_client alone still does not.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from typing import Any, TypeVar

from quota_client.errors import DeadlineExceeded, QuotaClientError, error_from_detail
from quota_client.model import (
    Balance,
    Cancelled,
    CenterGroup,
    Confirmed,
    Deducted,
    Line,
    OrderState,
    OrderStatus,
    Refunded,
    RefundLine,
    RegionStatus,
    Reserved,
)
from quota_common.errors import QuotaError
from region_agent import embedded
from region_agent.agent import OrderReport, PromotionStatus
from region_agent.app import AgentConfig
from region_agent.errors import RetryAfter, describe
from region_agent.ledger import base

R = TypeVar("R")


class EmbeddedAgent:
    def __init__(self, agent: embedded.EmbeddedAgent, retry: RetryAfter) -> None:
        """Made by `start`."""
        self._agent = agent
        self._retry = retry
        self.region = agent.region

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, config: AgentConfig, service: str = "") -> AsyncIterator[EmbeddedAgent]:
        """Joins `config`'s region on its Redis until the block ends (see `region_agent.embedded.EmbeddedAgent`
        for `service` and the settings it refuses)."""
        retry = RetryAfter(lease_ms=round(config.settings.renew_interval_s * 1000))
        async with embedded.EmbeddedAgent.start(config, service) as agent:
            yield cls(agent, retry)

    async def deduct(self, order_key: str, lines: Sequence[Line], *, deadline_s: float | None = None) -> Deducted:
        """Deducts every line or none; a retry with the same order key answers the first deduction (`replayed`).
        `deadline_s` also bounds the wait for a refill (default: the agent's `max_wait_s`)."""
        given = tuple(lines)
        outcome = await self._call(self._agent.deduct(order_key, given, deadline_s), deadline_s)
        # The ledger deducts these lines, or replays an order of the same lines: no copy back and forth.
        return Deducted(order_key, given, outcome.replayed)

    async def reserve(
        self, order_key: str, lines: Sequence[Line], ttl_s: float = 0, *, deadline_s: float | None = None
    ) -> Reserved:
        """Holds every line or none for `ttl_s` (1 s .. 24 h; 0: the agent's default) until confirm or cancel."""
        given = tuple(lines)
        outcome = await self._call(self._agent.reserve(order_key, given, round(ttl_s * 1000), deadline_s), deadline_s)
        return Reserved(order_key, given, outcome.replayed, outcome.expires_at_ms)

    async def confirm(self, order_key: str, *, deadline_s: float | None = None) -> Confirmed:
        outcome = await self._call(self._agent.confirm(order_key), deadline_s)
        return Confirmed(order_key, _lines(outcome.lines), outcome.replayed)

    async def cancel(self, order_key: str, *, deadline_s: float | None = None) -> Cancelled:
        outcome = await self._call(self._agent.cancel(order_key), deadline_s)
        return Cancelled(order_key, _lines(outcome.lines), outcome.replayed, outcome.expired)

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
        given = [base.Line(line.promotion_id, line.amount) for line in lines or ()]
        outcome = await self._call(self._agent.refund(order_key, refund_id, given), deadline_s)
        return Refunded(
            order_key, tuple(RefundLine(line.promotion_id, line.amount) for line in outcome.lines), outcome.replayed
        )

    async def get_order(self, order_key: str, *, deadline_s: float | None = None) -> OrderState:
        """What became of an order, changing nothing: ask this after Unavailable(may_have_applied=True)."""
        return _order_state(order_key, await self._call(self._agent.get_order(order_key), deadline_s, writes=False))

    async def status(self, *, deadline_s: float | None = None) -> RegionStatus:
        statuses = await self._call(self._agent.status(), deadline_s, writes=False)
        return RegionStatus(
            self.region, self._agent.incarnation, _balances(statuses), self._agent.center_calls, self._groups()
        )

    def _groups(self) -> tuple[CenterGroup, ...]:
        return tuple(
            CenterGroup(
                g.group,
                g.stream_alive,
                g.catalog_revision,
                None if g.staleness_s is None else round(g.staleness_s * 1000),
                round(g.lease.remaining_s * 1000),
                round(g.lease.renewals_failing_s * 1000),
                g.lease.promotions,
            )
            for g in self._agent.group_statuses()
        )

    async def _call(self, work: Coroutine[Any, Any, R], deadline_s: float | None, writes: bool = True) -> R:
        """`work`'s answer, or the exception the client raises for what it raised (`writes`: False for a read,
        which changed nothing even when cut off)."""
        if deadline_s is not None and deadline_s <= 0:
            work.close()  # never started: nothing was sent
            raise ValueError(f"deadline_s must be positive, got {deadline_s}")  # as the clients say it
        try:
            if deadline_s is None:  # most orders: no timer to arm and cancel around the one Redis call
                return await work
            async with asyncio.timeout(deadline_s):
                return await work
        except QuotaError as error:
            raise self._client_error(error) from error
        except TimeoutError as error:
            # Cut off while the ledger may have been writing: ask get_order, or retry with the same key.
            message = f"no answer within the deadline of {deadline_s} s"
            raise DeadlineExceeded(message, may_have_applied=writes) from error

    def _client_error(self, error: QuotaError) -> QuotaClientError:
        detail = describe(error, self._retry)
        retry_after = detail.retry_after_ms / 1000 if detail.retry_after_ms else None
        return error_from_detail(error.code, error.message, detail.reason, detail.metadata, retry_after)


def _lines(lines: Iterable[base.Line]) -> tuple[Line, ...]:
    return tuple(Line(line.promotion_id, line.amount, line.user_id, line.unit_price, line.discount) for line in lines)


_STATUSES = {
    base.DEDUCTED: OrderStatus.DEDUCTED,
    base.RESERVED: OrderStatus.RESERVED,
    base.CONFIRMED: OrderStatus.CONFIRMED,
    base.CANCELLED: OrderStatus.CANCELLED,
    base.EXPIRED: OrderStatus.EXPIRED,
}


def _order_state(order_key: str, report: OrderReport) -> OrderState:
    order = report.order
    if order is None:
        return OrderState(order_key, OrderStatus.UNKNOWN, (), 0, (), report.life_started_ms, report.life_lost)
    refunded = tuple(RefundLine(line.promotion_id, line.amount) for line in order.refunded)
    until = order.expires_at_ms if order.state == base.RESERVED else 0
    return OrderState(
        order_key,
        _STATUSES[order.state],
        _lines(order.lines),
        until,
        refunded,
        report.life_started_ms,
        report.life_lost,
    )


def _balances(statuses: Iterable[PromotionStatus]) -> tuple[Balance, ...]:
    return tuple(
        Balance(
            s.promotion_id,
            s.balance.available,
            s.balance.granted,
            s.balance.returned,
            s.balance.deducted,
            s.balance.refunded,
            s.balance.held,
            round(s.lease_remaining_s * 1000),
            s.frozen,
            s.below_floor,
        )
        for s in statuses
    )
