"""The center's audit trail as people read it: every record, what it says, and what it changed. The chain
itself is checked by the reader (quota_center.audit.verify), never vouched for by the center."""

from __future__ import annotations

import json
from typing import Any

from quota_admin.client import AdminClient, every_page
from quota_center.audit import AuditRecord
from quota_center.v1 import quota_center_pb2 as pb


def every_record(center: AdminClient) -> list[AuditRecord]:
    pages = every_page(lambda token: center.call(lambda admin: admin.ListAudit, pb.ListAuditRequest(page_token=token)))
    return [AuditRecord(record.seq, record.body, record.hash) for page in pages for record in page.records]


def record_fields(record: AuditRecord) -> dict[str, Any]:
    """What a record says, or only where it is when its body is not even JSON (verification says why)."""
    try:
        return record.fields()
    except ValueError:
        return {"seq": record.seq}


def changed(fields: dict[str, Any]) -> str:
    """The keys whose values differ, before -> after; "created" for a creation."""
    before, after = fields.get("before"), fields.get("after") or {}
    if not isinstance(before, dict):
        return "created"
    keys = sorted(key for key in set(before) | set(after) if before.get(key) != after.get(key))
    return ", ".join(f"{key}: {json.dumps(before.get(key))} -> {json.dumps(after.get(key))}" for key in keys)
