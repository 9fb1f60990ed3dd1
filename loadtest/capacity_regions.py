"""The load generator of `quota bench capacity`: many regions in one process, each the real agent.

    python -m loadtest.capacity_regions --center [NAME=]HOST:PORT[,...] --regions r00,r01 --promotions 10000 \
        --start-ms MS --measure-from-ms MS --measure-until-ms MS [--orders-per-s 1000] [--selling 0.1]

Every region is an `Agent` as `agent serve` wires it (its `Supply`, `CatalogSync` and promotion cache, a
`GrpcCenter` per center group in `CenterGroups`) on the in-process ledger, without its gRPC server: orders are
placed on it directly, so the process's CPU goes to what the centers see (joins, catalog pulls and the stream,
opening allotments, renewals, refills). Whatever the agent sends the center is what is measured, so a change to the
renewal protocol shows here without a change to this file. `--center` names the groups as `agent serve`
takes them (`default=h1:p,g1=h2:p`; a bare address is the one group of a deployment without groups).

The promotions `cap-000000` ... start at `--start-ms` in every listed region. The agents start at once and
take their opening allotments (their look-ahead covers the start); from the start, orders of one unit go to
the selling share of them (every promotion whose number is a multiple of 1 / `--selling`), spread evenly
over regions and promotions, `--orders-per-s` in all. Prints one JSON line when the region holds every
opening allotment (`opened`), one when the sale has run `OPENING_WINDOW_S` (`opening_window`), and one with
the figures of the measured window (`measured`), then waits to be stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from quota_common import gc_policy
from quota_common.clock import SystemClock
from quota_common.errors import QuotaError, Rejected
from quota_common.shards import center_groups
from region_agent.agent import Agent, AgentSettings
from region_agent.center_groups import CenterGroups
from region_agent.grpc_center import GrpcCenter
from region_agent.ledger.base import Line
from region_agent.ledger.memory import InProcessLedger

OPENING_WINDOW_S = 10.0
"""The first seconds of the sale, whose center calls per region are counted on their own."""
TICK_S = 0.02
"""Orders are sent in steps this far apart."""
MAX_IN_FLIGHT = 5_000
"""Orders waiting beyond this are not sent (and counted as skipped): the generator cannot keep up."""
LAG_PROBE_S = 0.1


def promotion_id(number: int) -> str:
    return f"cap-{number:06d}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Call:
    group: str
    method: str
    ended_ms: int
    latency_ms: float
    request_bytes: int
    status: str
    """The gRPC status code's name (OK)."""


@dataclass
class CallLog:
    """Every unary call the agents make to the center groups: the group, its method, when it ended, how long it
    took and the size of its serialized request; and the (region, promotion) pairs granted an opening allotment."""

    pairs: int
    """Pairs in all: `all_opened` is set once every one was granted its opening allotment."""
    calls: list[Call] = field(default_factory=list)
    opened: set[tuple[str, str]] = field(default_factory=set)
    all_opened: asyncio.Event = field(default_factory=asyncio.Event)

    def tap(self, group: str) -> GroupTap:
        """The interceptor of one group's calls."""
        return GroupTap(self, group)

    async def record(
        self, group: str, continuation: Callable[[Any, Any], Awaitable[Any]], client_call_details: Any, request: Any
    ) -> Any:
        started = time.perf_counter()
        call = await continuation(client_call_details, request)
        with contextlib.suppress(grpc.aio.AioRpcError):
            await call
        method = client_call_details.method
        name = (method.decode() if isinstance(method, bytes) else method).rpartition("/")[2]
        status = (await call.code()).name
        self.calls.append(
            Call(group, name, now_ms(), (time.perf_counter() - started) * 1000, request.ByteSize(), status)
        )
        if status == "OK" and name == "AcquireOpenings":
            # Counted from the answers: polling every ledger for its balances would load the generator itself.
            granted = (await call).outcomes
            self.opened.update((request.agent.region, o.promotion_id) for o in granted if o.grant.grant_id)
            if len(self.opened) >= self.pairs:
                self.all_opened.set()
        return call


