"""The embedded stack as real processes: one center on SQLite in a work directory, and per region one agent on the
in-process ledger, every link mutual TLS. Its faults: the center killed and restarted on its port and store, or
stopped past the agents' lease and continued.

Agents are not killed here: an in-process ledger forgets its order keys by design, so a retry that reaches a
restarted in-process agent is a new order (see the README). Killing agents belongs to the Redis stack, whose
ledger outlives the agent.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from loadtest.chaos.nemesis import Fault
from quota_testing.launch import ServerProcess, agent_process, center_process
from quota_testing.tls import write_dev_tls
from region_agent.agent import AgentSettings

REGIONS = ("eu", "us")
RENEW_INTERVAL_S = 0.5
LEASE_TTL_S = AgentSettings(REGIONS[0], renew_interval_s=RENEW_INTERVAL_S).assumed_lease_ttl_s
"""The lease the agents assume from their renew interval. Short, so a stopped center outlives leases."""
PULL_INTERVAL_S = 0.5
"""The repair link beside the push stream: a freeze reaches an agent this soon even if its stream is down."""
AGENT_OPTIONS = ("--renew-interval", str(RENEW_INTERVAL_S), "--pull-interval", str(PULL_INTERVAL_S))


class EmbeddedStack:
    name = "embedded"

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self.tls = write_dev_tls(workdir / "certs", REGIONS)
        self.center = self._center()
        self.agents: dict[str, list[ServerProcess]] = {}
        self._stopped = False

    def _center(self, port: int = 0) -> ServerProcess:
        return center_process(self._workdir, "--lease-ttl", str(LEASE_TTL_S), port=port, tls=self.tls)

    @property
    def centers(self) -> list[str]:
        return [self.center.address]

    async def start(self) -> None:
        await asyncio.to_thread(self.center.start)
        for region in REGIONS:
            agent = agent_process(self._workdir, region, self.center.address, *AGENT_OPTIONS, tls=self.tls)
            self.agents[region] = [await asyncio.to_thread(agent.start)]

    def faults(self) -> Mapping[str, Sequence[str]]:
        return {"kill-leader": ("center",), "stop-leader": ("center",)}

    async def inject(self, fault: Fault) -> str:
        if fault.kind == "kill-leader":
            self.center.kill()
        else:
            os.kill(self.center.pid, signal.SIGSTOP)
            self._stopped = True
        return "center"

    async def repair(self, fault: Fault) -> None:
        await self.heal()

    async def heal(self) -> None:
        """Everything running, nothing stopped, whatever the nemesis was doing when it was interrupted."""
        if self._stopped and self.center.alive:
            os.kill(self.center.pid, signal.SIGCONT)
        self._stopped = False
        if not self.center.alive:
            self.center = await asyncio.to_thread(self._center(self.center.port).start)

    async def ledger_holdings(self) -> None:
        """Nothing: an in-process ledger dies with its agent, which returned what was available; only what its
        open reservations held may still be counted (read before the stop)."""

    async def close(self) -> None:
        if self._stopped and self.center.alive:
            os.kill(self.center.pid, signal.SIGCONT)
        for process in (*(a for agents in self.agents.values() for a in agents), self.center):
            process.kill()
