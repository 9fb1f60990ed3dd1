"""What each page reads from the center, as the signed-in person, through the CLI's admin client.

The client is synchronous (one gRPC call at a time, following the leader); a page's independent reads run
side by side on worker threads, so a page costs its slowest read, not their sum.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from quota_admin.audit import changed, every_record, record_fields
from quota_admin.client import AdminClient
from quota_admin.documents import alert_document, pending_document
from quota_admin.usage import UsageReport, usage_from_pb
from quota_center.v1 import quota_center_pb2 as pb
from quota_center.v1 import quota_center_pb2_grpc as pb_grpc
from quota_center.wire import emergency_from_pb, promotion_from_pb
from quota_common.model import EmergencyFreeze, Promotion
from quota_console.figures import PromotionRow, burndown, promotion_state

T = TypeVar("T")
_ENDED_STATES = ("ended", "settled")
_SINCE_NOTHING = 2**62
"""A catalog revision beyond any: the catalog answers no promotion, only the emergency switch."""


async def off_loop(read: Callable[[], T]) -> T:
    return await asyncio.to_thread(read)


def _promotions(center: AdminClient) -> list[Promotion]:
    pages = center.every_group_page(
        lambda admin: admin.ListPromotions, lambda token: pb.ListPromotionsRequest(page_token=token)
    )
    return sorted((promotion_from_pb(p) for page in pages for p in page.promotions), key=lambda p: p.id)


def _usage(center: AdminClient, promotion_id: str) -> UsageReport:
    return usage_from_pb(center.call(lambda admin: admin.GetUsage, pb.GetUsageRequest(promotion_id=promotion_id)))


def _statement_state(center: AdminClient, promotion_id: str) -> str:
    request = pb.GetStatementRequest(promotion_id=promotion_id)
    return center.call(lambda admin: admin.GetStatement, request).state


def _alerts(center: AdminClient, promotion_id: str = "", include_acknowledged: bool = False) -> list[dict[str, Any]]:
    request = pb.ListAlertsRequest(promotion_id=promotion_id, include_acknowledged=include_acknowledged)
    answers = center.fan_out(lambda admin: admin.ListAlerts, request)
    return [alert_document(alert) for answer in answers for alert in answer.alerts]


def emergency(center: AdminClient, promotions: list[Promotion]) -> EmergencyFreeze:
    """The emergency switch, read where the agents read it: the catalog of any region (every answer carries
    the switch); off when no promotion names a region yet."""
    regions = [region for promotion in promotions for region in promotion.regions]
    if not regions:
        return EmergencyFreeze()
    request = pb.CatalogRequest(region=regions[0], since_revision=_SINCE_NOTHING)
    answer = center.call_service(pb_grpc.CatalogStub, lambda catalog: catalog.ListChanges, request)
    return emergency_from_pb(answer.emergency)


async def _row(
    center: AdminClient, promotion: Promotion, now_ms: int, switch: EmergencyFreeze, alerts: int
) -> PromotionRow:
    report = await off_loop(lambda: _usage(center, promotion.id))
    statement = ""
    if promotion.has_ended(now_ms) and not promotion.archived:
        statement = await off_loop(lambda: _statement_state(center, promotion.id))
    return PromotionRow(report, promotion_state(promotion, now_ms, statement, switch), alerts)


@dataclass(frozen=True)
class Overview:
    rows: list[PromotionRow]
    emergency: EmergencyFreeze
    open_alerts: int


async def overview(center: AdminClient, now_ms: int) -> Overview:
    """Every promotion not archived, with its usage and open alerts, and the emergency switch."""
    promotions, alerts = await asyncio.gather(off_loop(lambda: _promotions(center)), off_loop(lambda: _alerts(center)))
    switch = await off_loop(lambda: emergency(center, promotions))
    open_by_promotion = Counter(alert["promotion_id"] for alert in alerts)
    rows = await asyncio.gather(
        *(_row(center, promotion, now_ms, switch, open_by_promotion[promotion.id]) for promotion in promotions)
    )
    return Overview(list(rows), switch, len(alerts))


@dataclass(frozen=True)
class PromotionPage:
    row: PromotionRow
    alerts: list[dict[str, Any]]
    audit: list[dict[str, Any]]
    emergency: EmergencyFreeze


async def promotion_page(center: AdminClient, promotion_id: str, now_ms: int) -> PromotionPage:
    report, alerts, records = await asyncio.gather(
        off_loop(lambda: _usage(center, promotion_id)),
        off_loop(lambda: _alerts(center, promotion_id, include_acknowledged=True)),
        off_loop(lambda: every_record(center)),
    )
    switch = await off_loop(lambda: emergency(center, [report.promotion]))
    open_alerts = sum(not alert["acknowledged"] for alert in alerts)
    row = await _row(center, report.promotion, now_ms, switch, open_alerts)
    trail = [
        {**fields, "change": changed(fields)}
        for fields in map(record_fields, records)
        if fields.get("promotion_id") == promotion_id
    ]
    return PromotionPage(row, alerts, list(reversed(trail)), switch)


async def regions(center: AdminClient, promotion_id: str) -> UsageReport:
    """The live part of a promotion's page, read every few seconds."""
    return await off_loop(lambda: _usage(center, promotion_id))


async def burndown_data(center: AdminClient, promotion_id: str, now_ms: int) -> dict[str, Any]:
    history, promotion = await asyncio.gather(
        off_loop(lambda: center.call(lambda admin: admin.GetHistory, pb.GetHistoryRequest(promotion_id=promotion_id))),
        off_loop(
            lambda: promotion_from_pb(
                center.call(lambda admin: admin.GetPromotion, pb.GetPromotionRequest(promotion_id=promotion_id))
            )
        ),
    )
    return burndown(history, promotion, now_ms)


async def alerts(center: AdminClient, include_acknowledged: bool) -> list[dict[str, Any]]:
    return await off_loop(lambda: _alerts(center, include_acknowledged=include_acknowledged))


async def pending(center: AdminClient) -> list[dict[str, Any]]:
    answers = await off_loop(lambda: center.fan_out(lambda admin: admin.ListPending, pb.ListPendingRequest()))
    return [pending_document(change) for answer in answers for change in answer.changes]
