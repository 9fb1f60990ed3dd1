"""`quota bench`: our agents against what users run today, on the same demand, machine and run.

Rows, each at a WAN round trip of 0 ms and of 80 ms between the region and the center:
- agent_memory, agent_redis: orders call the region's agent (in-process or Redis ledger); only the
  agent's refills, returns and renewals cross the WAN.
- central_grpc: every order asks the center for its amount (Allocation.Acquire) across the WAN.
- central_redis: every order runs a decrement-if-enough Lua script on one central Redis across the WAN.

Beside them, from the same load generator: a bare grpc.aio echo server with the agent's API (what
gRPC alone costs per call), the same server making one batched durable write to the region's Redis
per call as the Redis ledger does (what gRPC and that round trip cost, without the agent's logic),
and a sequential loop of the agent's deduction script on Redis. The two servers run half before and
half after the agent rows at 0 ms, which their ratios compare them with. The WAN
proxies, the echo server, the center, the agents and Redis are processes of their own on loopback;
the load generator is this process.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as redis

from loadtest.bench import promotion_pb
from loadtest.bench_ledger import script_loop_per_s
from loadtest.load import Demand, Measured, Target, drive, over_issue, warm_up
from loadtest.targets import CentralGrpc, CentralRedis, ThroughAgent
from quota_center.v1 import quota_center_pb2 as pb
from quota_center.v1 import quota_center_pb2_grpc as pb_grpc
from quota_testing.launch import ServerProcess, agent_process, center_process
from quota_testing.servers import redis_server
from region_agent.v1 import region_agent_pb2 as agent_pb
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc

WAN_RTTS_MS = (0, 80)
JITTER_MS = 2.0
AGENTS = ("agent_memory", "agent_redis")
STRATEGIES = (*AGENTS, "central_grpc", "central_redis")
REGION = "bench"
WARM_UP_S = 1.0


@dataclass(frozen=True)
class Options:
    seconds: float = 10.0
    """Per measurement: each row, the script loop, and each echo server (half right before, half right
    after the agent rows at 0 ms)."""
    clients: int = 16
    """Concurrent closed-loop order services in the load generator."""
    seed: int = 7


@dataclass
class Row:
    strategy: str
    wan_rtt_ms: int
    measured: Measured
    center_calls: int
    over_issue: int

    def figures(self) -> dict[str, Any]:
        cuts = _quantiles_ms(self.measured.latencies_s)
        deductions = self.measured.deductions
        return {
            "strategy": self.strategy,
            "wan_rtt_ms": self.wan_rtt_ms,
            "deductions": deductions,
            "throughput_per_s": round(deductions / self.measured.elapsed_s),
            "p50_ms": cuts[0],
            "p99_ms": cuts[1],
            "p999_ms": cuts[2],
            "center_calls_per_1k": round(1000 * self.center_calls / max(1, deductions), 2),
            "over_issue": self.over_issue,
            "refused": self.measured.refused,
            "errors": sum(self.measured.errors.values()),
        }


def _quantiles_ms(latencies_s: list[float]) -> tuple[float, float, float]:
    if len(latencies_s) < 2:
        only = round(1000 * latencies_s[0], 2) if latencies_s else 0.0
        return only, only, only
    cuts = statistics.quantiles(latencies_s, n=1000, method="inclusive")
    return tuple(round(1000 * cuts[index], 2) for index in (499, 989, 998))  # type: ignore[return-value]


class _Stack:
    """Everything the rows need, started once: Redis, the center, and a WAN proxy per RTT to each."""

    def __init__(self, workdir: Path, redis_address: str) -> None:
        self.workdir = workdir
        self.redis_address = redis_address
        self._processes: list[ServerProcess] = []
        self.center = self.start(center_process(workdir))
        self.center_via = {rtt: self._wan(self.center.address, rtt) for rtt in WAN_RTTS_MS}
        self.redis_via = {rtt: self._wan(redis_address, rtt) for rtt in WAN_RTTS_MS}

    def start(self, process: ServerProcess) -> ServerProcess:
        self._processes.append(process)
        return process.start()

    def _wan(self, target: str, rtt_ms: int) -> str:
        args = ["--target", target, "--rtt-ms", str(rtt_ms), "--jitter-ms", str(JITTER_MS if rtt_ms else 0)]
        log = self.workdir / f"wan-{target.replace(':', '-')}-{rtt_ms}.log"
        return self.start(ServerProcess(f"wan-{rtt_ms}ms", args, log, module="loadtest.wan")).address

    def close(self) -> None:
        for process in reversed(self._processes):
            process.kill()


@contextlib.contextmanager
def _stack() -> Iterator[_Stack]:
    with tempfile.TemporaryDirectory(prefix="quota-bench-") as workdir, redis_server() as store:
        stack = _Stack(Path(workdir), store.address)
        try:
            yield stack
        finally:
            stack.close()


async def create_promotions(center: str, demand: Demand) -> None:
    """The demand's promotions at the center, in the benchmark's region."""
    async with grpc.aio.insecure_channel(center) as channel:
        admin = pb_grpc.PromotionAdminStub(channel)
        for promotion_id, budget in demand.budgets().items():
            await admin.CreatePromotion(
                pb.CreatePromotionRequest(promotion=promotion_pb(promotion_id, budget, [REGION]))
            )


async def _measure(target: Target, demand: Demand, options: Options) -> tuple[Measured, int]:
    """Warms up, then drives the demand; returns what was measured and the over-issue (warm-up included)."""
    accepted = await warm_up(target, demand, options.clients, WARM_UP_S)
    measured = await drive(target, demand.orders(), options.clients, options.seconds)
    return measured, over_issue(measured.accepted_units + accepted, demand.budgets())


async def _agent_row(stack: _Stack, strategy: str, rtt_ms: int, options: Options) -> Row:
    demand = Demand(f"{strategy}-{rtt_ms}", options.seed)
    await create_promotions(stack.center.address, demand)
    # Each WAN setting's region ledger gets a database of its own, so no row inherits another's.
    database = WAN_RTTS_MS.index(rtt_ms) + 1
    ledger = "memory" if strategy == "agent_memory" else f"redis://{stack.redis_address}/{database}"
    agent = stack.start(agent_process(stack.workdir, REGION, stack.center_via[rtt_ms], "--ledger", ledger))
    try:
        async with grpc.aio.insecure_channel(agent.address) as channel:
            status = agent_grpc.RegionAgentStub(channel).GetStatus
            calls_before = (await status(agent_pb.GetStatusRequest())).center_calls
            measured, over = await _measure(ThroughAgent(channel, REGION), demand, options)
            center_calls = (await status(agent_pb.GetStatusRequest())).center_calls - calls_before
    finally:
        agent.stop()
    return Row(strategy, rtt_ms, measured, center_calls, over)


async def _central_grpc_row(stack: _Stack, rtt_ms: int, options: Options) -> Row:
    demand = Demand(f"central_grpc-{rtt_ms}", options.seed)
    await create_promotions(stack.center.address, demand)
    async with grpc.aio.insecure_channel(stack.center_via[rtt_ms]) as channel:
        measured, over = await _measure(CentralGrpc(channel, REGION), demand, options)
    return Row("central_grpc", rtt_ms, measured, measured.deductions, over)


async def _central_redis_row(stack: _Stack, rtt_ms: int, options: Options) -> Row:
    demand = Demand(f"central_redis-{rtt_ms}", options.seed)
    host, _, port = stack.redis_via[rtt_ms].rpartition(":")
    client = redis.Redis(host=host, port=int(port), max_connections=options.clients)
    try:
        target = CentralRedis(client)
        await target.load(demand.budgets())
        measured, over = await _measure(target, demand, options)
    finally:
        await client.aclose()
    return Row("central_redis", rtt_ms, measured, measured.deductions, over)


async def _echo_per_s(stack: _Stack, options: Options, *args: str) -> float:
    echo = stack.start(ServerProcess("echo", list(args), stack.workdir / "echo.log", module="loadtest.echo"))
    try:
        async with grpc.aio.insecure_channel(echo.address) as channel:
            measured, _ = await _measure(ThroughAgent(channel, REGION), Demand("echo", options.seed), options)
    finally:
        echo.stop()
    return measured.deductions / measured.elapsed_s


@dataclass(frozen=True)
class Comparison:
    figures: dict[str, Any]
    """What `quota bench --json` prints."""
    latencies_ms: dict[str, list[float]]
    """Every timed order's latency, per row label (strategy@rtt), for the chart."""


