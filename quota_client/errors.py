"""What a call to a region's agent can fail with: one exception per reason, all under QuotaClientError.

    QuotaClientError                 the agent's message; `reason`, `promotion_id`, `code` when known
    ├── Refused                      a business refusal: show it to the user, never retry it
    │   ├── Exhausted                the budget (or what the region could get of it) is spent
    │   ├── Frozen                   the budget owner (or the emergency switch) froze the promotion
    │   ├── NotActive                outside the promotion's window, or it is archived
    │   ├── UserLimit                the user reached the promotion's per-user limit
    │   ├── LeaseExpired             the region lost touch with the center; clears by itself (`retry_after`)
    │   ├── RegionNotAllowed         the promotion may not be spent in this region
    │   ├── ReservationExpired       Confirm after the reservation's deadline
    │   ├── OverOrderLimit           a line asks more units than one order may take
    │   └── BelowFloor               a line's price after its discount is below the promotion's floor
    ├── OrderKeyReused               the order key names another order (other lines, a reservation, ...)
    ├── OrderUnknown                 no such order in this ledger life (`ledger_life_started_ms`)
    ├── LedgerLifeLost               the order may be from a ledger life that was lost: reconcile, do not retry
    ├── PermissionDenied             another identity placed the order, or this one may not call the agent
    ├── InvalidRequest               the request itself is wrong; fix it
    └── Unavailable                  no answer: `may_have_applied` says whether the call may have changed
        └── DeadlineExceeded         the ledger; if so, retry with the same order key or ask `get_order`
                                     (never a new key); the call's deadline passed without an answer

`error_from_status` reads an error from a finished call: the google.rpc.ErrorInfo of gRPC's rich error
model when the agent sends one (region_agent.proto's header), else, for agents from before it, the
"quota-reject-reason" trailing metadata and the status code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import grpc
from google.protobuf.message import DecodeError
from google.rpc.error_details_pb2 import ErrorInfo, RetryInfo
from google.rpc.status_pb2 import Status

DOMAIN = "quota.region_agent.v1"
DETAILS_KEY = "grpc-status-details-bin"
"""Where gRPC's rich error model travels: a serialized google.rpc.Status in the trailing metadata."""
REJECT_REASON_KEY = "quota-reject-reason"
"""Where agents from before the rich error model put a refusal's reason."""

Metadata = Iterable[tuple[str, str | bytes]]


class QuotaClientError(Exception):
    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        promotion_id: str = "",
        may_have_applied: bool = False,
        retry_after: float | None = None,
        ledger_life_started_ms: int = 0,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        """The gRPC status the agent answered; None when no agent answered."""
        self.reason = reason
        """The ErrorInfo reason (a RejectReason name for a refusal); "" when the agent sent none."""
        self.promotion_id = promotion_id
        """The refused line's promotion; "" when the error is not about one line."""
        self.may_have_applied = may_have_applied
        """The call may have changed the ledger: retry with the same order key or ask get_order."""
        self.retry_after = retry_after
        """Seconds worth waiting before the same call may succeed (a refusal that clears by itself)."""
        self.ledger_life_started_ms = ledger_life_started_ms
        """With OrderUnknown and LedgerLifeLost: when the ledger life that answered began (Unix ms)."""


class Refused(QuotaClientError):
    """A refusal for a business reason the order service can show its user; retrying it changes nothing."""


class Exhausted(Refused): ...


class Frozen(Refused): ...


class NotActive(Refused): ...


class UserLimit(Refused): ...


class LeaseExpired(Refused): ...


class RegionNotAllowed(Refused): ...


class ReservationExpired(Refused): ...


class OverOrderLimit(Refused): ...


class BelowFloor(Refused): ...


class OrderKeyReused(QuotaClientError): ...


class OrderUnknown(QuotaClientError): ...


class LedgerLifeLost(QuotaClientError): ...


class PermissionDenied(QuotaClientError): ...


class InvalidRequest(QuotaClientError): ...


class Unavailable(QuotaClientError): ...


class DeadlineExceeded(Unavailable): ...


