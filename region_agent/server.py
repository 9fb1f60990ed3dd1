"""The agent's gRPC servicer: validate, convert, call `Agent`. Protobuf stops here.

Who calls is the order's placer: the identity the authorization interceptor verified
(`quota_common.authz.caller`), or nobody ("") on a plaintext agent on loopback."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import NoReturn, Protocol, TypeVar

import grpc
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from quota_common.authz import caller
from quota_common.errors import QuotaError
from quota_common.rpc import Context, ErrorDetail, abort_with, add_decoding, end_with
from quota_common.validation import (
    require_id,
    require_region,
)
from region_agent.agent import Agent, GroupStatus, OrderReport
from region_agent.errors import RetryAfter, describe
from region_agent.ledger.base import CANCELLED, CONFIRMED, DEDUCTED, EXPIRED, RESERVED, Line, Settle
from region_agent.metrics import AgentMetrics
from region_agent.order_input import hold_ms, order_lines, refund_lines
from region_agent.v1 import region_agent_pb2 as pb
from region_agent.v1 import region_agent_pb2_grpc as pb_grpc


def _refund_lines(request: pb.RefundRequest) -> tuple[Line, ...]:
    return refund_lines([Line(line.promotion_id, line.amount) for line in request.lines])


def _placer() -> str:
    """The calling identity's URI, which orders are recorded under; "" when the call has none."""
    identity = caller()
    return "" if identity is None else identity.uri


def add_lines(into: RepeatedCompositeFieldContainer[pb.Line], lines: tuple[Line, ...]) -> None:
    """Adds `lines` to an answer's lines as the API carries them. Added in place: building each message and
    then passing them in costs twice as much (protobuf copies each one in), and every order's answer has them."""
    for line in lines:
        into.add(
            promotion_id=line.promotion_id,
            amount=line.amount,
            user_id=line.user_id,
            unit_price=line.unit_price,
            discount=line.discount,
        )


class _Answer(Protocol):
    replayed: bool


A = TypeVar("A", bound=_Answer)
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def _observed(
    operation: str, unsent: Callable[[], A]
) -> Callable[
    [Callable[[RegionAgentServicer, Req, Context], Awaitable[A]]],
    Callable[[RegionAgentServicer, Req, Context], Awaitable[A]],
]:
    """Counts the call's result and times it, and answers an error as `translate_errors` would: in
    one wrapper, not two nested, since every order passes through it. A refusal ends the call with its
    status (`end_with`) and an `unsent()` answer, which gRPC drops."""

    def decorate(
        handler: Callable[[RegionAgentServicer, Req, Context], Awaitable[A]],
    ) -> Callable[[RegionAgentServicer, Req, Context], Awaitable[A]]:
        @functools.wraps(handler)
        async def observed(self: RegionAgentServicer, request: Req, context: Context) -> A:
            started = time.perf_counter()
            try:
                answer = await handler(self, request, context)
            except QuotaError as refusal:
                self.metrics.failed(operation, refusal, time.perf_counter() - started)
                end_with(refusal, context, self.describe)
                return unsent()
            except Exception as error:
                self.metrics.failed(operation, error, time.perf_counter() - started)
                await self.abort(error, context, handler.__qualname__)
            self.metrics.answered(operation, answer.replayed, time.perf_counter() - started)
            return answer

        return observed

    return decorate


def _answering(
    handler: Callable[[RegionAgentServicer, Req, Context], Awaitable[Resp]],
) -> Callable[[RegionAgentServicer, Req, Context], Awaitable[Resp]]:
    """Answers an error with its status and its rich error detail (`region_agent.errors`)."""

    @functools.wraps(handler)
    async def answering(self: RegionAgentServicer, request: Req, context: Context) -> Resp:
        try:
            return await handler(self, request, context)
        except Exception as error:
            await self.abort(error, context, handler.__qualname__)

    return answering


_ORDER_STATUS = {
    DEDUCTED: pb.ORDER_STATUS_DEDUCTED,
    RESERVED: pb.ORDER_STATUS_RESERVED,
    CONFIRMED: pb.ORDER_STATUS_CONFIRMED,
    CANCELLED: pb.ORDER_STATUS_CANCELLED,
    EXPIRED: pb.ORDER_STATUS_EXPIRED,
}


def order_state_pb(order_key: str, report: OrderReport) -> pb.OrderState:
    answer = pb.OrderState(
        order_key=order_key,
        status=pb.ORDER_STATUS_UNKNOWN,
        ledger_life_started_ms=report.life_started_ms,
        ledger_life_lost=report.life_lost,
    )
    order = report.order
    if order is not None:
        answer.status = _ORDER_STATUS[order.state]
        add_lines(answer.lines, order.lines)
        answer.refunded.extend(
            pb.RefundLine(promotion_id=line.promotion_id, amount=line.amount) for line in order.refunded
        )
        if order.state == RESERVED:
            answer.reserved_until_ms = order.expires_at_ms
    return answer


