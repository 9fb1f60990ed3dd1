"""Which promotions have series of their own on a /metrics page; every other one folded into one series.

At 10,000 promotions in 50 regions a series per promotion and region is 500,000 series per metric, more
than a Prometheus should take from one target. A page therefore gives the `top` promotions by spend their
own series, plus those it must always show (on the center: a promotion with an open alert), and folds every
other promotion into series whose promotion label is REST, so that a sum over the label is still the total.
A promotion that leaves the top N loses its series at the next scrape; nothing grows with the catalog.

    shown = select(spend, top, always)          the promotions that keep their own series
    rows = [((shown_as(promotion, shown), region), state), ...]
    families(SERIES, ["promotion", "region"], rows)      one family per Series, rows folded by labels

    fold = Fold()                                values by label values, summed (or kept as max, min)

Pure: no clock, no I/O; the collectors of the center and the agent call it at scrape time.
"""

from __future__ import annotations

import heapq
import operator
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
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
Combine = Callable[[float, float], float]
Row = TypeVar("Row")


def select(spend: Mapping[str, int], top: int, always: Collection[str] = ()) -> frozenset[str]:
    """The `top` promotions of `spend` by spend (equal spends by id, so a scrape after another picks the
    same ones), and those of `always` that `spend` holds: at most `top` + len(`always`) promotions."""
    ranked = heapq.nsmallest(max(top, 0), spend, key=lambda promotion: (-spend[promotion], promotion))
    return frozenset(ranked).union(promotion for promotion in always if promotion in spend)


def shown_as(promotion_id: str, shown: Collection[str]) -> str:
    """The promotion label `promotion_id`'s values go under: its own id, or REST."""
    return promotion_id if promotion_id in shown else REST


class Fold:
    """Values by label values; values added under the same labels are combined by `combine` (a sum by
    default: units, counts, rates; max or min where a sum means nothing, as for ages)."""

    def __init__(self, combine: Combine = operator.add) -> None:
        self._combine = combine
        self._values: dict[LabelValues, float] = {}

    def add(self, labels: LabelValues, value: float) -> None:
        known = self._values.get(labels)
        self._values[labels] = value if known is None else self._combine(known, value)

    def items(self) -> Iterator[tuple[LabelValues, float]]:
        return iter(self._values.items())


@dataclass(frozen=True)
class Series(Generic[Row]):
    """One family of a page: its kind, name and help, the value a row gives it (None: none for this row),
    and how the values of rows under the same labels combine."""

    kind: type[GaugeMetricFamily] | type[CounterMetricFamily]
    name: str
    documentation: str
    value: Callable[[Row], float | None]
    combine: Combine = operator.add


def families(
    series: Sequence[Series[Row]], label_names: Sequence[str], rows: Iterable[tuple[LabelValues, Row]]
) -> list[Metric]:
    """One family for each of `series`, its samples the values of `rows` folded by their label values."""
    folds = [Fold(one.combine) for one in series]
    for labels, row in rows:
        for fold, one in zip(folds, series, strict=True):
            value = one.value(row)
            if value is not None:
                fold.add(labels, value)
    built: list[Metric] = []
    for fold, one in zip(folds, series, strict=True):
        family = one.kind(one.name, one.documentation, labels=list(label_names))
        for labels, value in fold.items():
            family.add_metric(list(labels), value)
        built.append(family)
    return built
