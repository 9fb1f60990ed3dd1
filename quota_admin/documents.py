"""The center's alerts and held changes as plain documents: what `quota alerts` and `quota budget pending`
print (as tables or JSON) and the console's pages show, read the same way."""

from __future__ import annotations

from typing import Any

from quota_center.v1 import quota_center_pb2 as pb
from quota_common.clock import iso

CAUSES = {
    "false-alarm": pb.ALERT_CAUSE_FALSE_ALARM,
    "real-fixed": pb.ALERT_CAUSE_REAL_FIXED,
    "real-accepted": pb.ALERT_CAUSE_REAL_ACCEPTED,
}
CAUSE_NAMES = {value: name for name, value in CAUSES.items()}


def alert_document(alert: pb.Alert) -> dict[str, Any]:
    return {
        "id": alert.id,
        "rule": alert.rule,
        "rule_name": alert.rule_name,
        "promotion_id": alert.promotion_id,
        "region": alert.region,
        "message": alert.message,
        "raised_at": iso(alert.raised_at.ToMilliseconds()),
        "action": alert.action,
        "acknowledged": alert.acknowledged,
        "cause": CAUSE_NAMES.get(alert.cause, ""),
        "note": alert.note,
        "acknowledged_by": alert.acknowledged_by,
        "acknowledged_at": iso(alert.acknowledged_at.ToMilliseconds()) if alert.acknowledged else "",
        "deliveries": alert.deliveries,
    }


def pending_document(change: pb.PendingChange) -> dict[str, Any]:
    return {
        "id": change.id,
        "call": change.call,
        "promotion_id": change.promotion_id,
        "request": change.request_json,
        "requested_by": change.requested_by,
        "requested_at": iso(change.requested_at.ToMilliseconds()),
        "expires_at": iso(change.expires_at.ToMilliseconds()),
        "findings": list(change.findings),
        "state": change.state,
        "decided_by": change.decided_by,
        "reason": change.reason,
    }
