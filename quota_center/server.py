"""The center's gRPC servicers: validate, convert protobuf to domain objects, call `Center`.

Protobuf types stop here; `Center` and below see only domain objects.
"""

from __future__ import annotations

from dataclasses import replace

import grpc

from quota_center.convert import promotion_from_pb, promotion_to_pb, usage_to_pb
from quota_center.errors import InvalidArgument
from quota_center.ledger import Report
from quota_center.rpc import Context, translate_errors
from quota_center.service import Center
from quota_center.v1 import quota_center_pb2 as pb
from quota_center.v1 import quota_center_pb2_grpc as pb_grpc
from quota_center.validation import require_amount, require_counter, require_id, require_unique


def _report_from_pb(counters: pb.Counters) -> Report:
    return Report(
        granted=require_counter("counters.granted", counters.granted),
        returned=require_counter("counters.returned", counters.returned),
        deducted=require_counter("counters.deducted", counters.deducted),
        refunded=require_counter("counters.refunded", counters.refunded),
        demand_per_minute=require_counter("counters.demand_per_minute", counters.demand_per_minute),
    )


def _identity(agent: pb.AgentIdentity) -> tuple[str, str]:
    return require_id("agent.region", agent.region), require_id("agent.incarnation", agent.incarnation)


class PromotionAdminServicer(pb_grpc.PromotionAdminServicer):
    def __init__(self, center: Center) -> None:
        self._center = center

    @translate_errors
    async def CreatePromotion(self, request: pb.CreatePromotionRequest, context: Context) -> pb.Promotion:
        fresh = replace(promotion_from_pb(request.promotion), frozen=False, revision=1)
        promotion = await self._center.create_promotion(fresh)
        return promotion_to_pb(promotion)

    @translate_errors
    async def SetBudget(self, request: pb.SetBudgetRequest, context: Context) -> pb.Promotion:
        promotion_id = require_id("promotion_id", request.promotion_id)
        budget = require_amount("budget", request.budget)
        if request.expected_revision <= 0:
            raise InvalidArgument("expected_revision is required: pass the revision you read (GetPromotion)")
        promotion = await self._center.set_budget(promotion_id, budget, request.expected_revision)
        return promotion_to_pb(promotion)

    @translate_errors
    async def SetFrozen(self, request: pb.SetFrozenRequest, context: Context) -> pb.Promotion:
        promotion_id = require_id("promotion_id", request.promotion_id)
        return promotion_to_pb(await self._center.set_frozen(promotion_id, request.frozen))

    @translate_errors
    async def GetPromotion(self, request: pb.GetPromotionRequest, context: Context) -> pb.Promotion:
        return promotion_to_pb(self._center.promotion(require_id("promotion_id", request.promotion_id)))

    @translate_errors
    async def ListPromotions(self, request: pb.ListPromotionsRequest, context: Context) -> pb.ListPromotionsResponse:
        return pb.ListPromotionsResponse(promotions=[promotion_to_pb(p) for p in self._center.promotions()])

    @translate_errors
    async def GetUsage(self, request: pb.GetUsageRequest, context: Context) -> pb.Usage:
        return usage_to_pb(self._center.usage(require_id("promotion_id", request.promotion_id)))


class AllocationServicer(pb_grpc.AllocationServicer):
    def __init__(self, center: Center) -> None:
        self._center = center

    @translate_errors
    async def Acquire(self, request: pb.AcquireRequest, context: Context) -> pb.AcquireResponse:
        region, incarnation = _identity(request.agent)
        result = await self._center.acquire(
            region=region,
            incarnation=incarnation,
            promotion_id=require_id("promotion_id", request.promotion_id),
            amount=require_amount("amount", request.amount),
            request_id=require_id("request_id", request.request_id),
            demand=require_counter("demand_per_minute", request.demand_per_minute),
        )
        grant = result.grant
        return pb.AcquireResponse(
            grant=pb.Grant(
                grant_id=grant.grant_id, promotion_id=grant.promotion_id, region=grant.region, amount=grant.amount
            ),
            lease_ttl_ms=round(self._center.settings.lease_ttl_s * 1000),
            unallocated=result.unallocated,
        )

    @translate_errors
    async def Renew(self, request: pb.RenewRequest, context: Context) -> pb.RenewResponse:
        region, incarnation = _identity(request.agent)
        require_unique("counters.promotion_id", (c.promotion_id for c in request.counters))
        reports = {require_id("counters.promotion_id", c.promotion_id): _report_from_pb(c) for c in request.counters}
        directives = await self._center.renew(region, incarnation, reports)
        return pb.RenewResponse(
            lease_ttl_ms=round(self._center.settings.lease_ttl_s * 1000),
            directives=[
                pb.PromotionDirective(
                    promotion_id=d.promotion.id,
                    frozen=d.promotion.frozen,
                    reclaim=d.reclaim,
                    unapplied_grants=[
                        pb.Grant(grant_id=grant_id, promotion_id=d.promotion.id, region=region, amount=amount)
                        for grant_id, amount in d.unapplied_grants
                    ],
                    revision=d.promotion.revision,
                    exhausted=d.exhausted,
                )
                for d in directives
            ],
        )

    @translate_errors
    async def Return(self, request: pb.ReturnRequest, context: Context) -> pb.ReturnResponse:
        region, incarnation = _identity(request.agent)
        promotion_id = require_id("counters.promotion_id", request.counters.promotion_id)
        unallocated = await self._center.give_back(region, incarnation, promotion_id, _report_from_pb(request.counters))
        return pb.ReturnResponse(unallocated=unallocated)


def add_to_server(center: Center, server: grpc.aio.Server) -> None:
    pb_grpc.add_PromotionAdminServicer_to_server(PromotionAdminServicer(center), server)
    pb_grpc.add_AllocationServicer_to_server(AllocationServicer(center), server)
