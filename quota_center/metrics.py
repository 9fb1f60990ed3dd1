"""The center's Prometheus metrics, read from its state at scrape time (nothing to keep in step).

Series per promotion, and per promotion and region, for the promotions `quota_common.top_series` picks:
the top N by spend and every promotion with an open alert; the others are folded into series whose
promotion label is empty, so sums over promotions stay the totals while the page stays bounded. Only the
leader has the state: a standby reports `quota_center_leader 0` (and the process's own metrics).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from quota_center.alert_book import Alert
from quota_center.center import Center
from quota_center.center_core import RegionView, UsageView
from quota_common.errors import NotLeader
from quota_common.rpc_metrics import process_registry
from quota_common.top_series import DEFAULT_TOP, Folding, Series, select, shown_as

SLICE = 100
"""Promotions whose usage a scrape reads between two turns of the event loop."""

_PER_PROMOTION: Sequence[Series[UsageView]] = (
    Series(
        GaugeMetricFamily,
        "quota_promotion_budget_units",
        "The promotion's budget.",
        lambda usage: usage.promotion.budget,
    ),
    Series(
        GaugeMetricFamily,
        "quota_promotion_unallocated_units",
        "What the center can still grant.",
        lambda usage: usage.unallocated,
    ),
    Series(
        GaugeMetricFamily,
        "quota_promotion_frozen",
        "1 while the promotion is frozen (folded: how many are).",
        lambda usage: int(usage.promotion.frozen),
    ),
)
_PER_REGION: Sequence[Series[RegionView]] = (
    Series(
        CounterMetricFamily,
        "quota_region_granted_units",
        "Ever granted to the region.",
        lambda view: view.account.total_granted,
    ),
    Series(
        CounterMetricFamily,
        "quota_region_returned_units",
        "Ever given back by the region.",
        lambda view: view.account.total_returned,
    ),
    Series(
        GaugeMetricFamily,
        "quota_region_spent_units",
        "Net deductions (deducted - refunded) the region reported.",
        lambda view: view.account.consumed,
    ),
    Series(
        GaugeMetricFamily, "quota_region_held_units", "What the region holds unspent.", lambda view: view.account.held
    ),
    Series(
        CounterMetricFamily,
        "quota_region_written_off_units",
        "Held by agents that lost their ledger; never granted again.",
        lambda view: view.account.written_off,
    ),
    Series(
        GaugeMetricFamily,
        "quota_region_lease_age_seconds",
        "Seconds since the region last renewed its lease (folded: the oldest).",
        lambda view: view.lease_age_s,
        max,
    ),
    Series(
        GaugeMetricFamily,
        "quota_region_burn_rate_units_per_second",
        "The spending rate the region last reported.",
        lambda view: view.demand_per_minute / 60,
    ),
)


class PromotionPage:
    """The per-promotion and per-region families of a scrape, built usage by usage: own series for the
    promotions `shown` (of `promotions` in all), the rest folded (sums; the oldest lease age). Pure."""

    def __init__(self, shown: frozenset[str], promotions: int) -> None:
        self._shown = shown
        self._folded = promotions - len(shown)
        self._per_promotion = Folding(_PER_PROMOTION, ["promotion"])
        self._per_region = Folding(_PER_REGION, ["promotion", "region"])

    def add(self, usages: Sequence[UsageView]) -> None:
        labelled = [(shown_as(usage.promotion.id, self._shown), usage) for usage in usages]
        self._per_promotion.add(((label,), usage) for label, usage in labelled)
        self._per_region.add(((label, view.region), view) for label, usage in labelled for view in usage.regions)

    def families(self) -> list[Metric]:
        folded = GaugeMetricFamily(
            "quota_promotions_folded",
            'Promotions beyond the top N by spend, without an open alert: their series are summed under promotion="".',
        )
        folded.add_metric([], self._folded)
        return [*self._per_promotion.families(), *self._per_region.families(), folded]


class CenterCollector(Collector):
    """Reports what `refresh` read last: the scrape's own snapshot (see `refresh`)."""

    def __init__(self, center: Center, top: int = DEFAULT_TOP) -> None:
        self._center = center
        self._top = top
        self._families: list[Metric] = []

    async def refresh(self) -> None:
        """Reads every promotion's spend, picks the promotions shown, then folds their usage in: SLICE
        promotions at a time, with the event loop free in between. At 100,000 promotion-region pairs the
        whole is hundreds of milliseconds of Python, which would otherwise hold up every call the center
        answers; and no slice's views outlive it, so a scrape leaves the garbage collector little to do."""
        try:
            self._families = await self._read() if self._center.leading else []
        except NotLeader:
            self._families = []  # deposed during the sweep: a standby shows no promotions

    async def _read(self) -> list[Metric]:
        center = self._center
        open_alerts = center.alerts.listing(False, "")
        ids = [promotion.id for promotion in center.promotions()]
        spend: dict[str, int] = {}
        for start in range(0, len(ids), SLICE):
            spend.update((promotion_id, center.spent(promotion_id)) for promotion_id in ids[start : start + SLICE])
            await asyncio.sleep(0)
        page = PromotionPage(select(spend, self._top, {alert.promotion_id for alert in open_alerts}), len(ids))
        for start in range(0, len(ids), SLICE):
            page.add([center.usage(promotion_id) for promotion_id in ids[start : start + SLICE]])
            await asyncio.sleep(0)
        return [*page.families(), *self._alerts(open_alerts)]

    def collect(self) -> Iterator[Metric]:
        leader = GaugeMetricFamily("quota_center_leader", "1 while this replica leads and answers, else 0.")
        leader.add_metric([], int(self._center.leading))
        yield leader
        if self._center.leading:
            yield from self._families

    def _alerts(self, open_alerts: list[Alert]) -> list[Metric]:
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
        return [by_rule_family, raised, delivered, failed]


def center_metrics(center: Center, top: int = DEFAULT_TOP) -> tuple[CollectorRegistry, Callable[[], Awaitable[None]]]:
    """The center's metrics and the process's (`quota_common.rpc_metrics.process_registry`), and the
    refresh to run before each scrape."""
    registry = process_registry()
    collector = CenterCollector(center, top)
    registry.register(collector)
    return registry, collector.refresh
