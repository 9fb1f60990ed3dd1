"""`quota bench cost`: where the agent's calls per second go, step by step from bare gRPC to the agent.

Each server below is driven in turn by the same load generator (this process), and the list runs
`rounds` times over, so a machine whose speed drifts moves every server alike:

- echo: a bare grpc.aio server with the agent's API that does nothing (`loadtest.echo`);
- echo_waiting: the same, waiting per call about as long as a Redis round trip takes under this
  load, batched as the ledger batches, but touching nothing: a round trip's latency without its work;
- echo_redis_volatile: a batched write per call to a Redis that keeps nothing on disk;
- echo_redis_durable: the same to a Redis that fsyncs every write, as the ledger's Redis runs;
- agent_memory, agent_redis: the agent on its in-process ledger, and on that durable Redis.

Per server: calls per second in each round and their mean, the mean over echo's, and the CPU the
server's process spent per call (user and system time, from /proc): a server that answers fewer
calls while spending no more per call is waiting, not working. Every server, the agents too, is called
through the bare generated stub: this measures the servers, not quota_client (`quota bench embedded` does).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.compare import REGION, create_promotions
from loadtest.load import Demand, drive, warm_up
from loadtest.targets import raw_stub
from quota_testing.launch import ServerProcess, agent_process, center_process
from quota_testing.servers import redis_server

SERVERS = ("echo", "echo_waiting", "echo_redis_volatile", "echo_redis_durable", "agent_memory", "agent_redis")
WARM_UP_S = 1.0


@dataclass(frozen=True)
class CostOptions:
    seconds: float = 5.0
    """Per server and round."""
    rounds: int = 2
    clients: int = 16
    wait_ms: float = 0.7
    """echo_waiting's wait: the durable Redis round trip's median under this load here (0.65 to 0.86 ms)."""
    seed: int = 7


@dataclass(frozen=True)
class _Run:
    calls_per_s: float
    cpu_s_per_call: float | None


def _cpu_seconds(pid: int) -> float | None:
    """User plus system time of a process so far; None where /proc does not say (not Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    # After the command name: state is field 3 of stat(5), utime 14 and stime 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Servers:
    """The center and both Redis servers, started once; each measured server is a process of its own."""

    def __init__(self, workdir: Path, durable_redis: str, volatile_redis: str, options: CostOptions) -> None:
        self._workdir = workdir
        self._durable = durable_redis
        self._volatile = volatile_redis
        self._options = options
        self.center = center_process(workdir).start()

    def process(self, server: str, round_number: int) -> ServerProcess:
        if server == "agent_memory":
            return agent_process(self._workdir, REGION, self.center.address, "--ledger", "memory")
        if server == "agent_redis":
            # A database per round: each agent starts a ledger of its own, as a new region's would.
            ledger = f"redis://{self._durable}/{round_number + 1}"
            return agent_process(self._workdir, REGION, self.center.address, "--ledger", ledger)
        args = {
            "echo": [],
            "echo_waiting": ["--wait-ms", str(self._options.wait_ms)],
            "echo_redis_volatile": ["--redis", f"redis://{self._volatile}/0"],
            "echo_redis_durable": ["--redis", f"redis://{self._durable}/0"],
        }[server]
        return ServerProcess(server, args, self._workdir / f"{server}.log", module="loadtest.echo")

    async def run(self, server: str, round_number: int) -> _Run:
        demand = Demand(f"{server}-{round_number}", self._options.seed)
        if server.startswith("agent"):
            await create_promotions(self.center.address, demand)
        process = self.process(server, round_number).start()
        try:
            async with raw_stub(process.address, REGION) as target:
                await warm_up(target, demand, self._options.clients, WARM_UP_S)
                cpu_before = _cpu_seconds(process.pid)
                measured = await drive(target, demand.orders(), self._options.clients, self._options.seconds)
                cpu_after = _cpu_seconds(process.pid)
        finally:
            process.stop()
        calls = max(1, measured.deductions)
        cpu = None if cpu_before is None or cpu_after is None else (cpu_after - cpu_before) / calls
        return _Run(measured.deductions / measured.elapsed_s, cpu)


async def cost(options: CostOptions) -> dict[str, Any]:
    runs: dict[str, list[_Run]] = {server: [] for server in SERVERS}
    with (
        tempfile.TemporaryDirectory(prefix="quota-cost-") as workdir,
        redis_server() as durable,
        redis_server("--appendonly", "no") as volatile,
    ):
        servers = _Servers(Path(workdir), durable.address, volatile.address, options)
        try:
            for round_number in range(options.rounds):
                for server in SERVERS:
                    runs[server].append(await servers.run(server, round_number))
        finally:
            servers.center.stop()
    echo_per_s = _mean([run.calls_per_s for run in runs["echo"]])
    return {
        "servers": [_figures(server, runs[server], echo_per_s) for server in SERVERS],
        "seconds": options.seconds,
        "rounds": options.rounds,
        "clients": options.clients,
        "wait_ms": options.wait_ms,
    }


def _figures(server: str, runs: list[_Run], echo_per_s: float) -> dict[str, Any]:
    mean_per_s = _mean([run.calls_per_s for run in runs])
    cpu = [run.cpu_s_per_call for run in runs]
    return {
        "server": server,
        "per_s": [round(run.calls_per_s) for run in runs],
        "mean_per_s": round(mean_per_s),
        "vs_echo": round(mean_per_s / echo_per_s, 2),
        "cpu_us_per_call": None if None in cpu else round(1e6 * _mean([c for c in cpu if c is not None])),
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
