"""The center's gRPC servicers: validate, convert protobuf to domain objects, call `Center`.

Protobuf types stop here; `Center` and below see only domain objects.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc

from quota_center import lifecycle
from quota_center.alert_book import cause_from_wire
from quota_center.approvals import PendingChange
from quota_center.audit import AuditRecord
from quota_center.center import Center
from quota_center.center_agents import HEARTBEAT_S, Opening
from quota_center.convert import (
    alert_to_pb,
    catalog_page_to_pb,
    directives_to_pb,
    history_to_pb,
    statement_to_pb,
    usage_to_pb,
)
from quota_center.gate import FIRED
from quota_center.ledger import GrantRecord
from quota_center.paging import MAX_PAGE_BYTES, after_page_token, page_token, within_bytes
from quota_center.trail import By
from quota_center.v1 import quota_center_pb2 as pb
from quota_center.v1 import quota_center_pb2_grpc as pb_grpc
from quota_center.wire import emergency_to_pb, promotion_from_pb, promotion_to_pb
from quota_common.authz import caller
from quota_common.clock import Clock, SystemClock
from quota_common.errors import WARNINGS_METADATA_KEY, InvalidArgument, QuotaError
from quota_common.incarnation import require_incarnation
from quota_common.model import Report
from quota_common.rpc import Context, abort_with, add_decoding, translate_errors
from quota_common.validation import (
    DEFAULT_PAGE,
    MAX_OPENINGS,
    MAX_PAGE,
    MAX_RENEWAL,
    clamp_demand,
    require_amount,
    require_bounded_text,
    require_counter,
    require_id,
    require_region,
    require_text,
    require_unique,
)


def _report_from_pb(counters: pb.Counters) -> Report:
    return Report(
        granted=require_counter("counters.granted", counters.granted),
        returned=require_counter("counters.returned", counters.returned),
        deducted=require_counter("counters.deducted", counters.deducted),
        refunded=require_counter("counters.refunded", counters.refunded),
        demand_per_minute=clamp_demand("counters.demand_per_minute", counters.demand_per_minute),
        below_floor=require_counter("counters.below_floor", counters.below_floor),
        # Evidence for reconciliation, not money: taken as sent (a ledger altered to a negative figure is
        # exactly what it must show), and never booked.
        available=counters.available if counters.HasField("available") else None,
        held=counters.held if counters.HasField("held") else None,
    )


def _grant_pb(grant: GrantRecord) -> pb.Grant:
    return pb.Grant(grant_id=grant.grant_id, promotion_id=grant.promotion_id, region=grant.region, amount=grant.amount)


class PromotionAdminServicer(pb_grpc.PromotionAdminServicer):
    def __init__(self, center: Center) -> None:
        self._center = center

    @translate_errors
    async def CreatePromotion(self, request: pb.CreatePromotionRequest, context: Context) -> pb.Promotion:
        by = _by(request.request_id)
        promotion = await self._center.create_promotion(promotion_from_pb(request.promotion), by)
        _name_fired_rules(context)
        return promotion_to_pb(promotion)

    @translate_errors
    async def SetBudget(self, request: pb.SetBudgetRequest, context: Context) -> pb.Promotion:
        promotion_id = require_id("promotion_id", request.promotion_id)
        budget = require_amount("budget", request.budget)
        _require_revision(request.expected_revision)
        by = _by(request.request_id)
        promotion = await self._center.set_budget(promotion_id, budget, request.expected_revision, by)
        _name_fired_rules(context)
        return promotion_to_pb(promotion)

    @translate_errors
    async def UpdatePromotion(self, request: pb.UpdatePromotionRequest, context: Context) -> pb.Promotion:
        promotion_id = require_id("promotion.id", request.promotion.id)
        fields = lifecycle.masked_fields(request.update_mask.paths)
        _require_revision(request.expected_revision)
        by = _by(request.request_id)
        for timestamp in ("start_time", "end_time"):
            if timestamp in request.update_mask.paths and not request.promotion.HasField(timestamp):
                raise InvalidArgument(f"update_mask names {timestamp}, but promotion.{timestamp} is not set")
        # The named fields over the promotion as it stands, checked as a whole by the same rules as a create;
        # the center takes only the named ones from it, under its lock.
        merged = promotion_to_pb(self._center.promotion(promotion_id))
        request.update_mask.MergeMessage(request.promotion, merged, True, True)
        values = promotion_from_pb(merged)
        update = lifecycle.Update({name: getattr(values, name) for name in fields}, request.expected_revision)
        updated = await self._center.update_promotion(promotion_id, update, by)
        _name_fired_rules(context)
        return promotion_to_pb(updated)

    @translate_errors
    async def EndPromotion(self, request: pb.EndPromotionRequest, context: Context) -> pb.Promotion:
        promotion_id = require_id("promotion_id", request.promotion_id)
        by = _by(request.request_id)
        return promotion_to_pb(await self._center.end_promotion(promotion_id, by))

    @translate_errors
    async def SetFrozen(self, request: pb.SetFrozenRequest, context: Context) -> pb.Promotion:
        promotion_id = require_id("promotion_id", request.promotion_id)
        by = _by(request.request_id)
        return promotion_to_pb(await self._center.set_frozen(promotion_id, request.frozen, by))

    @translate_errors
    async def GetPromotion(self, request: pb.GetPromotionRequest, context: Context) -> pb.Promotion:
        return promotion_to_pb(self._center.promotion(require_id("promotion_id", request.promotion_id)))

    @translate_errors
    async def ListPromotions(self, request: pb.ListPromotionsRequest, context: Context) -> pb.ListPromotionsResponse:
        page_size = _page_size(request.page_size)
        after = after_page_token(request.page_token)
        remaining = [
            p for p in self._center.promotions() if p.id > after and (request.include_archived or not p.archived)
        ]
        listed, _ = within_bytes((promotion_to_pb(p) for p in remaining[:page_size]), MAX_PAGE_BYTES)
        more = len(listed) < len(remaining)
        return pb.ListPromotionsResponse(promotions=listed, next_page_token=page_token(listed[-1].id) if more else "")

    @translate_errors
    async def GetUsage(self, request: pb.GetUsageRequest, context: Context) -> pb.Usage:
        return usage_to_pb(self._center.usage(require_id("promotion_id", request.promotion_id)))

    @translate_errors
    async def GetHistory(self, request: pb.GetHistoryRequest, context: Context) -> pb.History:
        promotion, history = await self._center.history(require_id("promotion_id", request.promotion_id))
        return history_to_pb(promotion, history)

    @translate_errors
    async def GetStatement(self, request: pb.GetStatementRequest, context: Context) -> pb.Statement:
        return statement_to_pb(self._center.statement(require_id("promotion_id", request.promotion_id)))

    @translate_errors
    async def ArchivePromotion(self, request: pb.ArchivePromotionRequest, context: Context) -> pb.Promotion:
        promotion_id = require_id("promotion_id", request.promotion_id)
        return promotion_to_pb(await self._center.archive(promotion_id, _by(request.request_id)))

    @translate_errors
    async def SetEmergencyFreeze(self, request: pb.SetEmergencyFreezeRequest, context: Context) -> pb.EmergencyFreeze:
        region = require_region("region", request.region) if request.region else ""
        by = _by(request.request_id)
        return emergency_to_pb(await self._center.set_emergency_freeze(region, request.frozen, by))

    @translate_errors
    async def ListPending(self, request: pb.ListPendingRequest, context: Context) -> pb.ListPendingResponse:
        return pb.ListPendingResponse(changes=[_pending_pb(change, state) for change, state in self._center.pending()])

    @translate_errors
    async def ApprovePending(self, request: pb.DecidePendingRequest, context: Context) -> pb.PendingChange:
        pending_id, by = _decision(request)
        decided, _ = await self._center.approve(pending_id, by)
        return _pending_pb(decided, decided.state)

    @translate_errors
    async def RejectPending(self, request: pb.DecidePendingRequest, context: Context) -> pb.PendingChange:
        pending_id, by = _decision(request)
        decided = await self._center.reject(pending_id, by, require_text("reason", request.reason))
        return _pending_pb(decided, decided.state)

    @translate_errors
    async def ListAlerts(self, request: pb.ListAlertsRequest, context: Context) -> pb.ListAlertsResponse:
        promotion_id = require_id("promotion_id", request.promotion_id) if request.promotion_id else ""
        alerts = self._center.list_alerts(request.include_acknowledged, promotion_id)
        return pb.ListAlertsResponse(alerts=[alert_to_pb(alert) for alert in alerts])

    @translate_errors
    async def AcknowledgeAlert(self, request: pb.AcknowledgeAlertRequest, context: Context) -> pb.Alert:
        alert_id = require_id("alert_id", request.alert_id)
        cause = cause_from_wire(request.cause)
        note = require_bounded_text("note", request.note, MAX_NOTE_BYTES)
        return alert_to_pb(await self._center.acknowledge_alert(alert_id, cause, note, _by(request.request_id)))

    @translate_errors
    async def ListAudit(self, request: pb.ListAuditRequest, context: Context) -> pb.ListAuditResponse:
        page_size = _page_size(request.page_size)
        after = _after_seq(request.page_token)
        # One more than the page, to learn whether there is more without another read.
        records = await self._center.audit_records(after, page_size + 1)
        listed, cut = within_bytes((_audit_pb(record) for record in records[:page_size]), MAX_PAGE_BYTES)
        more = cut or len(records) > page_size
        return pb.ListAuditResponse(records=listed, next_page_token=page_token(str(listed[-1].seq)) if more else "")


def _name_fired_rules(context: Context) -> None:
    """A change the guard rules let through with a warning says so in its answer, not only in the trail."""
    if fired := FIRED.get():
        context.set_trailing_metadata(tuple((WARNINGS_METADATA_KEY, rule) for rule in fired))


def _pending_pb(change: PendingChange, state: str) -> pb.PendingChange:
    message = pb.PendingChange(
        id=change.id,
        call=change.call,
        promotion_id=change.promotion_id,
        request_json=json.dumps(change.request, sort_keys=True),
        requested_by=change.requested_by,
        findings=list(change.findings),
        state=state,
        decided_by=change.decided_by,
        reason=change.reason,
        rules_digest=change.rules_digest,
    )
    message.requested_at.FromMilliseconds(change.requested_at_ms)
    message.expires_at.FromMilliseconds(change.expires_at_ms)
    return message


def _require_revision(expected_revision: int) -> None:
    if expected_revision <= 0:
        raise InvalidArgument("expected_revision is required: pass the revision you read (GetPromotion)")


MAX_NOTE_BYTES = 2_000
"""An acknowledgement's note: a sentence or a ticket link, not a report; the whole book is one store document."""


