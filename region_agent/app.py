"""The agent's composition root: pick the ledger, connect to the center, serve orders."""

from __future__ import annotations

from dataclasses import dataclass, replace

import grpc
import redis.asyncio as redis

from quota_center.clock import SystemClock
from quota_center.errors import InvalidArgument
from quota_center.metrics_http import MetricsEndpoint
from quota_center.process import serve
from region_agent import server as agent_server
from region_agent.agent import Agent, AgentSettings
from region_agent.cache import CacheTier
from region_agent.cache_redis import RedisCacheTier
from region_agent.center_client import CenterClient
from region_agent.ledger.base import Ledger
from region_agent.ledger.memory import InProcessLedger
from region_agent.ledger.redis import RedisLedger
from region_agent.metrics import AgentMetrics, CenterCallTimer


@dataclass(frozen=True)
class AgentConfig:
    settings: AgentSettings
    listen: str = "127.0.0.1:50061"
    """host:port to serve gRPC on; port 0 picks a free one (printed on stdout)."""
    center: str = "127.0.0.1:50051"
    """The center replicas' host:port, comma-separated; calls follow whichever leads."""
    ledger: str = "memory"
    """Where the regional ledger lives: memory (embedded default) or redis://HOST:PORT[/DB]."""
    retention_s: float = 7 * 86_400
    """How long the ledger remembers orders and refunds (their retries replay meanwhile)."""
    metrics_listen: str = ""
    """host:port of the Prometheus endpoint (GET /metrics); empty: none."""


def open_ledger(url: str, region: str, retention_s: float) -> tuple[Ledger, CacheTier | None]:
    """The ledger, and the region's tier of the promotion cache that lives beside it."""
    if url == "memory":
        return InProcessLedger(retention_s=retention_s), None
    if url.startswith(("redis://", "rediss://", "unix://")):
        client = redis.Redis.from_url(url)
        return RedisLedger(client, region, retention_s), RedisCacheTier(client, region)
    raise InvalidArgument(f"unknown ledger {url!r}; use memory or redis://HOST:PORT[/DB]")


async def run_agent(config: AgentConfig) -> None:
    metrics = AgentMetrics(config.settings.region)
    center = CenterClient(config.center.split(","), config.settings.region, interceptors=[CenterCallTimer(metrics)])
    ledger, tier = open_ledger(config.ledger, config.settings.region, config.retention_s)
    # A shared Redis ledger outlives this process (other agents spend from it); an in-process one does not.
    settings = replace(config.settings, return_on_shutdown=isinstance(ledger, InProcessLedger))
    agent = Agent(settings, ledger, center, SystemClock(), tier)
    await agent.start()
    server = grpc.aio.server()
    agent_server.add_to_server(agent, server, metrics)
    refresh = metrics.watch(agent)

    async def stop() -> None:
        await agent.stop()
        await center.close()
        if isinstance(ledger, RedisLedger):
            await ledger.aclose()

    await serve(
        server,
        config.listen,
        name=f"agent-{config.settings.region}",
        services=agent_server.SERVICES,
        on_stop=stop,
        metrics=MetricsEndpoint(config.metrics_listen, metrics.registry, refresh) if config.metrics_listen else None,
    )
