"""The shared model on the center's wire: promotions and the emergency switch to and from their protobuf
messages. The one mapping of the `quota_center.v1` API that its clients use as well (the agent's gRPC adapter
to the center, the budget commands); it imports nothing of the center but the generated API.
"""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from quota_center.v1 import quota_center_pb2 as pb
from quota_common.errors import InvalidArgument
from quota_common.model import EmergencyFreeze, Kind, Promotion
from quota_common.policy import Pacing
from quota_common.validation import (
    require_amount,
    require_bounded_text,
    require_counter,
    require_id,
    require_optional_amount,
    require_regions,
    require_text,
)

_KINDS = {pb.PROMOTION_KIND_COUNT: Kind.COUNT, pb.PROMOTION_KIND_AMOUNT: Kind.AMOUNT}
_KIND_NAMES = {kind: value for value, kind in _KINDS.items()}
_PACINGS = {
    pb.PACING_UNSPECIFIED: Pacing.NONE,
    pb.PACING_LINEAR: Pacing.LINEAR,
    pb.PACING_HOURLY_CAP: Pacing.HOURLY_CAP,
}
_PACING_NAMES = {pacing: value for value, pacing in _PACINGS.items()}
# The range google.protobuf.Timestamp defines; beyond it the protobuf runtime refuses to convert.
_FIRST_SECOND, _LAST_SECOND = -62_135_596_800, 253_402_300_799


def promotion_to_pb(promotion: Promotion) -> pb.Promotion:
    start, end = Timestamp(), Timestamp()
    start.FromMilliseconds(promotion.start_ms)
    end.FromMilliseconds(promotion.end_ms)
    return pb.Promotion(
        id=promotion.id,
        kind=_KIND_NAMES[promotion.kind],
        currency=promotion.currency,
        budget=promotion.budget,
        start_time=start,
        end_time=end,
        regions=list(promotion.regions),
        frozen=promotion.frozen,
        revision=promotion.revision,
        per_user_limit=promotion.per_user_limit,
        per_user_orders=promotion.per_user_orders,
        pacing=_PACING_NAMES[promotion.pacing],
        hourly_cap=promotion.hourly_cap,
        owner=promotion.owner,
        face_value=promotion.face_value,
        min_spend=promotion.min_spend,
        discount_bps=promotion.discount_bps,
        max_per_order=promotion.max_per_order,
        floor_price=promotion.floor_price,
        floor_bps=promotion.floor_bps,
        block_below_floor=promotion.block_below_floor,
        archived=promotion.archived,
    )


def promotion_from_pb(message: pb.Promotion) -> Promotion:
    """Validates a promotion's fields; cross-field rules live in the ledger."""
    if message.kind not in _KINDS:
        raise InvalidArgument("kind must be PROMOTION_KIND_COUNT or PROMOTION_KIND_AMOUNT")
    if message.pacing not in _PACINGS:
        raise InvalidArgument("pacing must be PACING_UNSPECIFIED, PACING_LINEAR or PACING_HOURLY_CAP")
    if not (message.HasField("start_time") and message.HasField("end_time")):
        raise InvalidArgument("start_time and end_time are required")
    return Promotion(
        id=require_id("promotion.id", message.id),
        kind=_KINDS[message.kind],
        currency=require_text("currency", message.currency),
        budget=require_amount("budget", message.budget),
        start_ms=_milliseconds("start_time", message.start_time),
        end_ms=_milliseconds("end_time", message.end_time),
        regions=require_regions("regions", message.regions),
        frozen=message.frozen,
        revision=max(message.revision, 1),
        per_user_limit=require_counter("per_user_limit", message.per_user_limit),
        per_user_orders=require_counter("per_user_orders", message.per_user_orders),
        pacing=_PACINGS[message.pacing],
        hourly_cap=require_counter("hourly_cap", message.hourly_cap),
        owner=require_bounded_text("owner", message.owner, MAX_OWNER_BYTES),
        face_value=require_optional_amount("face_value", message.face_value),
        min_spend=require_optional_amount("min_spend", message.min_spend),
        discount_bps=_basis_points("discount_bps", message.discount_bps),
        max_per_order=require_optional_amount("max_per_order", message.max_per_order),
        floor_price=require_optional_amount("floor_price", message.floor_price),
        floor_bps=_basis_points("floor_bps", message.floor_bps),
        block_below_floor=message.block_below_floor,
        archived=message.archived,
    )


MAX_OWNER_BYTES = 2048
"""A SPIFFE ID: the scheme, a trust domain of at most 255 bytes and a path of a few bounded segments."""


def _basis_points(field: str, value: int) -> int:
    if not 0 <= value <= 10_000:
        raise InvalidArgument(f"{field} must be within 0..10000 (basis points: 1500 is 15 %), got {value}")
    return value


def _milliseconds(field: str, moment: Timestamp) -> int:
    """A timestamp within what google.protobuf.Timestamp allows, as epoch milliseconds."""
    if not _FIRST_SECOND <= moment.seconds <= _LAST_SECOND:
        raise InvalidArgument(
            f"{field}.seconds must be within {_FIRST_SECOND}..{_LAST_SECOND} "
            f"(0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z), got {moment.seconds}"
        )
    if not 0 <= moment.nanos < 1_000_000_000:
        raise InvalidArgument(f"{field}.nanos must be within 0..999999999, got {moment.nanos}")
    return moment.ToMilliseconds()


def emergency_to_pb(emergency: EmergencyFreeze) -> pb.EmergencyFreeze:
    return pb.EmergencyFreeze(
        everywhere=emergency.everywhere, regions=sorted(emergency.regions), revision=emergency.revision
    )


def emergency_from_pb(message: pb.EmergencyFreeze) -> EmergencyFreeze:
    return EmergencyFreeze(message.everywhere, frozenset(message.regions), message.revision)