def _by(request_id: str) -> By:
    """Who makes this admin write: the caller the authorization interceptor verified (none without TLS)."""
    return By(caller(), require_id("request_id", request_id) if request_id else "")


def _decision(request: pb.DecidePendingRequest) -> tuple[str, By]:
    return require_id("pending_id", request.pending_id), _by(request.request_id)


def _after_seq(token: str) -> int:
    after = after_page_token(token)
    if after and not after.isdigit():
        raise InvalidArgument(
            "page_token is not one this server issued: pass the next_page_token of the previous answer"
        )
    return int(after or 0)


def _audit_pb(record: AuditRecord) -> pb.AuditRecord:
    return pb.AuditRecord(seq=record.seq, body=record.body, hash=record.hash)


def _page_size(page_size: int) -> int:
    if not 0 <= page_size <= MAX_PAGE:
        raise InvalidArgument(
            f"page_size must be within 0 (the default, {DEFAULT_PAGE}) and {MAX_PAGE}, got {page_size}"
        )
    return page_size or DEFAULT_PAGE


def _catalog_request(request: pb.CatalogRequest) -> tuple[str, int, int]:
    region = require_region("region", request.region)
    since = require_counter("since_revision", request.since_revision)
    return region, since, _page_size(request.page_size)


class CatalogServicer(pb_grpc.CatalogServicer):
    def __init__(self, center: Center) -> None:
        self._center = center

    @translate_errors
    async def ListChanges(self, request: pb.CatalogRequest, context: Context) -> pb.CatalogChanges:
        region, since, page_size = _catalog_request(request)
        return catalog_page_to_pb(self._center.catalog_page(region, since, page_size), MAX_PAGE_BYTES)

    async def Watch(self, request: pb.CatalogRequest, context: Context) -> AsyncIterator[pb.CatalogChanges]:
        try:
            region, cursor, page_size = _catalog_request(request)
            while True:
                page = catalog_page_to_pb(self._center.catalog_page(region, cursor, page_size), MAX_PAGE_BYTES)
                yield page
                cursor = page.revision
                if not page.more:
                    await self._center.catalog_change(cursor, HEARTBEAT_S)
        except QuotaError as error:
            await abort_with(error, context, "Catalog.Watch")


