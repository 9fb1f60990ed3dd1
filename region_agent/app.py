"""The agent's composition root: pick the ledger, connect to the center, serve orders."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import MovedError, NoPermissionError, RedisClusterException

from quota_common import gc_policy
from quota_common.clock import SystemClock
from quota_common.errors import ConfigError
from quota_common.identity import Role, regional
from quota_common.metrics_http import MetricsEndpoint
from quota_common.process import STANDARD_SERVICES, guarded_server, serve
from quota_common.rpc_metrics import RpcMetrics
from quota_common.shards import center_groups
from quota_common.tls import TlsFiles
from quota_common.top_series import DEFAULT_TOP
from quota_common.transport import Security, Transport, open_transport
from region_agent import server as agent_server
from region_agent.agent import Agent, AgentSettings
from region_agent.cache import CacheTier
from region_agent.cache_redis import RedisCacheTier
from region_agent.center_groups import CenterGroups
from region_agent.grpc_center import GrpcCenter
from region_agent.ledger.base import RETENTION_S, Ledger
from region_agent.ledger.memory import InProcessLedger
from region_agent.ledger.redis import RedisLedger
from region_agent.ledger.redis_acl import incarnation_key, key_pattern
from region_agent.ledger.script_link import LuaScript, ScriptLink
from region_agent.metrics import AgentMetrics, CenterCallTimer


@dataclass(frozen=True)
class LedgerAccess:
    """How the agent reaches a secured Redis ledger; each setting left out is not used (the TLS files
    default to the agent's own, for rediss://)."""

    ca: Path | None = None
    """--ledger-ca: the CA Redis's certificate is verified against (rediss://)."""
    cert: Path | None = None
    """--ledger-cert: the certificate the agent presents to Redis (rediss://)."""
    key: Path | None = None
    """--ledger-key: its private key."""
    password: str = field(default="", repr=False)
    """The password of the ACL user --ledger names, or of Redis's default user (read from
    --ledger-password-file); empty: none."""


@dataclass(frozen=True)
class AgentConfig:
    settings: AgentSettings
    listen: str = "127.0.0.1:50061"
    """host:port to serve gRPC on; port 0 picks a free one (printed on stdout)."""
    center: tuple[str, ...] = ("127.0.0.1:50051",)
    """The center replicas' host:port; calls follow whichever leads. With several center groups, each group's
    replicas after its name: default=h1:50051,h2:50051,g1=h3:50051 (addresses before any NAME= are the
    default group's); the agent keeps a link, a catalog stream and a renewal per group."""
    ledger: str = "memory"
    """Where the regional ledger lives: memory (embedded default), redis://[USER@]HOST:PORT[/DB],
    rediss://[USER@]HOST:PORT[/DB] for Redis over TLS, or redis+cluster://[USER@]HOST:PORT (rediss+cluster://
    over TLS) for any node of a Redis Cluster."""
    retention_s: float = RETENTION_S
    """How long the ledger remembers orders and refunds (their retries replay meanwhile)."""
    metrics_listen: str = ""
    """host:port of the Prometheus endpoint (GET /metrics); empty: none."""
    security: Security = field(default_factory=Security)
    """How its gRPC port and its calls to the center are secured: mutual TLS with this region's agent
    certificate, or plaintext on loopback."""
    ledger_access: LedgerAccess = field(default_factory=LedgerAccess)
    """How it reaches a secured Redis ledger: TLS files, a password."""
    metrics_promotions: int = DEFAULT_TOP
    """Promotions with ledger series of their own on /metrics: the top N by spend; the others are summed
    into series with an empty promotion label."""


REACH_TIMEOUT_S = 3.0
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
"""--ledger names one node of a Redis Cluster (the client finds the others): the region's keys live in
the slot of its hash tag, on whichever master serves it."""
"""How long a Redis ledger has to answer a PING at start before the agent gives up (exit 2)."""


async def open_ledger(
    url: str,
    region: str,
    retention_s: float,
    access: LedgerAccess | None = None,
    agent_tls: TlsFiles | None = None,
) -> tuple[Ledger, CacheTier | None]:
    """The ledger, answering, and the region's tier of the promotion cache that lives beside it.
    rediss:// verifies Redis with `access.ca` and presents `access.cert`, each defaulting to the
    agent's own TLS files `agent_tls`. ConfigError saying what to change when `url` names no ledger,
    or its Redis does not answer, refuses the certificate or the user, or does not let the user
    at the region's keys."""
    access = access or LedgerAccess()
    shown = _redacted(url)
    if url == "memory":
        _refuse_unused(access, url)
        return InProcessLedger(retention_s=retention_s), None
    if not url.startswith(("redis://", "rediss://", "unix://", *CLUSTER_SCHEMES)):
        raise ConfigError(
            f"--ledger {shown!r} is no ledger; use memory, redis://[USER@]HOST:PORT[/DB], rediss://... (TLS), "
            "or redis+cluster://HOST:PORT (rediss+cluster://: TLS) for one node of a Redis Cluster"
        )
    cluster = url.startswith(CLUSTER_SCHEMES)
    # redis-py reads a cluster node's address from the URL of its own schemes.
    url_for_redis_py = url.replace("+cluster://", "://", 1) if cluster else url
    _refuse_unused(access, url_for_redis_py)
    options, ca = _client_options(url_for_redis_py, access, agent_tls)
    client: redis.Redis | RedisCluster
    try:
        client = (RedisCluster if cluster else redis.Redis).from_url(url_for_redis_py, **options)
    except (ValueError, RedisClusterException) as error:
        use = "redis+cluster://HOST:PORT" if cluster else "redis://HOST:PORT[/DB]"
        raise ConfigError(_without(f"--ledger {shown!r}: {error}; use {use}", url, access)) from None
    user = urlsplit(url).username or ""
    try:
        await asyncio.wait_for(_check(client, region), REACH_TIMEOUT_S)
    except (redis.RedisError, RedisClusterException, OSError, TimeoutError) as error:
        await client.aclose()
        raise ConfigError(_without(_refusal(error, shown, unquote(user), region, access, ca), url, access)) from None
    # The ledger closes the client last, when the agent, and the cache tier with it, has stopped.
    return RedisLedger(client, region, retention_s, owns_client=True), RedisCacheTier(client, region)


_CLOSED = ("reset by peer", "Connection closed", "closed by server", "Broken pipe", "EOF")
"""How redis-py words a connection the server ended: at the first bytes of a client it does not take."""
_PROBE = LuaScript("return redis.call('EXISTS', KEYS[1])")
"""A script that reads one of the region's keys: NOPERM for a user who may not run scripts on them."""


async def _check(client: redis.Redis | RedisCluster, region: str) -> None:
    """Redis answers, and lets this user read the region's keys and run scripts on them, as the ledger will: the
    script over the ledger's own connection, whose AUTH and SELECT are its own (redis-py's client takes a
    password Redis has not set; the ledger's connection is refused, and every order with it)."""
    await client.ping()
    key = incarnation_key(region)
    await client.hget(key, "life")
    link = ScriptLink(client)
    try:
        await link.run(_PROBE, [key], [])
    finally:
        await link.aclose()


def _refuse_unused(access: LedgerAccess, url: str) -> None:
    """Settings that would do nothing with this ledger are a mistake in them or in --ledger."""
    tls = {"--ledger-ca": access.ca, "--ledger-cert": access.cert, "--ledger-key": access.key}
    given = [option for option, value in tls.items() if value]
    if url == "memory":
        given += ["--ledger-password-file"] if access.password else []
        if given:
            raise ConfigError(f"{', '.join(given)} apply to a Redis ledger, and --ledger is memory: drop them")
    elif given and not url.startswith("rediss://"):
        raise ConfigError(
            f"{', '.join(given)} secure Redis over TLS, and --ledger {_redacted(url)} is plaintext: use rediss://, "
            "or drop them"
        )
    if access.password and urlsplit(url).password:
        raise ConfigError("--ledger has a password and --ledger-password-file gives one too: keep only the file")


def _client_options(url: str, access: LedgerAccess, agent_tls: TlsFiles | None) -> tuple[dict[str, Any], str]:
    """redis-py's settings beyond the URL (which the ledger's own script connection takes up too), and
    the CA option in force ("" without TLS). ConfigError naming a TLS file that cannot be used."""
    options: dict[str, Any] = {"password": access.password} if access.password else {}
    if not url.startswith("rediss://"):
        return options, ""
    ca, ca_option = (access.ca, "--ledger-ca") if access.ca else (agent_tls.ca if agent_tls else None, "--tls-ca")
    if ca is None:
        raise ConfigError(
            f"--ledger {_redacted(url)} is TLS and nothing says which CA signed Redis's certificate: "
            "give --ledger-ca (or --tls-ca)"
        )
    pair: tuple[Path, Path] | None = (agent_tls.cert, agent_tls.key) if agent_tls else None
    pair_options = "--tls-cert and --tls-key"
    if access.cert or access.key:
        if access.cert is None or access.key is None:
            missing = "--ledger-key" if access.key is None else "--ledger-cert"
            raise ConfigError(f"--ledger-cert and --ledger-key go together; {missing} is missing")
        pair, pair_options = (access.cert, access.key), "--ledger-cert and --ledger-key"
    context = ssl.create_default_context()
    try:
        context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"{ca_option} {ca}: not a CA certificate in PEM ({error})") from None
    if pair is not None:
        cert, key = pair
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(
                f"{pair_options} ({cert}, {key}): not a certificate and its key in PEM ({error})"
            ) from None
        options.update(ssl_certfile=str(cert), ssl_keyfile=str(key))
    # Explicit: redis-py 5 did not check the name by default, and any certificate of the deployment's CA
    # (every workload's and person's) would then pass for the region's Redis.
    return {**options, "ssl_ca_certs": str(ca), "ssl_check_hostname": True}, ca_option


