"""The embedded stack as real processes: one center on SQLite in a work directory, and per region one agent on the
in-process ledger. The center can be killed and restarted on its port and store, or stopped and continued."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from quota_center.launch import ServerProcess, agent_process, center_process
from region_agent.agent import AgentSettings

REGIONS = ("eu", "us")
RENEW_INTERVAL_S = 0.5
LEASE_TTL_S = AgentSettings(REGIONS[0], renew_interval_s=RENEW_INTERVAL_S).assumed_lease_ttl_s
"""The lease the agents assume from their renew interval. Short, so a stopped center outlives leases."""
PULL_INTERVAL_S = 0.5
"""The repair link beside the push stream: a freeze reaches an agent this soon even if its stream is down."""


class EmbeddedStack:
    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self.center = self._center()
        self.agents: dict[str, ServerProcess] = {}
        self._stopped = False

    def _center(self, port: int = 0) -> ServerProcess:
        return center_process(self._workdir, "--lease-ttl", str(LEASE_TTL_S), port=port)

    async def start(self) -> None:
        await asyncio.to_thread(self.center.start)
        for region in REGIONS:
            options = ("--renew-interval", str(RENEW_INTERVAL_S), "--pull-interval", str(PULL_INTERVAL_S))
            agent = agent_process(self._workdir, region, self.center.address, *options)
            self.agents[region] = await asyncio.to_thread(agent.start)

    def kill_center(self) -> None:
        self.center.kill()

    async def restart_center(self) -> None:
        self.center = await asyncio.to_thread(self._center(self.center.port).start)

    def stop_center(self) -> None:
        os.kill(self.center.pid, signal.SIGSTOP)
        self._stopped = True

    def continue_center(self) -> None:
        if self._stopped and self.center.alive:
            os.kill(self.center.pid, signal.SIGCONT)
        self._stopped = False

    async def heal(self) -> None:
        """Everything running, nothing stopped, whatever the nemesis was doing when it was interrupted."""
        self.continue_center()
        if not self.center.alive:
            await self.restart_center()

    def close(self) -> None:
        self.continue_center()
        for process in (*self.agents.values(), self.center):
            process.kill()
