"""The center's Prometheus metrics, read from its state at scrape time (nothing to keep in step).

Series per promotion, and per promotion and region, for the promotions `quota_common.top_series` picks:
the top N by spend and every promotion with an open alert; the others are folded into series whose
promotion label is empty, so sums over promotions stay the totals while the page stays bounded. Only the
leader has the state: a standby reports `quota_center_leader 0` (and the process's own metrics).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from quota_center.alert_book import Alert
from quota_center.center import Center
from quota_center.center_core import RegionView, UsageView
from quota_common.rpc_metrics import process_registry
from quota_common.top_series import DEFAULT_TOP, Series, families, select, shown_as

_PER_PROMOTION: Sequence[Series[UsageView]] = (
    Series(GaugeMetricFamily, "quota_promotion_budget_units", "The promotion's budget.", lambda u: u.promotion.budget),
    Series(
        GaugeMetricFamily,
        "quota_promotion_unallocated_units",
        "What the center can still grant.",
        lambda u: u.unallocated,
    ),
    Series(
        GaugeMetricFamily,
        "quota_promotion_frozen",
        "1 while the promotion is frozen (folded: how many are).",
        lambda u: int(u.promotion.frozen),
    ),
)
_PER_REGION: Sequence[Series[RegionView]] = (
    Series(
        CounterMetricFamily,
        "quota_region_granted_units",
        "Ever granted to the region.",
        lambda v: v.account.total_granted,
    ),
    Series(
        CounterMetricFamily,
        "quota_region_returned_units",
        "Ever given back by the region.",
        lambda v: v.account.total_returned,
    ),
    Series(
        GaugeMetricFamily,
        "quota_region_spent_units",
        "Net deductions (deducted - refunded) the region reported.",
        lambda v: v.account.consumed,
    ),
    Series(GaugeMetricFamily, "quota_region_held_units", "What the region holds unspent.", lambda v: v.account.held),
    Series(
        CounterMetricFamily,
        "quota_region_written_off_units",
        "Held by agents that lost their ledger; never granted again.",
        lambda v: v.account.written_off,
    ),
    Series(
        GaugeMetricFamily,
        "quota_region_lease_age_seconds",
        "Seconds since the region last renewed its lease (folded: the oldest).",
        lambda v: v.lease_age_s,
        max,
    ),
    Series(
        GaugeMetricFamily,
        "quota_region_burn_rate_units_per_second",
        "The spending rate the region last reported.",
        lambda v: v.demand_per_minute / 60,
    ),
)


def promotion_families(usages: Iterable[UsageView], top: int, alerted: Collection[str] = ()) -> list[Metric]:
    """The per-promotion and per-region families of `usages`: own series for the `top` promotions by net
    spend and those in `alerted`, the rest folded (sums; the oldest lease age). Pure."""
    usages = list(usages)
    spend = {usage.promotion.id: sum(view.account.consumed for view in usage.regions) for usage in usages}
    shown = select(spend, top, alerted)
    labelled = [(shown_as(usage.promotion.id, shown), usage) for usage in usages]
    folded = GaugeMetricFamily(
        "quota_promotions_folded",
        'Promotions beyond the top N by spend, without an open alert: their series are summed under promotion="".',
    )
    folded.add_metric([], len(spend) - len(shown))
    return [
        *families(_PER_PROMOTION, ["promotion"], (((label,), usage) for label, usage in labelled)),
        *families(
            _PER_REGION,
            ["promotion", "region"],
            (((label, view.region), view) for label, usage in labelled for view in usage.regions),
        ),
        folded,
    ]


class CenterCollector(Collector):
    def __init__(self, center: Center, top: int = DEFAULT_TOP) -> None:
        self._center = center
        self._top = top

    def collect(self) -> Iterator[Metric]:
        leader = GaugeMetricFamily("quota_center_leader", "1 while this replica leads and answers, else 0.")
        leader.add_metric([], int(self._center.leading))
        yield leader
        if self._center.leading:
            open_alerts = self._center.alerts.listing(False, "")
            usages = (self._center.usage(promotion.id) for promotion in self._center.promotions())
            yield from promotion_families(usages, self._top, {alert.promotion_id for alert in open_alerts})
            yield from self._alerts(open_alerts)

    def _alerts(self, open_alerts: list[Alert]) -> Iterator[Metric]:
        engine = self._center.alerts
        by_rule_family = GaugeMetricFamily(
            "quota_alerts_open", "Alerts waiting for a person's answer, by rule.", labels=["rule"]
        )
        by_rule = Counter(alert.rule for alert in open_alerts)
        for rule, count in sorted(by_rule.items()):
            by_rule_family.add_metric([rule], count)
        raised = CounterMetricFamily("quota_alerts_raised", "Alerts ever raised (the book's count, kept in the store).")
        raised.add_metric([], engine.raised)
        delivered = CounterMetricFamily(
            "quota_alert_webhook_deliveries", "Alert posts answered 2xx, since this center began to lead."
        )
        delivered.add_metric([], engine.webhooks.deliveries)
        failed = CounterMetricFamily(
            "quota_alert_webhook_failures",
            "Alert posts that failed (each retry counts), since this center began to lead.",
        )
        failed.add_metric([], engine.webhooks.failures)
        yield from (by_rule_family, raised, delivered, failed)


def center_registry(center: Center, top: int = DEFAULT_TOP) -> CollectorRegistry:
    """The center's metrics and the process's (`quota_common.rpc_metrics.process_registry`)."""
    registry = process_registry()
    registry.register(CenterCollector(center, top))
    return registry
