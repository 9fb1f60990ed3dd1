"""The agent's gRPC servicer: validate, convert, call `Agent`. Protobuf stops here."""

from __future__ import annotations

import grpc

from quota_center.errors import InvalidArgument
from quota_center.rpc import Context, translate_errors
from quota_center.validation import MAX_LINES, require_amount, require_id, require_total, require_unique
from region_agent.agent import Agent
from region_agent.ledger.base import Line
from region_agent.v1 import region_agent_pb2 as pb
from region_agent.v1 import region_agent_pb2_grpc as pb_grpc


def _check_line_count(count: int, at_least: int) -> None:
    if count < at_least:
        raise InvalidArgument("an order needs at least one line")
    if count > MAX_LINES:
        raise InvalidArgument(f"an order has at most {MAX_LINES} lines, got {count}; split it")


def _deduct_lines(request: pb.DeductRequest) -> tuple[Line, ...]:
    _check_line_count(len(request.lines), at_least=1)
    lines = tuple(
        Line(
            require_id("lines.promotion_id", line.promotion_id),
            require_amount("lines.amount", line.amount),
            require_id("lines.user_id", line.user_id),
        )
        for line in request.lines
    )
    require_unique("lines.promotion_id", (line.promotion_id for line in lines))
    require_total("lines.amount", (line.amount for line in lines))
    return lines


def _refund_lines(request: pb.RefundRequest) -> tuple[Line, ...]:
    _check_line_count(len(request.lines), at_least=0)
    lines = tuple(
        Line(require_id("lines.promotion_id", line.promotion_id), require_amount("lines.amount", line.amount))
        for line in request.lines
    )
    require_unique("lines.promotion_id", (line.promotion_id for line in lines))
    return lines


def _lines_pb(lines: tuple[Line, ...]) -> list[pb.Line]:
    return [pb.Line(promotion_id=line.promotion_id, amount=line.amount, user_id=line.user_id) for line in lines]


class RegionAgentServicer(pb_grpc.RegionAgentServicer):
    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    @translate_errors
    async def Deduct(self, request: pb.DeductRequest, context: Context) -> pb.DeductResponse:
        order_key = require_id("order_key", request.order_key)
        region = require_id("region", request.region)
        outcome = await self._agent.deduct(order_key, region, _deduct_lines(request), context.time_remaining())
        return pb.DeductResponse(order_key=order_key, lines=_lines_pb(outcome.lines), replayed=outcome.replayed)

    @translate_errors
    async def Refund(self, request: pb.RefundRequest, context: Context) -> pb.RefundResponse:
        order_key = require_id("order_key", request.order_key)
        refund_id = require_id("refund_id", request.refund_id) if request.refund_id else ""
        outcome = await self._agent.refund(order_key, refund_id, _refund_lines(request))
        return pb.RefundResponse(
            order_key=order_key,
            lines=[pb.RefundLine(promotion_id=line.promotion_id, amount=line.amount) for line in outcome.lines],
            replayed=outcome.replayed,
        )

    @translate_errors
    async def GetStatus(self, request: pb.GetStatusRequest, context: Context) -> pb.RegionStatus:
        statuses = await self._agent.status()
        return pb.RegionStatus(
            region=self._agent.settings.region,
            incarnation=self._agent.incarnation,
            center_calls=self._agent.center_calls,
            balances=[
                pb.PromotionBalance(
                    promotion_id=s.promotion_id,
                    available=s.balance.available,
                    granted=s.balance.granted,
                    returned=s.balance.returned,
                    deducted=s.balance.deducted,
                    refunded=s.balance.refunded,
                    lease_remaining_ms=round(s.lease_remaining_s * 1000),
                    frozen=s.frozen,
                )
                for s in statuses
            ],
        )


def add_to_server(agent: Agent, server: grpc.aio.Server) -> None:
    pb_grpc.add_RegionAgentServicer_to_server(RegionAgentServicer(agent), server)
