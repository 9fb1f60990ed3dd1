"""The center's composition root: pick the store, build the service, serve it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from grpc_health.v1.health_pb2 import HealthCheckResponse

from quota_center import server as center_server
from quota_center.center import Center, CenterSettings
from quota_center.leadership import EtcdLeadership
from quota_center.metrics import center_registry
from quota_center.store.base import Store
from quota_center.store.etcd import DEFAULT_PREFIX, EtcdStore
from quota_center.store.sqlite import SqliteStore
from quota_common.clock import SystemClock
from quota_common.errors import ConfigError
from quota_common.metrics_http import MetricsEndpoint
from quota_common.process import exclusive_server, health_servicer, serve

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CenterConfig:
    listen: str = "127.0.0.1:50051"
    """host:port to serve gRPC on; port 0 picks a free one (printed on stdout)."""
    store: str = "sqlite:///quota-center.db"
    """Where state lives: sqlite:///PATH (embedded default) or etcd://HOST:PORT[,HOST:PORT...][/PREFIX]."""
    settings: CenterSettings = field(default_factory=CenterSettings)
    advertise: str = ""
    """host:port agents and clients reach this replica at; default: the listen host and port."""
    election_ttl_s: int = 5
    """etcd lease TTL of the leader: a dead leader is replaced within about this long."""
    metrics_listen: str = ""
    """host:port of the Prometheus endpoint (GET /metrics); empty: none."""


async def open_store(url: str) -> Store:
    """The store `url` names, open and answering; ConfigError when it cannot be (another center
    holds the SQLite file, etcd does not answer, the URL names no store)."""
    if url.startswith("sqlite:///"):
        file = Path(url.removeprefix("sqlite:///"))
        try:
            return SqliteStore(file)
        except sqlite3.Error as error:
            raise ConfigError(
                f"--store {url}: cannot open the SQLite file {file} ({error}); "
                "sqlite:///PATH is relative to the working directory, sqlite:////PATH absolute"
            ) from None
    if url.startswith("etcd://"):
        hosts, _, path = url.removeprefix("etcd://").partition("/")
        endpoints = [endpoint for endpoint in hosts.split(",") if endpoint]
        if endpoints:
            return await EtcdStore.connect(endpoints, f"/{path}" if path else DEFAULT_PREFIX)
    raise ConfigError(f"--store {url!r} is no store; use sqlite:///PATH or etcd://HOST:PORT[,HOST:PORT...][/PREFIX]")


def _reachable_host(listen_host: str) -> str:
    """The host others reach this replica at, when --advertise does not say: a wildcard listen
    address means nothing to a client on another machine, the machine's name may."""
    if listen_host not in ("", "0.0.0.0", "::", "[::]"):
        return listen_host
    name = socket.gethostname()
    log.warning("listening on all interfaces without --advertise: advertising %s to clients; set --advertise", name)
    return name


async def run_center(config: CenterConfig) -> None:
    """Serves at once; answers as the leader only after winning the election (at once on
    SQLite) and rebuilding its state from the store. A standby answers UNAVAILABLE with the
    leader's address in the trailing metadata."""
    store = await open_store(config.store)
    host = config.listen.rpartition(":")[0]
    leadership: EtcdLeadership | None = None
    campaign: asyncio.Task[None] | None = None

    def leader_address() -> str | None:
        return leadership.leader_address() if leadership is not None else None

    def leading() -> bool:
        return leadership is None or leadership.leading()

    center = Center(store, SystemClock(), config.settings, leader_hint=leader_address, leading=leading)
    server = exclusive_server()
    center_server.add_to_server(center, server)
    health_status = health_servicer()

    async def report_leading(now_leading: bool) -> None:
        """The whole server ("") is SERVING on every replica (it is alive and redirects callers);
        the center's own services are SERVING only on the leader, for balancers that want it."""
        status = HealthCheckResponse.SERVING if now_leading else HealthCheckResponse.NOT_SERVING
        for service in center_server.SERVICES:
            await health_status.set(service, status)

    async def elected(token: int) -> None:
        if isinstance(store, EtcdStore) and leadership is not None:
            store.fence(leadership.key, token)
        await center.start()
        await report_leading(True)

    async def deposed() -> None:
        center.stop_serving()
        await report_leading(False)

    async def start(port: int) -> None:
        nonlocal leadership, campaign
        await report_leading(False)
        if not isinstance(store, EtcdStore):
            await center.start()
            await report_leading(True)
            return
        address = config.advertise or f"{_reachable_host(host)}:{port}"
        leadership = EtcdLeadership(store.client, store.prefix, address, config.election_ttl_s)
        campaign = asyncio.create_task(leadership.run(elected, deposed))

    async def stop() -> None:
        if campaign is not None:
            campaign.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await campaign
        if leadership is not None:
            await leadership.resign()
        await store.close()

    await serve(
        server,
        config.listen,
        name="center",
        services=center_server.SERVICES,
        on_stop=stop,
        on_start=start,
        health_status=health_status,
        metrics=MetricsEndpoint(config.metrics_listen, center_registry(center)) if config.metrics_listen else None,
    )
