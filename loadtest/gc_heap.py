"""What a full garbage collection costs the center at a given number of active pairs, in this process.

    python -m loadtest.gc_heap [--promotions 10000] [--regions 10] [--samples 30]

The center's state is built as a leader holds it during a sale: the promotions created, every pair opened,
reported once, and `--samples` usage-history samples 10 s apart (a point per pair each, on a fake clock).
Then, per policy step, the objects the collector tracks and the CPU time of a full (generation 2) collection,
the median of three; a full collection walks every tracked object and holds the event loop meanwhile, so
this is the pause `quota bench capacity` sees in the center's renew tail. `quota_common.gc_policy` says
which steps the center takes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
import uuid
from typing import Any

from quota_center.center import Center
from quota_center.center_agents import Opening
from quota_common.clock import FakeClock
from quota_common.model import Kind, Promotion, Report
from quota_common.validation import MAX_OPENINGS
from quota_testing.memory_store import MemoryStore

OPENING = 100
SAMPLE_EVERY_S = 10.0


def _full_collection_ms() -> float:
    times = []
    for _ in range(3):
        started = time.process_time()
        gc.collect()
        times.append((time.process_time() - started) * 1000)
    return round(statistics.median(times), 1)


def _figures() -> dict[str, Any]:
    gc.collect()  # as the young collections in a serving process would: untracks the tuples of atomic values
    return {"tracked_objects": len(gc.get_objects()), "full_collection_ms": _full_collection_ms()}


async def _leader_state(promotions: int, regions: int, samples: int) -> Center:
    clock = FakeClock()
    center = Center(MemoryStore(), clock)
    await center.start()
    names = [f"r{n:02d}" for n in range(regions)]
    ids = [f"gc-{n:06d}" for n in range(promotions)]
    start_ms = clock.wall_ms()
    for promotion_id in ids:
        promotion = Promotion(promotion_id, Kind.COUNT, "", 10_000, start_ms, start_ms + 7_200_000, tuple(names))
        await center.create_promotion(promotion)
    lives = {region: center.join(region) for region in names}
    for region, life in lives.items():
        openings = [Opening(pid, OPENING, uuid.uuid4().hex) for pid in ids]
        for first in range(0, len(openings), MAX_OPENINGS):
            await center.acquire_openings(region, life, openings[first : first + MAX_OPENINGS])
    for sample in range(samples):
        # A tenth of the promotions sell: their reports move a counter, the rest repeat what they said.
        report = Report(OPENING, 0, sample + 1, 0, 0, 0, OPENING - sample - 1, 0)
        idle = Report(OPENING, 0, 0, 0, 0, 0, OPENING, 0)
        for region, life in lives.items():
            await center.renew(region, life, {pid: report if n % 10 == 0 else idle for n, pid in enumerate(ids)})
        await center.sample_history()
        clock.advance(SAMPLE_EVERY_S)
    return center


async def heap_figures(promotions: int, regions: int, samples: int) -> dict[str, Any]:
    gc.disable()  # the figures are the collections this measures, not the ones the set-up would trigger
    center = await _leader_state(promotions, regions, samples)
    before = _figures()
    gc.freeze()
    frozen = _figures()
    gc.unfreeze()
    gc.enable()
    del center
    return {
        "promotions": promotions,
        "regions": regions,
        "samples": samples,
        "python": sys.version.split()[0],
        "as_is": before,
        "after_freeze": frozen,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.gc_heap", description=__doc__)
    parser.add_argument("--promotions", type=int, default=10_000)
    parser.add_argument("--regions", type=int, default=10)
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(heap_figures(args.promotions, args.regions, args.samples))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
