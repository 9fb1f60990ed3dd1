"""The production shape as real processes: a 3-member etcd, two center replicas on it (one elected leader), and two
regions, each with its own durable Redis (append-only file, fsync always) shared by two agents. Each region reaches
each replica through its own link (`loadtest/wan.py`), so a region can be cut off from the center alone. Every
gRPC link is mutual TLS.

Its faults: kill -9 of the leader, of an agent, of a region's Redis (restarted from its append-only file) and of
an etcd member, each restarted on its port and data; SIGSTOP of the leader past its election lease and of a Redis;
a region partitioned from both replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

import redis.asyncio as redis

from loadtest.chaos.admin import ADMIN, OPERATOR, CenterAdmin
from loadtest.chaos.embedded import AGENT_OPTIONS, LEASE_TTL_S, REGIONS
from loadtest.chaos.nemesis import Fault
from loadtest.wan import WanProxy
from quota_testing.launch import ServerProcess, agent_process, center_process
from quota_testing.servers import RestartableServer, etcd_cluster, redis_process
from quota_testing.tls import write_dev_tls
from region_agent.ledger.redis import RedisLedger

REPLICAS = 2
AGENTS_PER_REGION = 2
ELECTION_TTL_S = 2
"""Short, so a stopped leader loses its election within a fault's hold."""


class DistributedStack:
    name = "redis-etcd"

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self.tls = write_dev_tls(workdir / "certs", REGIONS)
        self._servers = contextlib.ExitStack()
        self.etcd: list[RestartableServer] = []
        self.replicas: list[ServerProcess] = []
        self.redis: dict[str, RestartableServer] = {}
        self.links: dict[str, list[WanProxy]] = {}
        self._through_links: dict[str, str] = {}
        """Per region, the --center its agents are given: its own link to each replica."""
        self.agents: dict[str, list[ServerProcess]] = {}
        self._stopped: dict[str, int] = {}
        """What the nemesis holds stopped, by target, with its process id."""
        self._store = ""

    @property
    def centers(self) -> list[str]:
        return [replica.address for replica in self.replicas]

    async def start(self) -> None:
        self.etcd = await asyncio.to_thread(self._servers.enter_context, etcd_cluster(3))
        self._store = "etcd://" + ",".join(member.address for member in self.etcd) + "/chaos"
        for n in range(REPLICAS):
            self.replicas.append(await asyncio.to_thread(self._replica(n).start))
        for region in REGIONS:
            self.redis[region] = await asyncio.to_thread(self._servers.enter_context, redis_process())
            self.links[region] = [WanProxy("127.0.0.1", replica.port) for replica in self.replicas]
            ports = [await link.start() for link in self.links[region]]
            self._through_links[region] = ",".join(f"127.0.0.1:{port}" for port in ports)
            self.agents[region] = []
            for n in range(AGENTS_PER_REGION):
                self.agents[region].append(await asyncio.to_thread(self._agent(region, n).start))

    def _replica(self, n: int, port: int = 0) -> ServerProcess:
        workdir = self._workdir / f"center-{n}"
        workdir.mkdir(exist_ok=True)
        options = ("--lease-ttl", str(LEASE_TTL_S), "--election-ttl", str(ELECTION_TTL_S))
        return center_process(workdir, *options, port=port, store=self._store, tls=self.tls)

    def _agent(self, region: str, n: int, port: int = 0) -> ServerProcess:
        workdir = self._workdir / f"{region}-{n}"
        workdir.mkdir(exist_ok=True)
        ledger = ("--ledger", f"redis://{self.redis[region].address}/0")
        links = self._through_links[region]
        return agent_process(workdir, region, links, *ledger, *AGENT_OPTIONS, port=port, tls=self.tls)

    def faults(self) -> Mapping[str, Sequence[str]]:
        agents = [f"{region}-{n}" for region in REGIONS for n in range(AGENTS_PER_REGION)]
        return {
            "kill-leader": ("leader",),
            "stop-leader": ("leader",),
            "kill-agent": agents,
            "kill-redis": REGIONS,
            "stop-redis": REGIONS,
            "kill-etcd": tuple(f"m{n}" for n in range(len(self.etcd) or 3)),
            "partition": REGIONS,
        }

    async def inject(self, fault: Fault) -> str:
        kind, target = fault.kind, fault.target
        if kind.endswith("-leader"):
            target = await self._leader()
            replica = self.replicas[int(target.removeprefix("center-"))]
            self._kill_or_stop(kind, target, replica.pid)
        elif kind == "kill-agent":
            self._agent_named(target).kill()
        elif kind in ("kill-redis", "stop-redis"):
            self._kill_or_stop(kind, target, self.redis[target].pid)
        elif kind == "kill-etcd":
            self._kill_or_stop(kind, target, self.etcd[int(target.removeprefix("m"))].pid)
        else:
            for link in self.links[target]:
                link.partition()
        return target

    async def _leader(self) -> str:
        leader = await CenterAdmin(self.centers, self.tls.transport(ADMIN), self.tls.transport(OPERATOR)).leader()
        return f"center-{self.centers.index(leader) if leader else 0}"

    def _kill_or_stop(self, kind: str, target: str, pid: int) -> None:
        if kind.startswith("stop-"):
            os.kill(pid, signal.SIGSTOP)
            self._stopped[target] = pid
        else:
            os.kill(pid, signal.SIGKILL)

    def _agent_named(self, name: str) -> ServerProcess:
        region, _, n = name.rpartition("-")
        return self.agents[region][int(n)]

    async def repair(self, fault: Fault) -> None:
        await self.heal()

    async def heal(self) -> None:
        """Everything running, connected and continued, whatever the nemesis was doing when it was interrupted.
        Data stores first: a center needs etcd, an agent its Redis."""
        self._continue_stopped()
        for links in self.links.values():
            for link in links:
                link.heal()
        for server in (*self.etcd, *self.redis.values()):
            if not _running(server.pid):
                server.stop()
                await asyncio.to_thread(server.start)
        for n, replica in enumerate(self.replicas):
            if not replica.alive:
                replica.kill()
                self.replicas[n] = await asyncio.to_thread(self._replica(n, replica.port).start)
        for region, agents in self.agents.items():
            for n, agent in enumerate(agents):
                if not agent.alive:
                    agent.kill()
                    agents[n] = await asyncio.to_thread(self._agent(region, n, agent.port).start)

    async def ledger_holdings(self) -> dict[tuple[str, str], int]:
        """What each region's Redis holds, by (region, promotion): it outlives the agents, with their unspent
        quota and open reservations."""
        holdings = {}
        for region, server in self.redis.items():
            ledger = RedisLedger(redis.Redis(host=server.host, port=server.port), region)
            try:
                await ledger.incarnation()  # the region's current ledger life, which the agents left behind
                balances = await ledger.balances()
            finally:
                await ledger.aclose()
            holdings.update({(region, p): b.available + b.held for p, b in balances.items()})
        return holdings

    def _continue_stopped(self) -> None:
        for pid in self._stopped.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._stopped.clear()

    async def close(self) -> None:
        self._continue_stopped()
        for process in (*(a for agents in self.agents.values() for a in agents), *self.replicas):
            process.kill()
        for links in self.links.values():
            for link in links:
                await link.close()
        await asyncio.to_thread(self._servers.close)


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (a killed child is reaped by its `stop`, so a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False
