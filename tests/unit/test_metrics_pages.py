"""The center's and the agent's metric families at 10,000 promotions, pure: the page holds the top N by
spend (and, on the center, promotions with an open alert) and one folded promotion, whatever the catalog
holds, and every sum over promotions is still the total."""

from __future__ import annotations

from collections import defaultdict

from prometheus_client.core import Metric

from quota_center.center_core import RegionView, UsageView
from quota_center.ledger import RegionAccount
from quota_center.metrics import PromotionPage
from quota_common.model import Kind, Promotion
from quota_common.top_series import REST, select
from region_agent.agent import PromotionStatus
from region_agent.ledger.base import Balance
from region_agent.metrics import ledger_families

PROMOTIONS = 10_000
REGIONS = ("eu", "us", "ap")
TOP = 50


def _usage(number: int) -> UsageView:
    """Promotion `number` spent `number` units in each region, in a catalog where every tenth is frozen."""
    promotion = Promotion(f"p{number}", Kind.COUNT, "", 1_000_000, 0, 1, REGIONS, frozen=number % 10 == 0)
    views = [
        RegionView(region, RegionAccount(granted=2 * number, deducted=number), True, float(number % 7), 60 * number)
        for region in REGIONS
    ]
    return UsageView(promotion, 1_000_000 - len(REGIONS) * 2 * number, views)


USAGES = [_usage(number) for number in range(PROMOTIONS)]


def promotion_families(usages: list[UsageView], top: int, alerted: set[str] | None = None) -> list[Metric]:
    """The center's page of `usages`, whose spends are what their regions consumed, added in two batches."""
    spend = {usage.promotion.id: sum(view.account.consumed for view in usage.regions) for usage in usages}
    page = PromotionPage(select(spend, top, alerted or set()), len(spend))
    page.add(usages[: len(usages) // 2])
    page.add(usages[len(usages) // 2 :])
    return page.families()


def _samples(families: list[Metric]) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    return {
        family.name: {tuple(sorted(sample.labels.items())): sample.value for sample in family.samples}
        for family in families
    }


def _promotions(series: dict[tuple[tuple[str, str], ...], float]) -> set[str]:
    return {dict(labels)["promotion"] for labels in series}


def test_the_centers_page_holds_the_top_n_and_the_alerted_promotions_and_one_rest() -> None:
    alerted = {"p3", "p7", "p9999", "gone"}  # p9999 is in the top N already; "gone" is no promotion of the catalog

    samples = _samples(promotion_families(USAGES, TOP, alerted))

    top = {f"p{number}" for number in range(PROMOTIONS - TOP, PROMOTIONS)}
    for name in ("quota_promotion_budget_units", "quota_region_spent_units", "quota_region_lease_age_seconds"):
        assert _promotions(samples[name]) == top | {"p3", "p7", REST}
    assert len(samples["quota_region_granted_units"]) == (TOP + 2 + 1) * len(REGIONS)
    assert samples["quota_promotions_folded"] == {(): PROMOTIONS - TOP - 2}


def test_the_centers_sums_over_promotions_are_the_totals() -> None:
    samples = _samples(promotion_families(USAGES, TOP))

    def total(name: str) -> float:
        return sum(samples[name].values())

    assert total("quota_promotion_budget_units") == 1_000_000 * PROMOTIONS
    assert total("quota_promotion_unallocated_units") == sum(usage.unallocated for usage in USAGES)
    assert total("quota_promotion_frozen") == PROMOTIONS // 10
    spent: dict[str, float] = defaultdict(float)
    for labels, value in samples["quota_region_spent_units"].items():
        spent[dict(labels)["region"]] += value
    assert spent == {region: sum(range(PROMOTIONS)) for region in REGIONS}
    assert total("quota_region_burn_rate_units_per_second") == len(REGIONS) * sum(range(PROMOTIONS))
    rest = (("promotion", REST), ("region", "eu"))
    assert samples["quota_region_lease_age_seconds"][rest] == 6  # the oldest lease among the folded


def test_a_promotion_that_leaves_the_top_n_leaves_the_centers_page() -> None:
    usages = [_usage(number) for number in range(3)]
    before = _samples(promotion_families(usages, 2))["quota_promotion_budget_units"]
    overtaken = [*usages, _usage(9)]
    after = _samples(promotion_families(overtaken, 2))["quota_promotion_budget_units"]

    assert _promotions(before) == {"p2", "p1", REST}
    assert _promotions(after) == {"p9", "p2", REST}


def _status(number: int) -> PromotionStatus:
    balance = Balance(granted=3 * number, deducted=2 * number, refunded=number % 3)
    return PromotionStatus(f"p{number}", balance, lease_remaining_s=5.0 + number % 4, frozen=False)


def test_the_agents_page_holds_the_top_n_and_sums_to_the_ledgers_totals() -> None:
    statuses = [_status(number) for number in range(PROMOTIONS)]

    samples = _samples(ledger_families("eu", statuses, TOP))

    deducted = samples["quota_agent_deducted_units"]
    assert len(deducted) == TOP + 1
    assert _promotions(deducted) == {f"p{number}" for number in range(PROMOTIONS - TOP, PROMOTIONS)} | {REST}
    assert sum(deducted.values()) == sum(status.balance.deducted for status in statuses)
    assert sum(samples["quota_agent_available_units"].values()) == sum(s.balance.available for s in statuses)
    assert samples["quota_agent_lease_remaining_seconds"][(("promotion", REST), ("region", "eu"))] == 5.0
    assert samples["quota_agent_promotions_folded"] == {(("region", "eu"),): PROMOTIONS - TOP}
