"""Protobuf <-> domain conversions for the center's own answers (usage, history, catalog pages, renewal
directives); the shared model's mapping is `wire`."""

from __future__ import annotations

from collections.abc import Iterable

from quota_center.alert_book import Alert
from quota_center.center_agents import CatalogPage
from quota_center.center_core import UsageView
from quota_center.center_renewals import Directive
from quota_center.history import PromotionHistory
from quota_center.paging import within_bytes
from quota_center.settlement import Statement
from quota_center.v1 import quota_center_pb2 as pb
from quota_center.wire import emergency_to_pb, promotion_to_pb
from quota_common.errors import QuotaError
from quota_common.model import Promotion
from quota_common.validation import cut

RENEWAL_GRANTS = 1000
"""Unapplied grants one Renew answer carries, over all its promotions (each may resend
ledger.RECENT_GRANTS_KEPT of about 300 bytes). Those left out follow in later answers: the agent's
report counts less than was granted until it applies them."""
REFUSAL_BYTES = 512
"""How much of the reason a refused promotion's directive carries; the promotion's id is beside it."""


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


def statement_to_pb(statement: Statement) -> pb.Statement:
    message = pb.Statement(
        promotion_id=statement.promotion_id,
        state=statement.state,
        budget=statement.budget,
        issued=statement.issued,
        refunded=statement.refunded,
        written_off=statement.written_off,
        stranded=statement.stranded,
        unspent=statement.unspent,
        regions=[
            pb.RegionStatement(
                region=region.region,
                granted=region.granted,
                returned=region.returned,
                issued=region.issued,
                refunded=region.refunded,
                written_off=region.written_off,
                stranded=region.stranded,
            )
            for region in statement.regions
        ],
    )
    if statement.ended_at_ms:
        message.ended_at.FromMilliseconds(statement.ended_at_ms)
    if statement.settled_at_ms:
        message.settled_at.FromMilliseconds(statement.settled_at_ms)
    return message


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


def history_to_pb(promotion: Promotion, history: PromotionHistory) -> pb.History:
    regions = []
    for region, points in sorted(history.regions.items()):
        message = pb.RegionHistory(region=region)
        for at_ms, consumed, granted in points:
            added = message.points.add(consumed=consumed, granted=granted)
            added.at.FromMilliseconds(at_ms)
        regions.append(message)
    return pb.History(promotion_id=promotion.id, budget=promotion.budget, regions=regions)


def alert_to_pb(alert: Alert) -> pb.Alert:
    message = pb.Alert(
        id=alert.id,
        rule=alert.rule,
        rule_name=alert.name,
        promotion_id=alert.promotion_id,
        region=alert.region,
        message=alert.message,
        action=alert.action,
        acknowledged=alert.acknowledged,
        cause=alert.cause,  # type: ignore[arg-type]
        note=alert.note,
        acknowledged_by=alert.acknowledged_by,
        deliveries=alert.deliveries,
    )
    message.raised_at.FromMilliseconds(alert.raised_at_ms)
    if alert.acknowledged:
        message.acknowledged_at.FromMilliseconds(alert.acknowledged_at_ms)
    return message