class RegionAgentServicer(pb_grpc.RegionAgentServicer):
    def __init__(self, agent: Agent, metrics: AgentMetrics) -> None:
        self._agent = agent
        self.metrics = metrics
        self._retry = RetryAfter(lease_ms=round(agent.settings.renew_interval_s * 1000))

    def describe(self, error: QuotaError) -> ErrorDetail:
        return describe(error, self._retry)

    async def abort(self, error: Exception, context: Context, where: str) -> NoReturn:
        await abort_with(error, context, where, self.describe)

    @_observed("deduct", pb.DeductResponse)
    async def Deduct(self, request: pb.DeductRequest, context: Context) -> pb.DeductResponse:
        order_key = require_id("order_key", request.order_key)
        region = require_region("region", request.region)
        lines = order_lines(request.lines)
        outcome = await self._agent.deduct(order_key, region, lines, context.time_remaining(), placer=_placer())
        answer = pb.DeductResponse(order_key=order_key, replayed=outcome.replayed)
        add_lines(answer.lines, outcome.lines)
        return answer

    @_observed("reserve", pb.ReserveResponse)
    async def Reserve(self, request: pb.ReserveRequest, context: Context) -> pb.ReserveResponse:
        order_key = require_id("order_key", request.order_key)
        region = require_region("region", request.region)
        lines = order_lines(request.lines)
        hold = hold_ms(request.ttl_ms, self._agent.settings.reservation_ttl_ms)
        outcome = await self._agent.deduct(order_key, region, lines, context.time_remaining(), hold, _placer())
        answer = pb.ReserveResponse(order_key=order_key, replayed=outcome.replayed, expires_at_ms=outcome.expires_at_ms)
        add_lines(answer.lines, outcome.lines)
        return answer

    @_answering
    async def Confirm(self, request: pb.SettleRequest, context: Context) -> pb.SettleResponse:
        return await self._settle(request, Settle.CONFIRM)

    @_answering
    async def Cancel(self, request: pb.SettleRequest, context: Context) -> pb.SettleResponse:
        return await self._settle(request, Settle.CANCEL)

    async def _settle(self, request: pb.SettleRequest, how: Settle) -> pb.SettleResponse:
        order_key = require_id("order_key", request.order_key)
        outcome = await self._agent.settle(order_key, how, _placer())
        answer = pb.SettleResponse(order_key=order_key, replayed=outcome.replayed, expired=outcome.expired)
        add_lines(answer.lines, outcome.lines)
        return answer

    @_answering
    async def Refund(self, request: pb.RefundRequest, context: Context) -> pb.RefundResponse:
        order_key = require_id("order_key", request.order_key)
        refund_id = require_id("refund_id", request.refund_id) if request.refund_id else ""
        outcome = await self._agent.refund(order_key, refund_id, _refund_lines(request), _placer())
        return pb.RefundResponse(
            order_key=order_key,
            lines=[pb.RefundLine(promotion_id=line.promotion_id, amount=line.amount) for line in outcome.lines],
            replayed=outcome.replayed,
        )

    @_answering
    async def GetOrder(self, request: pb.GetOrderRequest, context: Context) -> pb.OrderState:
        order_key = require_id("order_key", request.order_key)
        return order_state_pb(order_key, await self._agent.get_order(order_key, _placer()))

    @_answering
    async def GetStatus(self, request: pb.GetStatusRequest, context: Context) -> pb.RegionStatus:
        statuses = await self._agent.status()
        groups = self._agent.group_statuses()
        return pb.RegionStatus(
            region=self._agent.settings.region,
            incarnation=self._agent.incarnation,
            center_calls=self._agent.center_calls,
            catalog_revision=self._agent.cache.revision,
            cached_promotions=len(self._agent.cache),
            # One flag for every group's stream, as before there were groups: open only while all are.
            catalog_stream_alive=all(group.stream_alive for group in groups),
            promotion_fetches=self._agent.promotion_fetches,
            groups=[_group_pb(group) for group in groups],
            balances=[
                pb.PromotionBalance(
                    promotion_id=s.promotion_id,
                    available=s.balance.available,
                    granted=s.balance.granted,
                    returned=s.balance.returned,
                    deducted=s.balance.deducted,
                    refunded=s.balance.refunded,
                    held=s.balance.held,
                    lease_remaining_ms=round(s.lease_remaining_s * 1000),
                    frozen=s.frozen,
                    below_floor=s.below_floor,
                )
                for s in statuses
            ],
        )


def _group_pb(group: GroupStatus) -> pb.CenterGroupStatus:
    return pb.CenterGroupStatus(
        group=group.group,
        catalog_stream_alive=group.stream_alive,
        catalog_revision=group.catalog_revision,
        catalog_staleness_ms=None if group.staleness_s is None else round(group.staleness_s * 1000),
        lease_remaining_ms=round(group.lease.remaining_s * 1000),
        renewals_failing_ms=round(group.lease.renewals_failing_s * 1000),
        promotions=group.lease.promotions,
    )


SERVICES = tuple(service.full_name for service in pb.DESCRIPTOR.services_by_name.values())


def add_to_server(agent: Agent, server: grpc.aio.Server, metrics: AgentMetrics | None = None) -> None:
    """`metrics`: where to count the agent's answers (default: a registry nobody scrapes)."""
    servicer = RegionAgentServicer(agent, metrics or AgentMetrics(agent.settings.region))
    add_decoding(pb_grpc.add_RegionAgentServicer_to_server, servicer, server, servicer.describe)
