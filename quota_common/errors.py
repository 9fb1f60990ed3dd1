"""One error hierarchy for the center and the agents, mapped to gRPC codes in one place.

    QuotaError
    ├── InvalidArgument      INVALID_ARGUMENT     the request itself is wrong; fix it
    ├── NotFound             NOT_FOUND            no such promotion
    │   └── OrderUnknown     NOT_FOUND            no such order in this ledger life (which may follow a lost one)
    ├── AlreadyExists        ALREADY_EXISTS       the id is taken
    ├── FailedPrecondition   FAILED_PRECONDITION  valid, but not in the current state
    │   ├── Rejected         FAILED_PRECONDITION / RESOURCE_EXHAUSTED, with a RejectReason
    │   ├── OrderKeyReused   FAILED_PRECONDITION  the order key (or refund id) was used for another call
    │   ├── Superseded       FAILED_PRECONDITION  a newer agent process of the region replaced the caller;
    │   │                                         flagged by "quota-superseded" so the caller stops serving
    │   ├── RegionHeld       FAILED_PRECONDITION  another ledger life of the region holds a live lease (a Join);
    │   │                                         the lease's time left rides in "quota-region-held-ms"
    │   └── WrongGroup       FAILED_PRECONDITION  another center group serves the promotion; its name rides in
    │                                             "quota-shard-owner", the map's version in "quota-shard-version"
    ├── Exhausted            RESOURCE_EXHAUSTED   nothing left to grant
    ├── PermissionDenied     PERMISSION_DENIED    this region may not use this promotion
    └── Unavailable          UNAVAILABLE          try again (the center or the store is away)
        ├── NotLeader        UNAVAILABLE          a standby; the leader's address rides in "quota-leader"
        ├── LookupsSpent     UNAVAILABLE          an order named more unheard-of promotions than the agent looks up
        ├── LedgerLost       UNAVAILABLE          the region's Redis lost its data; the agent re-joins
        ├── LedgerUnreachable UNAVAILABLE         the ledger did not answer; a write may have applied
        └── NoQuotaInTime    UNAVAILABLE          no refill arrived before the deadline; nothing applied

Domain code raises these; servers translate them with `grpc_code`, and clients turn
status codes back into them with `from_grpc`. `Conflict` is internal: a compare-and-swap
lost a race and the caller retries on fresh state. `ConfigError` is no call's answer: it stops
a process at start (exit 2, one line).
"""

from __future__ import annotations

import enum

import grpc


class RejectReason(enum.Enum):
    """Why a deduction was refused; names match region_agent.v1.RejectReason."""

    EXHAUSTED = "REJECT_REASON_EXHAUSTED"
    FROZEN = "REJECT_REASON_FROZEN"
    NOT_ACTIVE = "REJECT_REASON_NOT_ACTIVE"
    USER_LIMIT = "REJECT_REASON_USER_LIMIT"
    LEASE_EXPIRED = "REJECT_REASON_LEASE_EXPIRED"
    REGION_NOT_ALLOWED = "REJECT_REASON_REGION_NOT_ALLOWED"
    RESERVATION_EXPIRED = "REJECT_REASON_RESERVATION_EXPIRED"
    OVER_ORDER_LIMIT = "REJECT_REASON_OVER_ORDER_LIMIT"
    BELOW_FLOOR = "REJECT_REASON_BELOW_FLOOR"


REJECT_REASON_METADATA_KEY = "quota-reject-reason"
LEADER_METADATA_KEY = "quota-leader"
SUPERSEDED_METADATA_KEY = "quota-superseded"
PENDING_METADATA_KEY = "quota-pending-change"
REGION_HELD_METADATA_KEY = "quota-region-held-ms"
SHARD_OWNER_METADATA_KEY = "quota-shard-owner"
SHARD_VERSION_METADATA_KEY = "quota-shard-version"
WARNINGS_METADATA_KEY = "quota-guard-warnings"
"""On a change the guard rules let through: one value per rule that fired (its name)."""


