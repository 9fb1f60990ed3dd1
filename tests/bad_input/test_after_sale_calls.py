"""Bad input to the calls issue 22 added after a sale (alerts, statements, history, archive): precise status,
a message naming the field, and nothing changed, however large or repeated the input."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_testing.bad_calls import BAD_IDS, FAILED, INVALID, NOT_FOUND, World, rejected, unchanged

Request = center_pb.AcknowledgeAlertRequest


def _ack(alert_id: str = "A-1", cause: int = center_pb.ALERT_CAUSE_FALSE_ALARM, note: str = "") -> Request:
    return center_pb.AcknowledgeAlertRequest(alert_id=alert_id, cause=cause, note=note)  # type: ignore[arg-type]  # 99 too


@pytest.mark.parametrize(("alert_id", "fragment"), BAD_IDS)
async def test_an_acknowledgement_needs_a_valid_alert_id(granted: World, alert_id: str, fragment: str) -> None:
    async with unchanged(granted):
        await rejected(granted.admin.AcknowledgeAlert(_ack(alert_id), timeout=5), INVALID, "alert_id", fragment)


@pytest.mark.parametrize(
    ("request_fields", "code", "fragment"),
    [
        pytest.param({"cause": center_pb.ALERT_CAUSE_UNSPECIFIED}, INVALID, "cause", id="no-cause"),
        pytest.param({"cause": 99}, INVALID, "cause", id="unknown-cause"),
        pytest.param({"note": "n" * 2_001}, INVALID, "note", id="note-2001-bytes"),
        pytest.param({"alert_id": "A-404"}, NOT_FOUND, "no alert 'A-404'", id="unknown-alert"),
    ],
)
async def test_a_bad_acknowledgement_is_refused_and_changes_nothing(
    granted: World, request_fields: dict[str, Any], code: grpc.StatusCode, fragment: str
) -> None:
    async with unchanged(granted):
        for _ in range(2):  # a retry of a refused call is refused the same way
            await rejected(granted.admin.AcknowledgeAlert(_ack(**request_fields), timeout=5), code, fragment)
    assert (await granted.admin.ListAlerts(center_pb.ListAlertsRequest(include_acknowledged=True))).alerts == []


@pytest.mark.parametrize(("promotion_id", "fragment"), BAD_IDS)
async def test_statement_history_archive_and_alerts_need_a_valid_promotion_id(
    granted: World, promotion_id: str, fragment: str
) -> None:
    admin = granted.admin
    async with unchanged(granted):
        await rejected(admin.GetStatement(center_pb.GetStatementRequest(promotion_id=promotion_id)), INVALID, fragment)
        await rejected(admin.GetHistory(center_pb.GetHistoryRequest(promotion_id=promotion_id)), INVALID, fragment)
        archive = center_pb.ArchivePromotionRequest(promotion_id=promotion_id)
        await rejected(admin.ArchivePromotion(archive), INVALID, fragment)
        if promotion_id:  # an empty filter lists every promotion's alerts
            await rejected(admin.ListAlerts(center_pb.ListAlertsRequest(promotion_id=promotion_id)), INVALID, fragment)


async def test_unknown_promotions_are_not_found_and_an_unsettled_one_is_not_archived(granted: World) -> None:
    admin = granted.admin
    async with unchanged(granted):
        await rejected(admin.GetStatement(center_pb.GetStatementRequest(promotion_id="nope")), NOT_FOUND, "nope")
        await rejected(admin.GetHistory(center_pb.GetHistoryRequest(promotion_id="nope")), NOT_FOUND, "nope")
        await rejected(
            admin.ArchivePromotion(center_pb.ArchivePromotionRequest(promotion_id="nope")), NOT_FOUND, "nope"
        )
        for _ in range(2):
            await rejected(
                admin.ArchivePromotion(center_pb.ArchivePromotionRequest(promotion_id="promo")), FAILED, "settle"
            )