def _refusal(error: BaseException, shown: str, user: str, region: str, access: LedgerAccess, ca_option: str) -> str:
    """What to change when Redis did not take the agent, as far as its answer tells."""
    detail = str(error) or f"nothing within {REACH_TIMEOUT_S:.0f} s"
    named = user or "default"
    if isinstance(error, redis.AuthenticationError):
        if not access.password and not user:
            return (
                f"Redis at {shown} wants a user ({detail}); name the ACL user in --ledger "
                "(rediss://USER@HOST:PORT/DB) and give its password in --ledger-password-file"
            )
        return f"Redis refused user {named}: {detail}; fix --ledger-password-file, or the user in --ledger"
    if isinstance(error, NoPermissionError):
        return (
            f"Redis at {shown} does not let user {named} use the region's keys as the ledger does ({detail}); "
            f"its ACL must allow {key_pattern(region)} and the ledger's commands, or --ledger names the wrong user"
        )
    if isinstance(error, MovedError):
        return f"Redis at {shown} is a node of a Redis Cluster ({detail}); use redis+cluster://HOST:PORT"
    if isinstance(error, RedisClusterException):
        return f"the Redis Cluster at {shown} did not take the agent ({detail}); start it, or fix --ledger"
    tls = bool(ca_option)
    if tls and "CERTIFICATE_VERIFY_FAILED" in detail:
        return (
            f"Redis at {shown} presented a certificate that the CA in {ca_option} did not sign ({detail}); give "
            "--ledger-ca the CA that did (without it, the agent's --tls-ca is used), and Redis a certificate "
            "naming the host in --ledger"
        )
    if tls and "WRONG_VERSION_NUMBER" in detail:
        return f"Redis at {shown} does not speak TLS ({detail}); use redis://, or give Redis its certificate"
    refused_certificate = tls and any(
        sign in detail for sign in ("CERTIFICATE_REQUIRED", "UNKNOWN_CA", "BAD_CERTIFICATE")
    )
    if refused_certificate or any(sign in detail for sign in _CLOSED):
        if tls:
            return (
                f"Redis at {shown} closed the TLS connection ({detail}); it wants a client certificate its "
                "--tls-ca-cert-file signed: give --ledger-cert and --ledger-key (default: --tls-cert and --tls-key)"
            )
        return f"Redis at {shown} closed the connection ({detail}); if it serves TLS only, use rediss://"
    return f"Redis at {shown} does not answer ({detail}); start it, or fix --ledger"


