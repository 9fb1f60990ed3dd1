"""`quota bench`: our agents against what users run today, on the same demand, machine and run.

Rows, each at a WAN round trip of 0 ms and of 80 ms between the region and the center:
- agent_memory, agent_redis: orders call the region's agent (in-process or Redis ledger) through
  quota_client, as order services do; only the agent's refills, returns and renewals cross the WAN.
- central_grpc: every order asks the center for its amount (Allocation.Acquire) across the WAN.
- central_redis: every order runs a decrement-if-enough Lua script on one central Redis across the WAN.

And at 0 ms only, agent_memory_mtls and agent_redis_mtls: the same agents with mutual TLS on every
link, as production runs them. The order services call the agent with their region's orders
certificate, the agent calls a center of its own (serving TLS, behind a WAN proxy of its own) with
the agent's certificate, and every call to either passes the authorization interceptor. Each runs
beside its plaintext row: both agents up and warmed up, then taking turns in short stretches, each
round in the other order (`loadtest.load.in_turn`), so a machine that drifts moves both alike; the
ratio of their rates is what security costs the agent, measured. Taking the same turns, the plaintext
agent is also called through the bare generated stub (promotions of its own): the row's rate over that
one is what quota_client costs an order service, and the agent's ratios to the echo servers and the
script loop below take the stub's rate, since those are called bare too.

Beside them, from the same load generator: a bare grpc.aio echo server with the agent's API (what
gRPC alone costs per call); the same server serving mutual TLS, and mutual TLS with the agent's
authorization interceptor (what TLS costs per call, and what checking the caller adds); the same
server in plaintext making one batched durable write to the region's Redis per call as the Redis
ledger does (what gRPC and that round trip cost, without the agent's logic); and a sequential loop
of the agent's deduction script on Redis. The echo servers, all up at once and taking turns, run half
their time right before the agent rows at 0 ms and half right after, which their ratios compare them
with; the ratios among them come from the same turns. The WAN proxies, the
echo servers, the centers, the agents and Redis are processes of their own on loopback; the load
generator is this process.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as redis

from loadtest.bench import promotion_pb
from loadtest.bench_ledger import script_loop_per_s
from loadtest.load import Demand, Measured, Target, UnderLoad, drive, in_turn, over_issue, warm_up
from loadtest.targets import CentralGrpc, CentralRedis, ThroughClient, raw_stub, through_client
from quota_center.v1 import quota_center_pb2 as pb
from quota_center.v1 import quota_center_pb2_grpc as pb_grpc
from quota_client import AsyncQuotaClient
from quota_common.transport import Transport
from quota_testing.launch import ServerProcess, agent_process, center_process
from quota_testing.servers import redis_server
from quota_testing.tls import DevTls, write_dev_tls

WAN_RTTS_MS = (0, 80)
JITTER_MS = 2.0
AGENTS = ("agent_memory", "agent_redis")
MTLS = "_mtls"
"""The suffix of a row, or of an echo server, with mutual TLS on every link."""
STRATEGIES = (*AGENTS, "central_grpc", "central_redis")
YARDSTICKS = ("echo", "echo_mtls", "echo_mtls_authz", "echo_redis")
REGION = "bench"
OWNER = "owner-alice"
"""The one that creates the promotions at the center serving mTLS."""
WARM_UP_S = 1.0


@dataclass(frozen=True)
class Options:
    seconds: float = 10.0
    """Per measurement: each row, the script loop, and each echo server (half right before, half right
    after the agent rows at 0 ms). A row taking turns with another gets this much in all."""
    clients: int = 16
    """Concurrent closed-loop order services in the load generator."""
    rounds: int = 4
    """Stretches that what is compared by a ratio takes turns in (each agent with and without mutual TLS,
    the echo servers with each other), each round in the other order: more rounds, less drift between them."""
    seed: int = 7


@dataclass
class Row:
    strategy: str
    wan_rtt_ms: int
    measured: Measured
    center_calls: int
    over_issue: int

    @property
    def per_s(self) -> float:
        return self.measured.deductions / self.measured.elapsed_s

    def figures(self) -> dict[str, Any]:
        cuts = quantiles_ms(self.measured.latencies_s)
        deductions = self.measured.deductions
        return {
            "strategy": self.strategy,
            "wan_rtt_ms": self.wan_rtt_ms,
            "mtls": self.strategy.endswith(MTLS),
            "deductions": deductions,
            "throughput_per_s": round(self.per_s),
            "p50_ms": cuts[0],
            "p99_ms": cuts[1],
            "p999_ms": cuts[2],
            "center_calls_per_1k": round(1000 * self.center_calls / max(1, deductions), 2),
            "over_issue": self.over_issue,
            "refused": self.measured.refused,
            "errors": sum(self.measured.errors.values()),
        }


def quantiles_ms(latencies_s: list[float]) -> tuple[float, float, float]:
    if len(latencies_s) < 2:
        only = round(1000 * latencies_s[0], 2) if latencies_s else 0.0
        return only, only, only
    cuts = statistics.quantiles(latencies_s, n=1000, method="inclusive")
    return tuple(round(1000 * cuts[index], 2) for index in (499, 989, 998))  # type: ignore[return-value]


def _transport(tls: DevTls | None, name: str) -> Transport:
    """How the load generator calls as `name` (a file name of the development set): plaintext without `tls`."""
    return Transport() if tls is None else tls.transport(name)


@dataclass(frozen=True)
class _Side:
    """Where a row's agent runs: the center it joins, through which proxy, logging where, secured how."""

    center: str
    center_via: dict[int, str]
    workdir: Path
    tls: DevTls | None