_REFUSALS: dict[str, type[Refused]] = {
    "REJECT_REASON_EXHAUSTED": Exhausted,
    "REJECT_REASON_FROZEN": Frozen,
    "REJECT_REASON_NOT_ACTIVE": NotActive,
    "REJECT_REASON_USER_LIMIT": UserLimit,
    "REJECT_REASON_LEASE_EXPIRED": LeaseExpired,
    "REJECT_REASON_REGION_NOT_ALLOWED": RegionNotAllowed,
    "REJECT_REASON_RESERVATION_EXPIRED": ReservationExpired,
    "REJECT_REASON_OVER_ORDER_LIMIT": OverOrderLimit,
    "REJECT_REASON_BELOW_FLOOR": BelowFloor,
}
_BY_REASON: dict[str, type[QuotaClientError]] = _REFUSALS | {
    "ORDER_KEY_REUSED": OrderKeyReused,
    "ORDER_UNKNOWN": OrderUnknown,
    "LEDGER_LIFE_LOST": LedgerLifeLost,
    "NOT_PLACER": PermissionDenied,
    "INVALID_REQUEST": InvalidRequest,
    "LEDGER_UNAVAILABLE": Unavailable,
    "NO_QUOTA_IN_TIME": Unavailable,
    "NOT_SERVING": Unavailable,
}
_BY_CODE: dict[grpc.StatusCode, type[QuotaClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequest,
    grpc.StatusCode.NOT_FOUND: OrderUnknown,
    # Older agents answer every misuse of an order key (other lines, deduct a reservation, confirm a
    # deduction, a refund id with other lines) FAILED_PRECONDITION without a reason.
    grpc.StatusCode.FAILED_PRECONDITION: OrderKeyReused,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}
_UNIMPLEMENTED = "; this agent does not serve the call (it is older than this client): upgrade the region's agents"


def error_from_status(
    code: grpc.StatusCode, details: str, trailing: Metadata | None, promotions: Sequence[str] = ()
) -> QuotaClientError:
    """The error a call that ended with `code`, `details` and `trailing` metadata stands for. `promotions`:
    the order's lines' promotions, so that an older agent's refusal of a one-line order names its promotion."""
    metadata = tuple(trailing or ())
    info, retry_after = _rich_details(metadata)
    if info is not None and info.domain == DOMAIN and info.reason in _BY_REASON:
        return error_from_detail(code, details, info.reason, info.metadata, retry_after)
    reason = next((str(value) for key, value in metadata if key == REJECT_REASON_KEY), "")
    if reason in _REFUSALS:
        only = promotions[0] if len(promotions) == 1 else ""
        return _REFUSALS[reason](details, code=code, reason=reason, promotion_id=only)
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return QuotaClientError(details + _UNIMPLEMENTED, code=code)
    cls = _BY_CODE.get(code, Unavailable)
    return cls(details, code=code, may_have_applied=_may_have_applied(code, details))


def error_from_detail(
    code: grpc.StatusCode, details: str, reason: str, metadata: Mapping[str, str], retry_after: float | None
) -> QuotaClientError:
    """The error an agent's rich error detail (`reason`, one of the domain's, with its ErrorInfo `metadata`)
    stands for, whether it came over the wire or from an agent in this process."""
    return _BY_REASON[reason](
        details,
        code=code,
        reason=reason,
        promotion_id=metadata.get("promotion_id", ""),
        may_have_applied=metadata.get("may_have_applied") == "true",
        retry_after=retry_after,
        ledger_life_started_ms=int(metadata.get("ledger_life_started_ms", "0") or 0),
    )


def _may_have_applied(code: grpc.StatusCode, details: str) -> bool:
    """Without the agent's word: only a call that never reached an agent surely changed nothing. A deadline,
    a connection lost mid-call, or an older agent's UNAVAILABLE (its Redis lost mid-script) may have."""
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return "failed to connect" not in details.lower()
    return code not in _BY_CODE and code is not grpc.StatusCode.UNIMPLEMENTED


def _rich_details(metadata: Metadata) -> tuple[ErrorInfo | None, float | None]:
    """The ErrorInfo and the RetryInfo delay (seconds) of the call's google.rpc.Status, when it carries them."""
    raw = next((value for key, value in metadata if key == DETAILS_KEY), None)
    if not isinstance(raw, bytes):
        return None, None
    try:
        status = Status.FromString(raw)
    except DecodeError:
        return None, None
    info, retry = ErrorInfo(), RetryInfo()
    has_info = has_retry = False
    for detail in status.details:
        # Unpack is false, and fills nothing, for a detail of another type.
        has_info = detail.Unpack(info) or has_info
        has_retry = detail.Unpack(retry) or has_retry
    return (info if has_info else None), (retry.retry_delay.ToTimedelta().total_seconds() if has_retry else None)