class QuotaError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(QuotaError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(QuotaError):
    code = grpc.StatusCode.NOT_FOUND


class PromotionUnknown(NotFound):
    """An order line names a promotion the center does not know (or did not, a moment ago)."""

    def __init__(self, message: str, promotion_id: str) -> None:
        super().__init__(message)
        self.promotion_id = promotion_id


class AlreadyExists(QuotaError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(QuotaError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Exhausted(QuotaError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class PermissionDenied(QuotaError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(QuotaError):
    code = grpc.StatusCode.UNAVAILABLE


class NotLeader(Unavailable):
    """This center replica is a standby; `leader` is where the leader serves, when known."""

    def __init__(self, leader: str | None) -> None:
        where = f"the leader is at {leader}" if leader else "no leader is known yet; retry shortly"
        super().__init__(f"this center replica is not the leader; {where}")
        self.leader = leader


class LookupsSpent(Unavailable):
    """An order named a promotion the agent has not heard of when it had looked up as many as it may for now;
    nothing was applied. `promotion_id`: that line's; `retry_after_s`: when the agent may look it up."""

    def __init__(self, message: str, promotion_id: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.promotion_id = promotion_id
        self.retry_after_s = retry_after_s


class LedgerLost(Unavailable):
    """The region's ledger store lost its data; the agent must join as a new incarnation."""


class LedgerUnreachable(Unavailable):
    """The region's ledger store did not answer. `may_have_applied`: the call was a write that may have run
    before the answer was lost (retry with the same key, or read the order), not a read."""

    def __init__(self, message: str, may_have_applied: bool) -> None:
        super().__init__(message)
        self.may_have_applied = may_have_applied


class NoQuotaInTime(Unavailable):
    """The order waited for a refill of its allotment that did not arrive before its deadline; nothing
    was applied. `promotion_id`: the (first) line whose allotment was short."""

    def __init__(self, message: str, promotion_id: str = "") -> None:
        super().__init__(message)
        self.promotion_id = promotion_id


class OrderUnknown(NotFound):
    """No order with this key in the ledger's life that began at `life_started_ms` (Unix ms; 0: not
    known here). `life_lost`: the region lost an earlier life, so the order may have been placed in it."""

    def __init__(self, message: str, life_started_ms: int = 0, life_lost: bool = False) -> None:
        super().__init__(message)
        self.life_started_ms = life_started_ms
        self.life_lost = life_lost


class OrderKeyReused(FailedPrecondition):
    """An order key (or a refund id) already used for a different call: the caller needs a new one."""


class Rejected(FailedPrecondition):
    """A deduction refused for a business reason the order service can show its user; `promotion_id`
    names the order line refused, when one was."""

    def __init__(self, reason: RejectReason, message: str, promotion_id: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.promotion_id = promotion_id
        if reason is RejectReason.EXHAUSTED:
            self.code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Superseded(FailedPrecondition):
    """The caller's ledger incarnation is older than the one the center knows for its region:
    another agent process of the region replaced it, and this one may never spend again."""


class RegionHeld(FailedPrecondition):
    """A Join refused: another ledger life of the region renewed its lease within the lease's time to live,
    so a process on another ledger (an in-process one, another Redis) would write its holdings off.
    `retry_after_s`: when that lease runs out unless its holder renews it again."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class WrongGroup(FailedPrecondition):
    """The promotion's slot belongs to another center group by the shard map of `map_version`: a caller
    whose map is older re-reads it and sends the call to `owner`."""

    def __init__(self, message: str, owner: str, map_version: int) -> None:
        super().__init__(message)
        self.owner = owner
        self.map_version = map_version

    @classmethod
    def of(cls, promotion_id: str, owner: str, map_version: int) -> WrongGroup:
        return cls(
            f"promotion {promotion_id!r} is served by center group {owner!r} (shard map version {map_version});"
            " re-read the shard map and call that group",
            owner,
            map_version,
        )


class Moving(Unavailable):
    """The promotion's slot is migrating to another center group: its regions are giving back what they hold,
    and grants resume at the target once it is handed over."""


class Held(FailedPrecondition):
    """A change a guard rule held for a second person's approval: nothing of it applies until then."""

    def __init__(self, pending_id: str, message: str) -> None:
        super().__init__(message)
        self.pending_id = pending_id


class Conflict(Exception):
    """A compare-and-swap lost to a concurrent writer; reread and retry."""


class ConfigError(Exception):
    """A process cannot start as configured (a bad setting, a busy port, a backend that does not
    answer, a store another process owns). Not a gRPC error: the `quota` command prints the
    message as one line and exits 2, so it must say what is wrong and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


_BY_CODE: dict[grpc.StatusCode, type[QuotaError]] = {
    cls.code: cls for cls in (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, Exhausted, PermissionDenied)
}


def code_name(code: grpc.StatusCode) -> str:
    return str(code.name)


def trailing(call: grpc.Call | grpc.aio.AioRpcError, key: str) -> str:
    """A trailing metadata value of a finished call (a reject reason, a leader's address); "" if absent."""
    return next((str(value) for name, value in call.trailing_metadata() or () if name == key), "")


def from_grpc(error: grpc.RpcError) -> QuotaError:
    """The QuotaError a failed call stands for; transport failures become Unavailable."""
    if isinstance(error, grpc.Call | grpc.aio.AioRpcError):
        code, details = error.code(), error.details() or code_name(error.code())
        if trailing(error, SUPERSEDED_METADATA_KEY):
            return Superseded(details)
        if (held_ms := trailing(error, REGION_HELD_METADATA_KEY)).isdigit():
            return RegionHeld(details, int(held_ms) / 1000)
        if owner := trailing(error, SHARD_OWNER_METADATA_KEY):
            version = trailing(error, SHARD_VERSION_METADATA_KEY)
            return WrongGroup(details, owner, int(version) if version.isdigit() else 0)
    else:
        code, details = grpc.StatusCode.UNKNOWN, str(error)
    return _BY_CODE.get(code, Unavailable)(details)
