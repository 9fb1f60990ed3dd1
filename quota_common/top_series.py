"""Which promotions have series of their own on a /metrics page; every other one folded into one series.

At 10,000 promotions in 50 regions a series per promotion and region is 500,000 series per metric, more
than a Prometheus should take from one target. A page therefore gives the `top` promotions by spend their
own series, plus those it must always show (on the center: a promotion with an open alert), and folds every
other promotion into series whose promotion label is REST, so that a sum over the label is still the total.
A promotion that leaves the top N loses its series at the next scrape; nothing grows with the catalog.

    shown = select(spend, top, always)                 the promotions that keep their own series
    folding = Folding(SERIES, ["promotion", "region"])   one family per Series
    folding.add([((shown_as(promotion, shown), region), state), ...])   rows combined by label values
    folding.families()

Pure: no clock, no I/O; the collectors of the center and the agent call it at scrape time.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

REST = ""
"""The promotion label of the folded series. Any non-empty text may be a promotion id, only the empty one
cannot, so the rest never merges with a real promotion; Prometheus stores an empty label as no label, so
the rest is `metric{promotion=""}`."""

DEFAULT_TOP = 50
"""Promotions with series of their own when the settings do not say."""

LabelValues = tuple[str, ...]
Combine = Callable[[list[float]], float]
Row = TypeVar("Row")


def select(spend: Mapping[str, int], top: int, always: Collection[str] = ()) -> frozenset[str]:
    """The `top` promotions of `spend` by spend (equal spends by id, so a scrape after another picks the
    same ones), and those of `always` that `spend` holds: at most `top` + len(`always`) promotions."""
    ranked = heapq.nsmallest(max(top, 0), spend, key=lambda promotion: (-spend[promotion], promotion))
    return frozenset(ranked).union(promotion for promotion in always if promotion in spend)


def shown_as(promotion_id: str, shown: Collection[str]) -> str:
    """The promotion label `promotion_id`'s values go under: its own id, or REST."""
    return promotion_id if promotion_id in shown else REST


@dataclass(frozen=True)
class Series(Generic[Row]):
    """One family of a page: its kind, name and help, the value a row gives it (None: none for this row),
    and how the values of rows under the same labels combine (a sum by default: units, counts, rates;
    max or min where a sum means nothing, as for ages). Folding combines batch by batch, so `combine` of
    combined values must be the combination of all of them, as for these three."""

    kind: type[GaugeMetricFamily] | type[CounterMetricFamily]
    name: str
    documentation: str
    value: Callable[[Row], float | None]
    combine: Combine = sum


class Folding(Generic[Row]):
    """The families of `series`: their samples are the values of every row added (in as many batches as the
    caller likes, so that no batch need be large) combined by label values."""

    def __init__(self, series: Sequence[Series[Row]], label_names: Sequence[str]) -> None:
        self._series = series
        self._label_names = list(label_names)
        self._combined: list[dict[LabelValues, float]] = [{} for _ in series]

    def add(self, rows: Iterable[tuple[LabelValues, Row]]) -> None:
        groups: dict[LabelValues, list[Row]] = defaultdict(list)
        for labels, row in rows:
            groups[labels].append(row)
        for one, combined in zip(self._series, self._combined, strict=True):
            for labels, members in groups.items():
                values = [value for value in map(one.value, members) if value is not None]
                if not values:
                    continue
                known = combined.get(labels)
                combined[labels] = one.combine(values if known is None else [known, *values])

    def families(self) -> list[Metric]:
        built: list[Metric] = []
        for one, combined in zip(self._series, self._combined, strict=True):
            family = one.kind(one.name, one.documentation, labels=self._label_names)
            for labels, value in combined.items():
                family.add_metric(list(labels), value)
            built.append(family)
        return built
