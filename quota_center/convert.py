"""Protobuf <-> domain conversions for the center's messages, shared by servers and clients."""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.timestamp_pb2 import Timestamp

from quota_center.catalog import EmergencyFreeze
from quota_center.errors import InvalidArgument, QuotaError
from quota_center.ledger import Kind, Promotion
from quota_center.paging import within_bytes
from quota_center.policy import Pacing
from quota_center.service import CatalogPage, Directive, UsageView
from quota_center.v1 import quota_center_pb2 as pb
from quota_center.validation import cut, require_amount, require_counter, require_id, require_regions, require_text

_KINDS = {pb.PROMOTION_KIND_COUNT: Kind.COUNT, pb.PROMOTION_KIND_AMOUNT: Kind.AMOUNT}
_KIND_NAMES = {kind: value for value, kind in _KINDS.items()}
_PACINGS = {
    pb.PACING_UNSPECIFIED: Pacing.NONE,
    pb.PACING_LINEAR: Pacing.LINEAR,
    pb.PACING_HOURLY_CAP: Pacing.HOURLY_CAP,
}
_PACING_NAMES = {pacing: value for value, pacing in _PACINGS.items()}
RENEWAL_GRANTS = 1000
"""Unapplied grants one Renew answer carries, over all its promotions (each may resend
ledger.RECENT_GRANTS_KEPT of about 300 bytes). Those left out follow in later answers: the agent's
report counts less than was granted until it applies them."""
REFUSAL_BYTES = 512
"""How much of the reason a refused promotion's directive carries; the promotion's id is beside it."""
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
    )


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


def usage_to_pb(usage: UsageView) -> pb.Usage:
    regions = []
    for view in usage.regions:
        account = view.account
        if view.lease_active is None:
            lease = pb.LEASE_STATE_NONE
        else:
            lease = pb.LEASE_STATE_ACTIVE if view.lease_active else pb.LEASE_STATE_EXPIRED
        regions.append(
            pb.RegionUsage(
                region=view.region,
                granted=account.total_granted,
                returned=account.total_returned,
                consumed=account.consumed,
                written_off=account.written_off,
                held=account.held,
                lease_state=lease,
                demand_per_minute=view.demand_per_minute,
            )
        )
    return pb.Usage(promotion=promotion_to_pb(usage.promotion), unallocated=usage.unallocated, regions=regions)


def emergency_to_pb(emergency: EmergencyFreeze) -> pb.EmergencyFreeze:
    return pb.EmergencyFreeze(
        everywhere=emergency.everywhere, regions=sorted(emergency.regions), revision=emergency.revision
    )


def emergency_from_pb(message: pb.EmergencyFreeze) -> EmergencyFreeze:
    return EmergencyFreeze(message.everywhere, frozenset(message.regions), message.revision)


def catalog_page_to_pb(page: CatalogPage, max_bytes: int) -> pb.CatalogChanges:
    """The page as one message of at most about `max_bytes`. Promotions beyond that wait for the
    next page: the cursor then stops at the last one sent, so resuming from it skips nothing."""
    message = pb.CatalogChanges(emergency=emergency_to_pb(page.emergency), revision=page.revision, more=page.more)
    promotions, left_out = within_bytes((promotion_to_pb(p) for p in page.promotions), max_bytes - message.ByteSize())
    message.promotions.extend(promotions)
    if left_out:
        message.revision, message.more = promotions[-1].revision, True
    return message


def directives_to_pb(region: str, answers: Iterable[tuple[str, Directive | QuotaError]]) -> list[pb.PromotionDirective]:
    """The Renew answer's directives, one per (promotion id, answer) in order, bounded so that the
    answer to MAX_RENEWAL promotions stays far below 4 MiB: RENEWAL_GRANTS unapplied grants in all,
    REFUSAL_BYTES of each refusal."""
    directives = []
    grants_left = RENEWAL_GRANTS
    for promotion_id, answer in answers:
        directive = _directive_pb(region, promotion_id, answer, grants_left)
        grants_left -= len(directive.unapplied_grants)
        directives.append(directive)
    return directives


def _directive_pb(
    region: str, promotion_id: str, answer: Directive | QuotaError, max_grants: int
) -> pb.PromotionDirective:
    if isinstance(answer, QuotaError):
        return pb.PromotionDirective(promotion_id=promotion_id, refusal=cut(answer.message, REFUSAL_BYTES))
    promotion = answer.promotion
    return pb.PromotionDirective(
        promotion_id=promotion.id,
        frozen=promotion.frozen,
        reclaim=answer.reclaim,
        unapplied_grants=[
            pb.Grant(grant_id=grant_id, promotion_id=promotion.id, region=region, amount=amount)
            for grant_id, amount in answer.unapplied_grants[:max_grants]
        ],
        revision=promotion.revision,
        exhausted=answer.exhausted,
    )
