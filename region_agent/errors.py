"""The agent's errors in gRPC's rich error model: reason, may_have_applied and retry-after, decided here.

The contract is the header of `proto/region_agent/v1/region_agent.proto`. `may_have_applied` is "true" only
where the ledger was asked to write and did not answer (the region's Redis dropped the connection or timed
out around the call): the write may have run before its answer was lost. Every other refusal is decided
before the ledger writes, or by the ledger having changed nothing, so it is "false".

    error                         reason                          may_have_applied  retry-after
    Rejected                      its RejectReason name           false             LEASE_EXPIRED only
    OrderUnknown (life lost)      LEDGER_LIFE_LOST                false
    OrderUnknown                  ORDER_UNKNOWN                   false
    OrderKeyReused                ORDER_KEY_REUSED                false
    PermissionDenied              NOT_PLACER                      false
    NoQuotaInTime                 NO_QUOTA_IN_TIME                false             yes
    LedgerUnreachable             LEDGER_UNAVAILABLE              a write: true
    LedgerLost                    LEDGER_UNAVAILABLE              false (the script wrote nothing)
    LookupsSpent                  NOT_SERVING                     false             until the next lookup
    any other Unavailable         NOT_SERVING                     false             yes
    anything else                 INVALID_REQUEST                 false

`promotion_id` names the order line the error is about: a Rejected line's, the first short line's of
NO_QUOTA_IN_TIME, an unknown promotion's (NOT_FOUND, INVALID_REQUEST), the line not looked up (LookupsSpent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from quota_common.errors import (
    LedgerLost,
    LedgerUnreachable,
    LookupsSpent,
    NoQuotaInTime,
    OrderKeyReused,
    OrderUnknown,
    PermissionDenied,
    PromotionUnknown,
    QuotaError,
    Rejected,
    RejectReason,
    Unavailable,
)
from quota_common.rpc import ErrorDetail

DOMAIN = "quota.region_agent.v1"


@dataclass(frozen=True)
class RetryAfter:
    """How long a refusal that clears by itself is worth waiting for, in ms."""

    lease_ms: int = 3_000
    """LEASE_EXPIRED: until the next renewal may bring the lease back (the agent's renew interval)."""
    refill_ms: int = 500
    """NO_QUOTA_IN_TIME: a refill in flight usually lands within a center round trip or two."""
    not_serving_ms: int = 1_000
    """NOT_SERVING: the agent (or the center it needed) is away for a moment."""


def describe(error: QuotaError, retry: RetryAfter) -> ErrorDetail:
    """The rich error detail of an agent's refusal."""
    if isinstance(error, Rejected):
        metadata = {"may_have_applied": "false"}
        if error.promotion_id:
            metadata["promotion_id"] = error.promotion_id
        wait = retry.lease_ms if error.reason is RejectReason.LEASE_EXPIRED else 0
        return ErrorDetail(DOMAIN, error.reason.value, metadata, wait)
    if isinstance(error, OrderUnknown):
        reason = "LEDGER_LIFE_LOST" if error.life_lost else "ORDER_UNKNOWN"
        return _detail(reason, ledger_life_started_ms=str(error.life_started_ms))
    if isinstance(error, LedgerUnreachable):
        return _detail("LEDGER_UNAVAILABLE", applied=error.may_have_applied)
    if isinstance(error, NoQuotaInTime):
        return _detail("NO_QUOTA_IN_TIME", retry_after_ms=retry.refill_ms, promotion_id=error.promotion_id)
    if isinstance(error, LedgerLost):
        return _detail("LEDGER_UNAVAILABLE")
    if isinstance(error, LookupsSpent):
        wait_ms = max(1, math.ceil(error.retry_after_s * 1000))
        return _detail("NOT_SERVING", retry_after_ms=wait_ms, promotion_id=error.promotion_id)
    if isinstance(error, Unavailable):
        return _detail("NOT_SERVING", retry_after_ms=retry.not_serving_ms)
    if isinstance(error, OrderKeyReused):
        return _detail("ORDER_KEY_REUSED")
    if isinstance(error, PermissionDenied):
        return _detail("NOT_PLACER")
    if isinstance(error, PromotionUnknown):
        return _detail("INVALID_REQUEST", promotion_id=error.promotion_id)
    return _detail("INVALID_REQUEST")


def _detail(
    reason: str, applied: bool = False, retry_after_ms: int = 0, promotion_id: str = "", **metadata: str
) -> ErrorDetail:
    """`promotion_id`: the order line the error is about, when it names one."""
    named = {"promotion_id": promotion_id} if promotion_id else {}
    return ErrorDetail(DOMAIN, reason, {"may_have_applied": str(applied).lower(), **named, **metadata}, retry_after_ms)
