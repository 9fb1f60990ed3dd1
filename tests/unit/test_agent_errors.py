"""The agent's rich error detail: reason, may_have_applied and retry-after per error (region_agent.errors)."""

from __future__ import annotations

import pytest

from quota_common.errors import (
    FailedPrecondition,
    InvalidArgument,
    LedgerLost,
    LedgerUnreachable,
    LookupsSpent,
    NoQuotaInTime,
    NotFound,
    OrderKeyReused,
    OrderUnknown,
    PermissionDenied,
    QuotaError,
    Rejected,
    RejectReason,
    Unavailable,
)
from quota_common.rpc import ErrorDetail
from region_agent.errors import DOMAIN, RetryAfter, describe

RETRY = RetryAfter(lease_ms=3_000, refill_ms=500, not_serving_ms=1_000)
NO = {"may_have_applied": "false"}

CASES = [
    pytest.param(
        Rejected(RejectReason.FROZEN, "frozen", "promo"),
        ErrorDetail(DOMAIN, "REJECT_REASON_FROZEN", {**NO, "promotion_id": "promo"}),
        id="refused-line",
    ),
    pytest.param(
        Rejected(RejectReason.LEASE_EXPIRED, "lease", "promo"),
        ErrorDetail(DOMAIN, "REJECT_REASON_LEASE_EXPIRED", {**NO, "promotion_id": "promo"}, 3_000),
        id="lease-expired-clears-by-itself",
    ),
    pytest.param(
        Rejected(RejectReason.RESERVATION_EXPIRED, "too late"),
        ErrorDetail(DOMAIN, "REJECT_REASON_RESERVATION_EXPIRED", NO),
        id="no-line",
    ),
    pytest.param(
        OrderUnknown("gone", life_started_ms=1_700_000_000_000, life_lost=True),
        ErrorDetail(DOMAIN, "LEDGER_LIFE_LOST", {**NO, "ledger_life_started_ms": "1700000000000"}),
        id="life-lost",
    ),
    pytest.param(
        OrderUnknown("never", life_started_ms=5),
        ErrorDetail(DOMAIN, "ORDER_UNKNOWN", {**NO, "ledger_life_started_ms": "5"}),
        id="order-unknown",
    ),
    pytest.param(
        LedgerUnreachable("redis dropped mid-script", may_have_applied=True),
        ErrorDetail(DOMAIN, "LEDGER_UNAVAILABLE", {"may_have_applied": "true"}),
        id="ledger-write-lost",
    ),
    pytest.param(
        LedgerUnreachable("redis down for a read", may_have_applied=False),
        ErrorDetail(DOMAIN, "LEDGER_UNAVAILABLE", NO),
        id="ledger-read-lost",
    ),
    pytest.param(LedgerLost("lost"), ErrorDetail(DOMAIN, "LEDGER_UNAVAILABLE", NO), id="ledger-life-ended"),
    pytest.param(NoQuotaInTime("late"), ErrorDetail(DOMAIN, "NO_QUOTA_IN_TIME", NO, 500), id="no-refill-in-time"),
    pytest.param(Unavailable("center away"), ErrorDetail(DOMAIN, "NOT_SERVING", NO, 1_000), id="not-serving"),
    pytest.param(
        LookupsSpent("too many unheard-of", "random-7", 0.0125),
        ErrorDetail(DOMAIN, "NOT_SERVING", {**NO, "promotion_id": "random-7"}, 13),
        id="lookups-spent",
    ),
    pytest.param(OrderKeyReused("other lines"), ErrorDetail(DOMAIN, "ORDER_KEY_REUSED", NO), id="key-reused"),
    pytest.param(PermissionDenied("not yours"), ErrorDetail(DOMAIN, "NOT_PLACER", NO), id="not-placer"),
    pytest.param(InvalidArgument("bad"), ErrorDetail(DOMAIN, "INVALID_REQUEST", NO), id="invalid"),
    pytest.param(NotFound("no promotion"), ErrorDetail(DOMAIN, "INVALID_REQUEST", NO), id="unknown-promotion"),
    pytest.param(FailedPrecondition("refund more"), ErrorDetail(DOMAIN, "INVALID_REQUEST", NO), id="state"),
]


@pytest.mark.parametrize(("error", "detail"), CASES)
def test_each_error_has_its_reason_and_says_whether_it_may_have_applied(error: QuotaError, detail: ErrorDetail) -> None:
    assert describe(error, RETRY) == detail


def test_only_a_write_the_ledger_did_not_answer_may_have_applied() -> None:
    errors = [error for case in CASES if isinstance(error := case.values[0], QuotaError)]
    may = [error for error in errors if describe(error, RETRY).metadata["may_have_applied"] == "true"]

    assert len(may) == 1
    assert isinstance(may[0], LedgerUnreachable)