class AllocationServicer(pb_grpc.AllocationServicer):
    def __init__(self, center: Center, host_clock: Clock | None = None) -> None:
        """`host_clock`: this host's real clock, which agents' incarnations are dated by (the center's
        own clock may be a test's)."""
        self._center = center
        self._host_clock = host_clock or SystemClock()

    def _identity(self, agent: pb.AgentIdentity) -> tuple[str, str]:
        region = require_region("agent.region", agent.region)
        incarnation = require_incarnation("agent.incarnation", agent.incarnation, self._host_clock.wall_ms())
        return region, self._center.require_issued(region, incarnation)

    @translate_errors
    async def Join(self, request: pb.JoinRequest, context: Context) -> pb.JoinResponse:
        region = require_region("region", request.region)
        replaces = require_id("replaces", request.replaces) if request.replaces else ""
        incarnation = self._center.join(region, replaces)
        return pb.JoinResponse(incarnation=incarnation, after_earlier_life=self._center.had_life(region))

    @translate_errors
    async def Acquire(self, request: pb.AcquireRequest, context: Context) -> pb.AcquireResponse:
        region, incarnation = self._identity(request.agent)
        result = await self._center.acquire(
            region=region,
            incarnation=incarnation,
            promotion_id=require_id("promotion_id", request.promotion_id),
            amount=require_amount("amount", request.amount),
            request_id=require_id("request_id", request.request_id),
            demand=clamp_demand("demand_per_minute", request.demand_per_minute),
        )
        return pb.AcquireResponse(
            grant=_grant_pb(result.grant),
            lease_ttl_ms=round(self._center.settings.lease_ttl_s * 1000),
            unallocated=result.unallocated,
        )

    @translate_errors
    async def AcquireOpenings(self, request: pb.AcquireOpeningsRequest, context: Context) -> pb.AcquireOpeningsResponse:
        region, incarnation = self._identity(request.agent)
        if not 0 < len(request.items) <= MAX_OPENINGS:
            raise InvalidArgument(f"items must hold 1 to {MAX_OPENINGS} openings, got {len(request.items)}")
        openings = [
            Opening(
                promotion_id=require_id("items.promotion_id", item.promotion_id),
                amount=require_amount("items.amount", item.amount),
                request_id=require_id("items.request_id", item.request_id),
            )
            for item in request.items
        ]
        require_unique("items.promotion_id", (o.promotion_id for o in openings))
        answers = await self._center.acquire_openings(region, incarnation, openings)
        outcomes = []
        for opening, answer in zip(openings, answers, strict=True):
            if isinstance(answer, QuotaError):
                outcomes.append(pb.OpeningOutcome(promotion_id=opening.promotion_id, refusal=answer.message))
            else:
                outcomes.append(pb.OpeningOutcome(promotion_id=opening.promotion_id, grant=_grant_pb(answer)))
        return pb.AcquireOpeningsResponse(
            outcomes=outcomes, lease_ttl_ms=round(self._center.settings.lease_ttl_s * 1000)
        )

    @translate_errors
    async def Renew(self, request: pb.RenewRequest, context: Context) -> pb.RenewResponse:
        region, incarnation = self._identity(request.agent)
        if len(request.counters) > MAX_RENEWAL:
            raise InvalidArgument(
                f"counters reports {len(request.counters)} promotions; at most {MAX_RENEWAL} are allowed per "
                "Renew: split the report into several calls"
            )
        require_unique("counters.promotion_id", (c.promotion_id for c in request.counters))
        reports = {require_id("counters.promotion_id", c.promotion_id): _report_from_pb(c) for c in request.counters}
        lease_ttl_ms = round(self._center.settings.lease_ttl_s * 1000)
        if not request.region_lease:
            # An agent older than the region lease: every promotion it wants renewed is in `counters`.
            answers = await self._center.renew(region, incarnation, reports)
            return pb.RenewResponse(
                lease_ttl_ms=lease_ttl_ms,
                directives=directives_to_pb(region, zip(reports, answers, strict=True)),
                emergency=emergency_to_pb(self._center.emergency),
            )
        since = require_counter("catalog_revision", request.catalog_revision)
        renewal = await self._center.renew_region(region, incarnation, reports, since, request.full, request.leaving)
        return pb.RenewResponse(
            lease_ttl_ms=lease_ttl_ms,
            directives=directives_to_pb(region, zip(reports, renewal.directives, strict=True)),
            emergency=emergency_to_pb(self._center.emergency),
            region_lease_ttl_ms=lease_ttl_ms if renewal.region_lease else 0,
            notices=directives_to_pb(region, ((n.promotion.id, n) for n in renewal.notices)),
            report_all=renewal.report_all,
        )

    @translate_errors
    async def Return(self, request: pb.ReturnRequest, context: Context) -> pb.ReturnResponse:
        region, incarnation = self._identity(request.agent)
        promotion_id = require_id("counters.promotion_id", request.counters.promotion_id)
        unallocated = await self._center.return_quota(
            region, incarnation, promotion_id, _report_from_pb(request.counters)
        )
        return pb.ReturnResponse(unallocated=unallocated)


SERVICES = tuple(service.full_name for service in pb.DESCRIPTOR.services_by_name.values())


def add_to_server(center: Center, server: grpc.aio.Server) -> None:
    add_decoding(pb_grpc.add_PromotionAdminServicer_to_server, PromotionAdminServicer(center), server)
    add_decoding(pb_grpc.add_AllocationServicer_to_server, AllocationServicer(center), server)
    add_decoding(pb_grpc.add_CatalogServicer_to_server, CatalogServicer(center), server)
