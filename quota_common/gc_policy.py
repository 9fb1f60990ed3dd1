"""How a long-lived server process uses Python's cyclic garbage collector, and the metric of its pauses.

Why: a full (generation 2) collection walks every object the collector tracks and holds the event loop for
its whole length. A center leading 100,000 active pairs tracked about 4 million objects (most of them usage
history points) and a full collection took a second of CPU (`python -m loadtest.gc_heap`): renewals waited
behind it (their p99 in seconds) and the election's keepalive with them (leadership lost). So:

- `serving()` where the process starts serving: the thresholds of its role (`CENTER_THRESHOLDS`,
  `AGENT_THRESHOLDS`), and the pause metric below;
- `settled()` once the leader has loaded its state (and after every rebuild): the state loaded so far is
  moved to the permanent generation, which no collection walks. Frozen objects are still freed by their
  reference count when the state drops them (a replaced account, a promotion gone), so nothing leaks but
  what forms a reference cycle while frozen; `unsettled()` (a deposed leader) gives those back to the
  collector, so a process that leads many times does not keep them. While settled, what survives a full
  collection is frozen too: a leader's state keeps growing after the load (promotions created, regions
  joining, openings), and each full collection would otherwise walk all that growth again. The cost: a call
  in flight at that moment is frozen with the state, and if it ends as a reference cycle (a tenacity
  retrying object, gRPC's own per-call closure) it stays until the leader is deposed;
- `started()` once an agent has joined its region: what it holds then (modules, servers, clients, its
  promotions) is frozen once, and never again after a full collection: an agent lives as long as its
  process, with calls to the center in flight all the time (each with tenacity's retrying cycle), so
  freezing again would keep some of them at every full collection for the process's life. Its state is
  small (a Redis ledger keeps the orders in Redis); an in-process ledger's orders are walked by full passes
  as they grow, as before;
- the biggest long-lived structures are made of values the collector does not track at all (history points
  are plain tuples of ints, `quota_center.history.Point`), which keeps what grows after the freeze cheap.

Process-wide state (the thresholds, the permanent generation, `gc.callbacks`): apply from a process's
composition root, not from a library that a test process imports.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CENTER_THRESHOLDS = (50_000, 20, 20)
"""Young collections every 50,000 net allocations instead of 700: at thousands of renewals a second the
default runs one every few milliseconds. Generation 2 also waits, as CPython always does, until the objects
that survived into it since the last full collection are a quarter of those it holds."""

AGENT_THRESHOLDS = (700, 10, 10)
"""CPython's own. Most of what an agent's collector finds is per-call garbage: every call gRPC serves leaves
objects in a cycle of grpc's own (5 in grpc 1.85, its `_find_method_handler` closure), which only the
collector frees. At 50,000 they built up to about 45,000 objects, freed in one young pass of 30-65 ms every
few seconds at 1,000 orders/s, with every order in flight waiting behind it; at 700 a young pass takes under
a millisecond. What the agent holds once started is frozen (`started`), so its full collections are short too."""

PAUSES = Histogram(
    "python_gc_pause_seconds",
    "Each garbage collection's length, by generation; the process's event loop serves nothing meanwhile.",
    ["generation"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=None,
)
"""One per process (gc.callbacks are process-wide), registered into each registry that serves it."""


class _Timer:
    def __init__(self) -> None:
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            PAUSES.labels(generation=str(info["generation"])).observe(time.perf_counter() - self._started)


_TIMER = _Timer()


def _refreeze(phase: str, info: dict[str, Any]) -> None:
    """After a full collection the survivors are the long-lived state: the next one walks only what came since."""
    if phase == "stop" and info["generation"] == 2:
        gc.freeze()


class _Frozen(Collector):
    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "python_gc_frozen_objects",
            "Objects in the permanent generation, which no collection walks (a leader's state, an agent's start).",
            value=gc.get_freeze_count(),
        )


def serving(registry: CollectorRegistry, thresholds: tuple[int, int, int]) -> None:
    """The policy of a process that starts serving, with its role's `thresholds`; its pauses go to
    `registry` (once per registry)."""
    gc.set_threshold(*thresholds)
    if _TIMER not in gc.callbacks:
        gc.callbacks.append(_TIMER)
    registry.register(PAUSES)
    registry.register(_Frozen())


def settled() -> None:
    """The state loaded so far will live long: no collection walks it again (see the module's docstring).
    No collection first: it would hold a leader taking over for as long as the pause this avoids, and what
    garbage it would find is what one start left, given back by `unsettled()`."""
    gc.freeze()
    if _refreeze not in gc.callbacks:
        gc.callbacks.append(_refreeze)


def started() -> None:
    """What the process holds now lives as long as it: frozen once, not again (see the module's docstring).
    No collection first, as for `settled()`: what it would find is what the start left, kept once."""
    gc.freeze()


def unsettled() -> None:
    """The frozen state is given back to the collector (a deposed leader dropped it)."""
    if _refreeze in gc.callbacks:
        gc.callbacks.remove(_refreeze)
    gc.unfreeze()
