"""The agent's composition root: pick the ledger, connect to the center, serve orders."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace

import redis.asyncio as redis

from quota_common.clock import SystemClock
from quota_common.errors import ConfigError
from quota_common.identity import Role, regional
from quota_common.metrics_http import MetricsEndpoint
from quota_common.process import guarded_server, serve
from quota_common.transport import Security, open_transport
from region_agent import server as agent_server
from region_agent.agent import Agent, AgentSettings
from region_agent.cache import CacheTier
from region_agent.cache_redis import RedisCacheTier
from region_agent.grpc_center import GrpcCenter
from region_agent.ledger.base import RETENTION_S, Ledger
from region_agent.ledger.memory import InProcessLedger
from region_agent.ledger.redis import RedisLedger
from region_agent.metrics import AgentMetrics, CenterCallTimer


@dataclass(frozen=True)
class AgentConfig:
    settings: AgentSettings
    listen: str = "127.0.0.1:50061"
    """host:port to serve gRPC on; port 0 picks a free one (printed on stdout)."""
    center: tuple[str, ...] = ("127.0.0.1:50051",)
    """The center replicas' host:port; calls follow whichever leads."""
    ledger: str = "memory"
    """Where the regional ledger lives: memory (embedded default) or redis://HOST:PORT[/DB]."""
    retention_s: float = RETENTION_S
    """How long the ledger remembers orders and refunds (their retries replay meanwhile)."""
    metrics_listen: str = ""
    """host:port of the Prometheus endpoint (GET /metrics); empty: none."""
    security: Security = field(default_factory=Security)
    """How its gRPC port and its calls to the center are secured: mutual TLS with this region's agent
    certificate, or plaintext on loopback."""


REACH_TIMEOUT_S = 3.0
"""How long a Redis ledger has to answer a PING at start before the agent gives up (exit 2)."""


async def open_ledger(url: str, region: str, retention_s: float) -> tuple[Ledger, CacheTier | None]:
    """The ledger, answering, and the region's tier of the promotion cache that lives beside it;
    ConfigError when `url` names no ledger or its Redis does not answer."""
    if url == "memory":
        return InProcessLedger(retention_s=retention_s), None
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"--ledger {url!r} is no ledger; use memory or redis://HOST:PORT[/DB]")
    try:
        client = redis.Redis.from_url(url)
    except ValueError as error:
        raise ConfigError(f"--ledger {url!r}: {error}; use redis://HOST:PORT[/DB]") from None
    try:
        await asyncio.wait_for(client.ping(), REACH_TIMEOUT_S)
    except (redis.RedisError, OSError, TimeoutError) as error:
        await client.aclose()
        detail = str(error) or f"nothing within {REACH_TIMEOUT_S:.0f} s"
        raise ConfigError(f"Redis at {url} does not answer ({detail}); start it, or fix --ledger") from None
    return RedisLedger(client, region, retention_s), RedisCacheTier(client, region)


async def run_agent(config: AgentConfig) -> None:
    region, security = config.settings.region, config.security
    agent_identity = regional(security.trust_domain, Role.AGENT, region)
    transport = open_transport(security, agent_identity, listen=config.listen, center=config.center)
    ledger, tier = await open_ledger(config.ledger, region, config.retention_s)
    metrics = AgentMetrics(region)
    center = GrpcCenter(list(config.center), region, interceptors=[CenterCallTimer(metrics)], transport=transport)
    settings = replace(config.settings, return_on_shutdown=not ledger.outlives_agent)
    agent = Agent(settings, ledger, center, SystemClock(), tier)
    server = guarded_server(transport, region)
    agent_server.add_to_server(agent, server, metrics)
    refresh = metrics.watch(agent)

    async def start(port: int) -> None:
        # Only once the ports are this process's: starting joins the region as a new incarnation,
        # which writes off what the agent already serving on that port holds.
        await agent.start()

    async def replaced() -> str:
        reason = await agent.wait_retired()
        return f"{reason}; this process stops: run one agent per region on the in-process ledger, or use Redis"

    async def stop() -> None:
        await agent.stop()
        await center.close()
        await ledger.aclose()

    await serve(
        server,
        config.listen,
        transport=transport,
        name=f"agent-{region}",
        services=agent_server.SERVICES,
        on_start=start,
        on_stop=stop,
        metrics=MetricsEndpoint(config.metrics_listen, metrics.registry, refresh) if config.metrics_listen else None,
        retired=replaced,
    )