class _Stack:
    """Everything the rows need, started once: Redis, a plaintext center and a WAN proxy per RTT to it and
    to Redis; a development set of certificates, and a center serving mutual TLS behind a 0 ms proxy."""

    def __init__(self, workdir: Path, redis_address: str) -> None:
        self.workdir = workdir
        self.redis_address = redis_address
        self._processes: list[ServerProcess] = []
        center = self.start(center_process(workdir))
        self.plaintext = _Side(
            center.address, {rtt: self._wan(center.address, rtt) for rtt in WAN_RTTS_MS}, workdir, None
        )
        self.redis_via = {rtt: self._wan(redis_address, rtt) for rtt in WAN_RTTS_MS}
        self.tls = write_dev_tls(workdir / "tls", regions=(REGION,))
        (workdir / "mtls").mkdir()
        secure = self.start(center_process(workdir / "mtls", tls=self.tls))
        self.mtls = _Side(secure.address, {0: self._wan(secure.address, 0)}, workdir / "mtls", self.tls)

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


async def create_promotions(
    center: str, demand: Demand, transport: Transport | None = None, region: str = REGION
) -> None:
    """The demand's promotions at the center, in `region` (plaintext without `transport`)."""
    async with (transport or Transport()).aio_channel(center) as channel:
        admin = pb_grpc.PromotionAdminStub(channel)
        for promotion_id, budget in demand.budgets().items():
            await admin.CreatePromotion(
                pb.CreatePromotionRequest(promotion=promotion_pb(promotion_id, budget, [region]))
            )


async def _measure(target: Target, demand: Demand, options: Options) -> tuple[Measured, int]:
    """Warms up, then drives the demand; returns what was measured and the over-issue (warm-up included)."""
    accepted = await warm_up(target, demand, options.clients, WARM_UP_S)
    measured = await drive(target, demand.orders(), options.clients, options.seconds)
    return measured, over_issue(measured.accepted_units + accepted, demand.budgets())


class _Agent(UnderLoad):
    """One agent row under load: the agent's promotions, orders, and calls to the center."""

    def __init__(
        self, strategy: str, rtt_ms: int, target: ThroughClient[AsyncQuotaClient], demand: Demand, clients: int
    ) -> None:
        super().__init__(target, demand, clients)
        self.strategy, self.rtt_ms = strategy, rtt_ms
        self.address = target.client.addresses[0]
        self._status = target.client.status
        self._calls_before = 0

    async def warm_up(self, seconds: float = WARM_UP_S) -> None:
        self._calls_before = await self._center_calls()
        await super().warm_up(seconds)

    async def row(self) -> Row:
        """The row so far: every stretch timed, and the center calls since the warm-up began."""
        center_calls = await self._center_calls() - self._calls_before
        return Row(self.strategy, self.rtt_ms, self.measured, center_calls, self.over_issue())

    async def _center_calls(self) -> int:
        return (await self._status()).center_calls


