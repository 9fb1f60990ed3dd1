"""What the center's /metrics page costs at 10,000 promotions: bytes, series and scrape time with a series
per promotion and region (every promotion in the top N, as the page was before) against the default top N,
in one run, on the same center.

    python -m loadtest.bench_metrics [--promotions 10000] [--regions 10] [--scrapes 3] [--json]

The center runs in this process on the in-memory store, its catalog written there as a center finds it
after a restart (each promotion allowed in every region, with accounts and spend that differ from one
promotion to the next), so no agent has to sell to give it usage. Each page is served by the same
MetricsEndpoint a center process serves and fetched over HTTP on loopback, one scrape at a time, while
a task on the center's event loop measures how long the scrape keeps the loop from answering calls.
Both pages run through today's collector (usage read in slices, folded in a thread); the code before
the top N read and rendered every promotion on the loop, holding it for the whole scrape.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import urllib.request
from typing import Any

from quota_center.center import Center
from quota_center.ledger import PromotionState, RegionAccount
from quota_center.metrics import center_metrics
from quota_common.clock import SystemClock
from quota_common.metrics_http import MetricsEndpoint
from quota_common.model import Kind, Promotion
from quota_common.top_series import DEFAULT_TOP
from quota_testing.memory_store import MemoryStore

DAY_MS = 86_400_000


def _state(number: int, regions: tuple[str, ...], now_ms: int) -> PromotionState:
    promotion = Promotion(f"promo-{number:05d}", Kind.COUNT, "", 10**9, now_ms - DAY_MS, now_ms + DAY_MS, regions)
    spend = (number * 7919) % 100_003  # spends that differ, in no order the ids give
    accounts = {region: RegionAccount(granted=2 * spend + 10, deducted=spend) for region in regions}
    return PromotionState(promotion, accounts)


async def _center(promotions: int, regions: int) -> Center:
    clock = SystemClock()
    store = MemoryStore()
    names = tuple(f"region-{number:02d}" for number in range(regions))
    for number in range(promotions):
        state = _state(number, names, clock.wall_ms())
        store.promotions[state.promotion.id] = json.dumps(state.to_document())
    center = Center(store, clock)
    await center.start()
    return center


def _fetch(port: int) -> tuple[bytes, float]:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=600) as answer:
        page: bytes = answer.read()
    return page, time.perf_counter() - started


async def _longest_stall(running: asyncio.Event) -> float:
    """The longest time the event loop took to come back to a 1 ms sleep while `running` is set: what a
    call to the center would have waited behind the scrape."""
    longest = 0.0
    while running.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.001)
        longest = max(longest, time.perf_counter() - started - 0.001)
    return longest


async def _measure(center: Center, top: int, scrapes: int) -> dict[str, Any]:
    endpoint = MetricsEndpoint("127.0.0.1:0", *center_metrics(center, top))
    port = await endpoint.start()
    running = asyncio.Event()
    running.set()
    stalls = asyncio.create_task(_longest_stall(running))
    try:
        fetched = [await asyncio.to_thread(_fetch, port) for _ in range(scrapes)]
    finally:
        running.clear()
        await endpoint.close()
    longest_stall_s = await stalls
    page = fetched[-1][0]
    seconds = [elapsed for _, elapsed in fetched]
    return {
        "top": top,
        "bytes": len(page),
        "series": sum(1 for line in page.splitlines() if line and not line.startswith(b"#")),
        "scrape_ms_median": round(statistics.median(seconds) * 1000, 1),
        "scrape_ms_max": round(max(seconds) * 1000, 1),
        "loop_stall_ms_max": round(longest_stall_s * 1000, 1),
    }


async def bench_metrics(promotions: int, regions: int, scrapes: int) -> dict[str, Any]:
    center = await _center(promotions, regions)
    before = await _measure(center, promotions, scrapes)
    after = await _measure(center, DEFAULT_TOP, scrapes)
    return {
        "promotions": promotions,
        "regions": regions,
        "scrapes": scrapes,
        "before": before,
        "after": after,
        "bytes_ratio": round(before["bytes"] / after["bytes"], 1),
        "scrape_time_ratio": round(before["scrape_ms_median"] / after["scrape_ms_median"], 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--promotions", type=int, default=10_000, help="promotions in the catalog (10000)")
    parser.add_argument("--regions", type=int, default=10, help="regions each promotion is allowed in (10)")
    parser.add_argument("--scrapes", type=int, default=3, help="scrapes of each page; the median is shown (3)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    options = parser.parse_args(argv)
    if min(options.promotions, options.regions, options.scrapes) < 1:
        parser.error("--promotions, --regions and --scrapes take 1 or more")
    figures = asyncio.run(bench_metrics(options.promotions, options.regions, options.scrapes))
    if options.json:
        print(json.dumps(figures))
        return 0
    print(f"center /metrics at {options.promotions:,} promotions x {options.regions} regions")
    for name in ("before", "after"):
        row = figures[name]
        print(
            f"  {name:<6} top {row['top']:>6,}: {row['series']:>9,} series {row['bytes']:>12,} bytes "
            f"scrape {row['scrape_ms_median']:>9,.1f} ms median ({row['scrape_ms_max']:,.1f} max), "
            f"event loop held up to {row['loop_stall_ms_max']:,.1f} ms"
        )
    print(f"  bytes {figures['bytes_ratio']}x smaller, scrape {figures['scrape_time_ratio']}x faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