async def _yardsticks(stack: _Stack, options: Options) -> tuple[float, float]:
    """Calls per second of the bare echo server, and of the echo server writing to Redis per call."""
    echo_per_s = await _echo_per_s(stack, options)
    # Database 0: the agent rows' ledgers have databases of their own.
    return echo_per_s, await _echo_per_s(stack, options, "--redis", f"redis://{stack.redis_address}/0")


async def compare(options: Options) -> Comparison:
    halves = replace(options, seconds=options.seconds / 2)
    with _stack() as stack:
        loop_per_s = await script_loop_per_s(stack.redis_address, options.seconds)
        # The yardsticks run half right before and half right after the agent rows they are compared
        # with, so a machine that slows down or speeds up meanwhile moves both sides alike.
        before = await _yardsticks(stack, halves)
        rows = [await _agent_row(stack, strategy, 0, options) for strategy in AGENTS]
        after = await _yardsticks(stack, halves)
        # The agents' rows at 80 ms next, close in time to those at 0 ms that their p99 is held against.
        rows += [
            await _agent_row(stack, strategy, rtt_ms, options) for rtt_ms in WAN_RTTS_MS[1:] for strategy in AGENTS
        ]
        for rtt_ms in WAN_RTTS_MS:
            rows.append(await _central_grpc_row(stack, rtt_ms, options))
            rows.append(await _central_redis_row(stack, rtt_ms, options))
    echo_per_s, echo_redis_per_s = ((first + second) / 2 for first, second in zip(before, after, strict=True))
    rows_figures = [
        row.figures() for row in sorted(rows, key=lambda row: (STRATEGIES.index(row.strategy), row.wan_rtt_ms))
    ]
    agent_redis = next(row for row in rows_figures if row["strategy"] == "agent_redis" and row["wan_rtt_ms"] == 0)
    figures = {
        "rows": rows_figures,
        "echo_per_s": round(echo_per_s),
        "echo_per_s_before_after": [round(before[0]), round(after[0])],
        "lua_loop_per_s": round(loop_per_s),
        "agent_vs_echo_ratio": round(agent_redis["throughput_per_s"] / echo_per_s, 2),
        "echo_redis_per_s": round(echo_redis_per_s),
        "echo_redis_per_s_before_after": [round(before[1]), round(after[1])],
        "agent_vs_echo_redis_ratio": round(agent_redis["throughput_per_s"] / echo_redis_per_s, 2),
        "agent_vs_lua_ratio": round(agent_redis["throughput_per_s"] / loop_per_s, 2),
        "clients": options.clients,
        "seconds": options.seconds,
    }
    return Comparison(figures, {f"{row.strategy}@{row.wan_rtt_ms}": _ms(row.measured) for row in rows})


def _ms(measured: Measured) -> list[float]:
    return [round(1000 * latency, 3) for latency in measured.latencies_s]