@contextlib.asynccontextmanager
async def _agent(
    stack: _Stack, ledger: str, rtt_ms: int, options: Options, mtls: bool = False
) -> AsyncIterator[_Agent]:
    """An agent on `ledger` (agent_memory or agent_redis) with the center `rtt_ms` away, its promotions
    created, until the block ends; with `mtls`, every link of it is mutual TLS."""
    side = stack.mtls if mtls else stack.plaintext
    strategy = ledger + (MTLS if mtls else "")
    demand, stub = Demand(f"{strategy}-{rtt_ms}", options.seed), Demand(f"{strategy}-{rtt_ms}-stub", options.seed)
    for promotions in (demand, stub):
        await create_promotions(side.center, promotions, _transport(side.tls, OWNER))
    # Each agent on Redis gets a database of its own, so no row inherits another's ledger.
    database = 1 + WAN_RTTS_MS.index(rtt_ms) + (len(WAN_RTTS_MS) if mtls else 0)
    url = "memory" if ledger == "agent_memory" else f"redis://{stack.redis_address}/{database}"
    agent = stack.start(agent_process(side.workdir, REGION, side.center_via[rtt_ms], "--ledger", url, tls=side.tls))
    try:
        async with through_client(agent.address, REGION, side.tls) as target:
            yield _Agent(strategy, rtt_ms, target, demand, options.clients)
    finally:
        agent.stop()


@contextlib.asynccontextmanager
async def _stub(agent: _Agent, options: Options) -> AsyncIterator[UnderLoad]:
    """`agent` (a plaintext one) called through the bare stub, on the promotions `_agent` created for that."""
    async with raw_stub(agent.address, REGION) as target:
        yield UnderLoad(target, Demand(f"{agent.strategy}-{agent.rtt_ms}-stub", options.seed), options.clients)


async def _agent_row(stack: _Stack, ledger: str, rtt_ms: int, options: Options) -> Row:
    async with _agent(stack, ledger, rtt_ms, options) as agent:
        await agent.warm_up()
        await agent.drive(options.seconds)
        return await agent.row()


async def _with_and_without_mtls(stack: _Stack, ledger: str, options: Options) -> tuple[list[Row], float]:
    """The agent on `ledger` at 0 ms in plaintext and with mutual TLS, and the plaintext one through the bare stub,
    all up, warmed up, then taking turns: the two rows, and the rate through the stub."""
    async with (
        _agent(stack, ledger, 0, options) as plain,
        _agent(stack, ledger, 0, options, mtls=True) as secure,
        _stub(plain, options) as stub,
    ):
        await plain.warm_up()
        await secure.warm_up()
        await stub.warm_up(WARM_UP_S)
        await in_turn([plain, stub, secure], options.seconds, options.rounds)
        return [await plain.row(), await secure.row()], stub.per_s


async def _central_grpc_row(stack: _Stack, rtt_ms: int, options: Options) -> Row:
    demand = Demand(f"central_grpc-{rtt_ms}", options.seed)
    # A region of its own: it joins as a ledger life, which the center refuses in a region another life
    # renewed within a lease (an agent's, or the other round trip's row).
    region = f"central-{rtt_ms}ms"
    await create_promotions(stack.plaintext.center, demand, region=region)
    async with grpc.aio.insecure_channel(stack.plaintext.center_via[rtt_ms]) as channel:
        measured, over = await _measure(await CentralGrpc.join(channel, region), demand, options)
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


def _echo_settings(stack: _Stack, yardstick: str) -> tuple[list[str], DevTls | None]:
    """The echo server's arguments for `yardstick`, and the certificates the load generator calls it with."""
    secured = stack.tls.flags(f"agent-{REGION}")
    return {
        "echo": ([], None),
        "echo_mtls": (secured, stack.tls),
        "echo_mtls_authz": ([*secured, "--authz", REGION], stack.tls),
        # Database 0: the agent rows' ledgers have databases of their own.
        "echo_redis": (["--redis", f"redis://{stack.redis_address}/0"], None),
    }[yardstick]


@contextlib.asynccontextmanager
async def _echo(stack: _Stack, yardstick: str, options: Options) -> AsyncIterator[UnderLoad]:
    args, tls = _echo_settings(stack, yardstick)
    echo = stack.start(ServerProcess(yardstick, args, stack.workdir / f"{yardstick}.log", module="loadtest.echo"))
    try:
        async with raw_stub(echo.address, REGION, tls) as target:
            yield UnderLoad(target, Demand(yardstick, options.seed), options.clients)
    finally:
        echo.stop()


async def _yardsticks(stack: _Stack, options: Options) -> dict[str, float]:
    """Calls per second of each echo server: all up and warmed up, then taking turns."""
    async with contextlib.AsyncExitStack() as servers:
        echoes = [await servers.enter_async_context(_echo(stack, yardstick, options)) for yardstick in YARDSTICKS]
        for echo in echoes:
            await echo.warm_up(WARM_UP_S)
        await in_turn(echoes, options.seconds, options.rounds)
    return {yardstick: echo.per_s for yardstick, echo in zip(YARDSTICKS, echoes, strict=True)}