@dataclass(frozen=True)
class GroupTap(grpc.aio.UnaryUnaryClientInterceptor):
    log: CallLog
    group: str

    async def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Awaitable[Any]], client_call_details: Any, request: Any
    ) -> Any:
        return await self.log.record(self.group, continuation, client_call_details, request)


@dataclass
class Orders:
    accepted: list[int] = field(default_factory=list)
    """When each accepted order was answered (Unix ms)."""
    refused: list[tuple[int, str]] = field(default_factory=list)
    """When each refused order was answered, and why."""
    skipped: int = 0
    in_flight: int = 0


@dataclass(frozen=True)
class Plan:
    centers: dict[str, list[str]]
    """By group, its replicas (`quota_common.shards.center_groups`)."""
    regions: list[str]
    promotions: int
    start_ms: int
    measure_from_ms: int
    measure_until_ms: int
    orders_per_s: float
    selling: float

    def measured(self, ms: int) -> bool:
        """Whether Unix time `ms` is in the measured window."""
        return self.measure_from_ms <= ms < self.measure_until_ms


async def _until(wall_ms: int) -> None:
    await asyncio.sleep(max(0.0, (wall_ms - now_ms()) / 1000))


async def _held(ledgers: list[InProcessLedger]) -> int:
    """(region, promotion) pairs holding an allotment."""
    return sum([len(await ledger.balances()) for ledger in ledgers])


async def _open(plan: Plan, log: CallLog, started: float) -> None:
    """Waits until every region was granted an opening allotment of every promotion, or the sale starts."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(log.all_opened.wait(), (plan.start_ms - now_ms()) / 1000)
    held = len(log.opened)
    openings = [call for call in log.calls if call.method == "AcquireOpenings"]
    _say(
        "opened",
        seconds=round(time.perf_counter() - started, 2),
        openings=held,
        complete=log.all_opened.is_set(),
        opening_calls=len(openings),
        opening_call_p99_ms=_p99([call.latency_ms for call in openings]),
    )


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return round(ordered[int(0.99 * (len(ordered) - 1))], 1) if ordered else 0.0


async def _order(agent: Agent, region: str, key: str, promotion: str, orders: Orders) -> None:
    orders.in_flight += 1
    try:
        await agent.deduct(key, region, (Line(promotion, 1, f"user-{random.randrange(100_000)}"),))
        orders.accepted.append(now_ms())
    except QuotaError as error:
        reason = error.reason.name if isinstance(error, Rejected) else type(error).__name__
        orders.refused.append((now_ms(), reason))
    finally:
        orders.in_flight -= 1


async def _sell(agents: list[Agent], plan: Plan, orders: Orders) -> None:
    """Open loop: `orders_per_s` spread over the ticks, each order to the next (region, selling promotion)."""
    every = max(1, round(1 / plan.selling))
    selling = [promotion_id(n) for n in range(0, plan.promotions, every)]
    pairs = itertools.cycle(itertools.product(range(len(agents)), selling))
    keys = itertools.count()
    tasks: set[asyncio.Task[None]] = set()
    owed = 0.0
    while now_ms() < plan.measure_until_ms:
        owed += plan.orders_per_s * TICK_S
        while owed >= 1:
            owed -= 1
            if orders.in_flight >= MAX_IN_FLIGHT:
                orders.skipped += 1
                continue
            index, promotion = next(pairs)
            key = f"o{next(keys)}"
            task = asyncio.create_task(_order(agents[index], plan.regions[index], key, promotion, orders))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(TICK_S)


async def _lag(lags: list[float], until_ms: int) -> None:
    """How late the event loop wakes a sleeper: the generator's own saturation, which renew latency includes."""
    while now_ms() < until_ms:
        asked = time.perf_counter()
        await asyncio.sleep(LAG_PROBE_S)
        lags.append((time.perf_counter() - asked - LAG_PROBE_S) * 1000)