def _redacted(url: str) -> str:
    """`url` with any password in it replaced by ***, as it may be shown."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    return parts._replace(netloc=f"{user}***@{parts.netloc.rpartition('@')[2]}").geturl()


def _without(message: str, url: str, access: LedgerAccess) -> str:
    """`message` with no password in it, whatever a library put in its words."""
    for password in (access.password, urlsplit(url).password):
        if password:
            message = message.replace(password, "***")
    return message


@dataclass(frozen=True)
class WiredAgent:
    """An agent with its ledger and its link to the center, as `wire_agent` made them; not started."""

    agent: Agent
    transport: Transport
    metrics: AgentMetrics
    _center: CenterGroups
    _ledger: Ledger

    async def close(self) -> None:
        """Stops the agent (its final report, and for a ledger that dies with it, the give-back), then its links."""
        await self.agent.stop()
        await self._center.close()
        await self._ledger.aclose()


async def wire_agent(config: AgentConfig, listen: str) -> WiredAgent:
    """The agent of `config.settings.region` as an agent process runs it: its identity's links, its ledger
    and the region's cache tier, its calls to the center timed. `listen`: where its gRPC port will be (empty:
    none, as embedded in an order service). ConfigError saying what to change when a setting is wrong."""
    region, security = config.settings.region, config.security
    agent_identity = regional(security.trust_domain, Role.AGENT, region)
    try:
        groups = center_groups(list(config.center))
    except ValueError as error:
        raise ConfigError(f"--center: {error}") from None
    addresses = [address for replicas in groups.values() for address in replicas]
    transport = open_transport(security, agent_identity, listen=listen, center=addresses)
    ledger, tier = await open_ledger(config.ledger, region, config.retention_s, config.ledger_access, security.tls)
    metrics = AgentMetrics(region)
    timer = CenterCallTimer(metrics)
    center = CenterGroups(
        {
            group: GrpcCenter(replicas, region, interceptors=[timer], transport=transport)
            for group, replicas in groups.items()
        }
    )
    settings = replace(config.settings, return_on_shutdown=not ledger.outlives_agent)
    agent = Agent(settings, ledger, center, SystemClock(), tier)
    return WiredAgent(agent, transport, metrics, center, ledger)


async def run_agent(config: AgentConfig) -> None:
    region = config.settings.region
    wired = await wire_agent(config, config.listen)
    agent, metrics, transport = wired.agent, wired.metrics, wired.transport
    # Here, not in wire_agent: an embedded agent's host keeps its own policy.
    gc_policy.serving(metrics.registry, gc_policy.AGENT_THRESHOLDS)
    calls = (
        RpcMetrics(metrics.registry, [*agent_server.SERVICES, *STANDARD_SERVICES]) if config.metrics_listen else None
    )
    server = guarded_server(transport, region, calls=calls)
    agent_server.add_to_server(agent, server, metrics)
    refresh = metrics.watch(agent, config.metrics_promotions)

    async def start(port: int) -> None:
        # Only once the ports are this process's: starting joins the region as a new incarnation,
        # which writes off what the agent already serving on that port holds.
        await agent.start()
        gc_policy.started()  # joined (or gave up waiting for the center): what lives as long as the process

    async def replaced() -> str:
        reason = await agent.wait_retired()
        return f"{reason}; this process stops: run one agent per region on the in-process ledger, or use Redis"

    await serve(
        server,
        config.listen,
        transport=transport,
        name=f"agent-{region}",
        services=agent_server.SERVICES,
        on_start=start,
        on_stop=wired.close,
        metrics=MetricsEndpoint(config.metrics_listen, metrics.registry, refresh) if config.metrics_listen else None,
        retired=replaced,
    )