@dataclass(frozen=True)
class Comparison:
    figures: dict[str, Any]
    """What `quota bench --json` prints."""
    latencies_ms: dict[str, list[float]]
    """Every timed order's latency, per row label (strategy@rtt), for the chart."""


async def compare(options: Options) -> Comparison:
    halves = replace(options, seconds=options.seconds / 2)
    with _stack() as stack:
        loop_per_s = await script_loop_per_s(stack.redis_address, options.seconds)
        # The yardsticks run half right before and half right after the agent rows they are compared
        # with, so a machine that slows down or speeds up meanwhile moves the yardsticks and those rows alike.
        before = await _yardsticks(stack, halves)
        rows, stub_per_s = [], {}
        for ledger in AGENTS:
            pair, stub_per_s[ledger] = await _with_and_without_mtls(stack, ledger, options)
            rows += pair
        after = await _yardsticks(stack, halves)
        # The agents' rows at 80 ms next, close in time to those at 0 ms that their p99 is held against.
        rows += [await _agent_row(stack, ledger, rtt_ms, options) for rtt_ms in WAN_RTTS_MS[1:] for ledger in AGENTS]
        for rtt_ms in WAN_RTTS_MS:
            rows.append(await _central_grpc_row(stack, rtt_ms, options))
            rows.append(await _central_redis_row(stack, rtt_ms, options))
    rows.sort(key=_table_order)
    per_s = {yardstick: (before[yardstick] + after[yardstick]) / 2 for yardstick in YARDSTICKS}
    agent_redis = stub_per_s["agent_redis"]
    figures = {
        "rows": [row.figures() for row in rows],
        **_yardstick_figures(per_s, before, after),
        "lua_loop_per_s": round(loop_per_s),
        "agent_vs_echo_ratio": round(agent_redis / per_s["echo"], 2),
        "agent_vs_echo_redis_ratio": round(agent_redis / per_s["echo_redis"], 2),
        "agent_vs_lua_ratio": round(agent_redis / loop_per_s, 2),
        **_mtls_ratios(rows, per_s),
        **{f"{ledger}_client_vs_stub_ratio": round(_rate(rows, ledger) / stub_per_s[ledger], 2) for ledger in AGENTS},
        "clients": options.clients,
        "seconds": options.seconds,
        "rounds": options.rounds,
    }
    return Comparison(figures, {f"{row.strategy}@{row.wan_rtt_ms}": _ms(row.measured) for row in rows})


def _table_order(row: Row) -> tuple[int, int, bool]:
    """By strategy and WAN round trip, each mTLS row right below its plaintext row."""
    mtls = row.strategy.endswith(MTLS)
    return STRATEGIES.index(row.strategy.removesuffix(MTLS)), row.wan_rtt_ms, mtls


def _yardstick_figures(per_s: dict[str, float], before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """ECHO_per_s (the mean) and ECHO_per_s_before_after, for each echo server."""
    figures: dict[str, Any] = {}
    for yardstick in YARDSTICKS:
        figures[f"{yardstick}_per_s"] = round(per_s[yardstick])
        figures[f"{yardstick}_per_s_before_after"] = [round(before[yardstick]), round(after[yardstick])]
    return figures


def _mtls_ratios(rows: list[Row], per_s: dict[str, float]) -> dict[str, float]:
    """Each agent's rate with mutual TLS over its rate in plaintext (at 0 ms), and the echo server's with
    mutual TLS, and with mutual TLS and the authorization interceptor, over its plaintext rate."""
    ratios = {f"{ledger}{MTLS}_ratio": round(_rate(rows, ledger + MTLS) / _rate(rows, ledger), 2) for ledger in AGENTS}
    for yardstick in ("echo_mtls", "echo_mtls_authz"):
        ratios[f"{yardstick}_ratio"] = round(per_s[yardstick] / per_s["echo"], 2)
    return ratios


def _rate(rows: list[Row], strategy: str) -> float:
    """The rate of `strategy`'s row at 0 ms."""
    return next(row.per_s for row in rows if row.strategy == strategy and row.wan_rtt_ms == 0)


def _ms(measured: Measured) -> list[float]:
    return [round(1000 * latency, 3) for latency in measured.latencies_s]
