"""The agent's Prometheus metrics: what its callers saw (deductions by result, latency), what it
asked of the center (calls, latency), and what it holds (ledger balances, leases, the cache).

Ledger series per promotion for the top N promotions by spend; the others are folded into series whose
promotion label is empty (`quota_common.top_series`), so the page stays bounded however many promotions
the region sells.

Balances live in the ledger, which may be the region's Redis: `refresh` reads them before each
scrape (see quota_common.metrics_http), and the collector reports that snapshot.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import grpc
from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from quota_common.errors import QuotaError, Rejected
from quota_common.hot_metrics import HotCounter, HotHistogram
from quota_common.rpc_metrics import LATENCY_BUCKETS_S, process_registry
from quota_common.top_series import DEFAULT_TOP, Folding, Series, select, shown_as
from region_agent.agent import Agent, PromotionStatus


class AgentMetrics:
    def __init__(self, region: str) -> None:
        self.region = region
        self.registry = process_registry()
        # Every order counts in these two: hot_metrics' series, not prometheus_client's.
        self._deductions = HotCounter(
            "quota_agent_deductions",
            "Deductions and reservations answered, by result (accepted, replayed, rejected, failed) and reason.",
            ["region", "operation", "result", "reason"],
        )
        self._deduction_seconds = HotHistogram(
            "quota_agent_deduction_duration_seconds",
            "Time to answer a deduction or reservation, refill waits included.",
            ["region", "operation"],
            LATENCY_BUCKETS_S,
        )
        self.registry.register(self._deductions)
        self.registry.register(self._deduction_seconds)
        self._center_calls = Counter(
            "quota_agent_center_calls",
            "Unary calls to the center, retries included, by method and status code.",
            ["region", "method", "code"],
            registry=self.registry,
        )
        self._center_call_seconds = Histogram(
            "quota_agent_center_call_duration_seconds",
            "Time of one unary call to the center.",
            ["region", "method"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )

    def answered(self, operation: str, replayed: bool, elapsed_s: float) -> None:
        self._count(operation, "replayed" if replayed else "accepted", "", elapsed_s)

    def failed(self, operation: str, error: Exception, elapsed_s: float) -> None:
        if isinstance(error, Rejected):
            result, reason = "rejected", error.reason.name.lower()
        else:
            result = "failed"
            reason = error.code.name.lower() if isinstance(error, QuotaError) else "internal"
        self._count(operation, result, reason, elapsed_s)

    def _count(self, operation: str, result: str, reason: str, elapsed_s: float) -> None:
        self._deductions.inc((self.region, operation, result, reason))
        self._deduction_seconds.observe((self.region, operation), elapsed_s)

    def center_call(self, method: str, code: grpc.StatusCode, elapsed_s: float) -> None:
        self._center_calls.labels(self.region, method, code.name).inc()
        self._center_call_seconds.labels(self.region, method).observe(elapsed_s)

    def watch(self, agent: Agent, top: int = DEFAULT_TOP) -> Callable[[], Awaitable[None]]:
        """Reports `agent`'s state from now on, with series of their own for the `top` promotions by spend;
        returns the refresh to run before each scrape."""
        state = _AgentState(agent, top)
        self.registry.register(state)
        return state.refresh


class CenterCallTimer(grpc.aio.UnaryUnaryClientInterceptor):
    """Times every unary call on the agent's channels to the center."""

    def __init__(self, metrics: AgentMetrics) -> None:
        self._metrics = metrics

    async def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Awaitable[Any]], client_call_details: Any, request: Any
    ) -> Any:
        started = time.perf_counter()
        method = _method_name(client_call_details.method)
        call = await continuation(client_call_details, request)
        # Awaited here to learn its status; the caller's own await gets the same answer or error.
        with contextlib.suppress(grpc.aio.AioRpcError):
            await call
        self._metrics.center_call(method, await call.code(), time.perf_counter() - started)
        return call


def _method_name(path: str | bytes) -> str:
    """'/quota.center.v1.Allocation/Acquire' -> 'Acquire'."""
    text = path.decode() if isinstance(path, bytes) else path
    return text.rpartition("/")[2]