def _say(event: str, **figures: Any) -> None:
    print(json.dumps({"event": event, **figures}), flush=True)


def _calls(agents: list[Agent]) -> list[int]:
    return [agent.center_calls for agent in agents]


async def run(plan: Plan) -> None:
    log = CallLog(plan.promotions * len(plan.regions))
    started = time.perf_counter()
    lookahead_s = (plan.start_ms - now_ms()) / 1000 + 60
    agents, ledgers = [], [InProcessLedger() for _ in plan.regions]
    for region, ledger in zip(plan.regions, ledgers, strict=True):
        center = CenterGroups(
            {
                group: GrpcCenter(replicas, region, interceptors=[log.tap(group)])
                for group, replicas in plan.centers.items()
            }
        )
        settings = AgentSettings(region, opening_lookahead_s=lookahead_s, return_on_shutdown=False)
        agents.append(Agent(settings, ledger, center, SystemClock()))
    await asyncio.gather(*(agent.start() for agent in agents))
    gc_policy.started()  # as each agent process does once it has joined
    await _open(plan, log, started)
    await _until(plan.start_ms)
    held_at_start = await _held(ledgers)
    calls_at_start = _calls(agents)
    orders, lags = Orders(), list[float]()
    selling = asyncio.create_task(_sell(agents, plan, orders))
    probing = asyncio.create_task(_lag(lags, plan.measure_until_ms))
    await _until(plan.start_ms + round(OPENING_WINDOW_S * 1000))
    first = [after - before for before, after in zip(calls_at_start, _calls(agents), strict=True)]
    _say("opening_window", held_at_start=held_at_start, calls_by_region=dict(zip(plan.regions, first, strict=True)))
    await _until(plan.measure_from_ms)
    calls_before, calls_from = _calls(agents), len(log.calls)
    await asyncio.gather(selling, probing)
    calls_after = _calls(agents)
    window = [c for c in log.calls[calls_from:] if plan.measured(c.ended_ms)]
    renewals = [c for c in window if c.method.startswith("Renew")]
    accepted = sum(1 for ms in orders.accepted if plan.measured(ms))
    _say(
        "measured",
        renewals=[[c.latency_ms, c.request_bytes, c.status] for c in renewals],
        renewal_groups=[c.group for c in renewals],
        calls_by_method=dict(collections.Counter(c.method for c in window)),
        center_calls=sum(calls_after) - sum(calls_before),
        deductions=accepted,
        refused=dict(collections.Counter(reason for ms, reason in orders.refused if plan.measured(ms))),
        skipped=orders.skipped,
        loop_lag_p99_ms=_p99(lags),
    )
    await asyncio.Event().wait()  # stopped by the benchmark, which has what it needs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.capacity_regions", description=__doc__)
    parser.add_argument("--center", required=True, help="comma-separated, NAME=HOST:PORT per group")
    parser.add_argument("--regions", required=True, help="comma-separated")
    parser.add_argument("--promotions", type=int, required=True)
    parser.add_argument("--start-ms", type=int, required=True)
    parser.add_argument("--measure-from-ms", type=int, required=True)
    parser.add_argument("--measure-until-ms", type=int, required=True)
    parser.add_argument("--orders-per-s", type=float, default=1000.0)
    parser.add_argument("--selling", type=float, default=0.1)
    args = parser.parse_args(argv)
    plan = Plan(
        center_groups(args.center.split(",")),
        args.regions.split(","),
        args.promotions,
        args.start_ms,
        args.measure_from_ms,
        args.measure_until_ms,
        args.orders_per_s,
        args.selling,
    )
    # As each agent process it stands for: its pauses are the agents'.
    gc_policy.serving(CollectorRegistry(), gc_policy.AGENT_THRESHOLDS)
    asyncio.run(run(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
