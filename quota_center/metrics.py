"""The center's Prometheus metrics, read from its state at scrape time (nothing to keep in step).

Series per promotion, and per promotion and region; a promotion is a bounded label value (the
catalog of live promotions), a region too. Only the leader has the state: a standby reports
`quota_center_leader 0` and nothing else.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from quota_center.center import Center


class CenterCollector(Collector):
    def __init__(self, center: Center) -> None:
        self._center = center

    def collect(self) -> Iterator[Metric]:
        leader = GaugeMetricFamily("quota_center_leader", "1 while this replica leads and answers, else 0.")
        leader.add_metric([], int(self._center.leading))
        yield leader
        if self._center.leading:
            yield from self._promotions()
            yield from self._alerts()

    def _alerts(self) -> Iterator[Metric]:
        engine = self._center.alerts
        open_alerts = GaugeMetricFamily(
            "quota_alerts_open", "Alerts waiting for a person's answer, by rule.", labels=["rule"]
        )
        by_rule = Counter(alert.rule for alert in engine.listing(False, ""))
        for rule, count in sorted(by_rule.items()):
            open_alerts.add_metric([rule], count)
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
        yield from (open_alerts, raised, delivered, failed)

    def _promotions(self) -> Iterator[Metric]:
        per_promotion = ["promotion"]
        per_region = ["promotion", "region"]
        budget = GaugeMetricFamily("quota_promotion_budget_units", "The promotion's budget.", labels=per_promotion)
        unallocated = GaugeMetricFamily(
            "quota_promotion_unallocated_units", "What the center can still grant.", labels=per_promotion
        )
        frozen = GaugeMetricFamily("quota_promotion_frozen", "1 while the promotion is frozen.", labels=per_promotion)
        granted = CounterMetricFamily("quota_region_granted_units", "Ever granted to the region.", labels=per_region)
        returned = CounterMetricFamily(
            "quota_region_returned_units", "Ever given back by the region.", labels=per_region
        )
        spent = GaugeMetricFamily(
            "quota_region_spent_units", "Net deductions (deducted - refunded) the region reported.", labels=per_region
        )
        held = GaugeMetricFamily("quota_region_held_units", "What the region holds unspent.", labels=per_region)
        written_off = CounterMetricFamily(
            "quota_region_written_off_units",
            "Held by agents that lost their ledger; never granted again.",
            labels=per_region,
        )
        lease_age = GaugeMetricFamily(
            "quota_region_lease_age_seconds", "Seconds since the region last renewed its lease.", labels=per_region
        )
        burn = GaugeMetricFamily(
            "quota_region_burn_rate_units_per_second", "The spending rate the region last reported.", labels=per_region
        )
        for promotion in self._center.promotions():
            usage = self._center.usage(promotion.id)
            budget.add_metric([promotion.id], promotion.budget)
            unallocated.add_metric([promotion.id], usage.unallocated)
            frozen.add_metric([promotion.id], int(promotion.frozen))
            for view in usage.regions:
                labels, account = [promotion.id, view.region], view.account
                granted.add_metric(labels, account.total_granted)
                returned.add_metric(labels, account.total_returned)
                spent.add_metric(labels, account.consumed)
                held.add_metric(labels, account.held)
                written_off.add_metric(labels, account.written_off)
                burn.add_metric(labels, view.demand_per_minute / 60)
                if view.lease_age_s is not None:
                    lease_age.add_metric(labels, view.lease_age_s)
        yield from (budget, unallocated, frozen, granted, returned, spent, held, written_off, lease_age, burn)


def center_registry(center: Center) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(CenterCollector(center))
    return registry