_LEDGER: Sequence[Series[PromotionStatus]] = (
    Series(
        GaugeMetricFamily,
        "quota_agent_available_units",
        "Spendable now from the allotment.",
        lambda status: status.balance.available,
    ),
    Series(
        GaugeMetricFamily, "quota_agent_held_units", "Held by pending reservations.", lambda status: status.balance.held
    ),
    Series(
        CounterMetricFamily,
        "quota_agent_granted_units",
        "Granted to this ledger by the center.",
        lambda status: status.balance.granted,
    ),
    Series(
        CounterMetricFamily,
        "quota_agent_returned_units",
        "Given back to the center.",
        lambda status: status.balance.returned,
    ),
    Series(
        CounterMetricFamily, "quota_agent_deducted_units", "Spent by orders.", lambda status: status.balance.deducted
    ),
    Series(
        CounterMetricFamily,
        "quota_agent_refunded_units",
        "Given back to the allotment by refunds.",
        lambda status: status.balance.refunded,
    ),
    Series(
        GaugeMetricFamily,
        "quota_agent_lease_remaining_seconds",
        "Until the lease runs out unless renewed (folded: the soonest).",
        lambda status: status.lease_remaining_s,
        min,
    ),
    Series(
        GaugeMetricFamily,
        "quota_agent_promotion_frozen",
        "1 while the promotion is frozen (folded: how many are).",
        lambda status: int(status.frozen),
    ),
    Series(
        CounterMetricFamily,
        "quota_agent_below_floor_lines",
        "Order lines below the promotion's price floor, refused or let through, this ledger life.",
        lambda status: status.below_floor,
    ),
)


def ledger_families(region: str, statuses: Sequence[PromotionStatus], top: int) -> list[Metric]:
    """The ledger's families: own series for the `top` promotions by net spend, the rest folded. Pure."""
    spend = {status.promotion_id: status.balance.deducted - status.balance.refunded for status in statuses}
    shown = select(spend, top)
    ledger = Folding(_LEDGER, ["region", "promotion"])
    ledger.add(((region, shown_as(status.promotion_id, shown)), status) for status in statuses)
    folded = GaugeMetricFamily(
        "quota_agent_promotions_folded",
        'Promotions beyond the top N by spend: their series are summed under promotion="".',
        labels=["region"],
    )
    folded.add_metric([region], len(spend) - len(shown))
    return [*ledger.families(), folded]


class _AgentState(Collector):
    def __init__(self, agent: Agent, top: int) -> None:
        self._agent = agent
        self._top = top
        self._statuses: list[PromotionStatus] = []

    async def refresh(self) -> None:
        self._statuses = await self._agent.status()

    def collect(self) -> Iterator[Metric]:
        yield from ledger_families(self._agent.settings.region, self._statuses, self._top)
        yield from _cache_metrics(self._agent)


def _cache_metrics(agent: Agent) -> Iterator[Metric]:
    """The cache, and each center group's catalog and region lease (label `group`, "default" with one group)."""
    region = [agent.settings.region]
    size = GaugeMetricFamily("quota_agent_cached_promotions", "Promotions in the cache.", labels=["region"])
    size.add_metric(region, len(agent.cache))
    by_group = ["region", "group"]
    revision = GaugeMetricFamily("quota_agent_catalog_revision", "The cache's catalog revision.", labels=by_group)
    stream = GaugeMetricFamily("quota_agent_catalog_stream_up", "1 while the push stream is open.", labels=by_group)
    stale = GaugeMetricFamily(
        "quota_agent_catalog_staleness_seconds",
        "Seconds since the cache last heard from the group (a pull, a pushed change or a heartbeat); absent "
        "until it did.",
        labels=by_group,
    )
    lease = GaugeMetricFamily(
        "quota_agent_region_lease_remaining_seconds",
        "Until the region's lease at the group runs out unless renewed; 0: it ran out or was never granted.",
        labels=by_group,
    )
    for group in agent.group_statuses():
        labels = [agent.settings.region, group.group]
        revision.add_metric(labels, group.catalog_revision)
        stream.add_metric(labels, int(group.stream_alive))
        if group.staleness_s is not None:
            stale.add_metric(labels, group.staleness_s)
        lease.add_metric(labels, group.lease.remaining_s)
    yield from (size, revision, stream, stale, lease)
