"""The client library order services call a region's quota agents with.

    from quota_client import AsyncQuotaClient, Line, Exhausted, Unavailable

    async with AsyncQuotaClient(["10.0.0.5:7443", "10.0.0.6:7443"], "eu", tls=Tls(cert, key, ca)) as quota:
        deducted = await quota.deduct("order-1", [Line("coupon-10", 1, "user-7")])

Results are frozen dataclasses (quota_client.model); every failure of a call is a QuotaClientError, one class
per reason (quota_client.errors draws the tree); a call on a closed client raises RuntimeError, and settings
out of range (a deadline of 0, say) ValueError. Retries and failover are quota_client.retry's. A region run as
several cells is called through AsyncCellsClient (quota_client.cells), which routes each order by its user.
"""

from quota_client.aio import AsyncQuotaClient
from quota_client.cells import AsyncCellsClient
from quota_client.connection import Tls
from quota_client.errors import (
    BelowFloor,
    DeadlineExceeded,
    Exhausted,
    Frozen,
    InvalidRequest,
    LeaseExpired,
    LedgerLifeLost,
    NotActive,
    OrderKeyReused,
    OrderUnknown,
    OverOrderLimit,
    PermissionDenied,
    QuotaClientError,
    Refused,
    RegionNotAllowed,
    ReservationExpired,
    Unavailable,
    UserLimit,
)
from quota_client.model import (
    Balance,
    Cancelled,
    CenterGroup,
    Confirmed,
    Deducted,
    Line,
    OrderState,
    OrderStatus,
    Refunded,
    RefundLine,
    RegionStatus,
    Reserved,
)
from quota_client.retry import RetryPolicy
from quota_client.sync import QuotaClient

__all__ = [
    "AsyncCellsClient",
    "AsyncQuotaClient",
    "Balance",
    "BelowFloor",
    "Cancelled",
    "CenterGroup",
    "Confirmed",
    "DeadlineExceeded",
    "Deducted",
    "Exhausted",
    "Frozen",
    "InvalidRequest",
    "LeaseExpired",
    "LedgerLifeLost",
    "Line",
    "NotActive",
    "OrderKeyReused",
    "OrderState",
    "OrderStatus",
    "OrderUnknown",
    "OverOrderLimit",
    "PermissionDenied",
    "QuotaClient",
    "QuotaClientError",
    "RefundLine",
    "Refunded",
    "Refused",
    "RegionNotAllowed",
    "RegionStatus",
    "ReservationExpired",
    "Reserved",
    "RetryPolicy",
    "Tls",
    "Unavailable",
    "UserLimit",
]
