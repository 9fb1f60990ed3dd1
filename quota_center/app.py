"""The center's composition root: pick the store, build the service, serve it."""

from __future__ import annotations

import logging
import socket
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from grpc_health.v1.health_pb2 import HealthCheckResponse

from quota_center import server as center_server
from quota_center.center import Center, CenterSettings
from quota_center.leadership import EtcdLeadership, Leadership, SingleNode
from quota_center.metrics import center_registry
from quota_center.store.base import Store
from quota_center.store.etcd import DEFAULT_PREFIX, EtcdStore
from quota_center.store.sqlite import SqliteStore
from quota_common import identity
from quota_common.clock import Clock, SystemClock
from quota_common.errors import ConfigError
from quota_common.metrics_http import MetricsEndpoint
from quota_common.process import guarded_server, health_servicer, serve
from quota_common.transport import Security, open_transport

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
    security: Security = field(default_factory=Security)
    """How its gRPC port is secured: mutual TLS with the center's certificate, or plaintext on loopback."""


async def open_store(url: str, clock: Clock, election_ttl_s: int) -> tuple[Store, Leadership]:
    """The store `url` names, open and answering, with who may write to it: a SQLite file has one
    center, which leads; the centers on one etcd prefix elect a leader. ConfigError when the store
    cannot be opened (another center holds the SQLite file, etcd does not answer, the URL names no store)."""
    if url.startswith("sqlite:///"):
        file = Path(url.removeprefix("sqlite:///"))
        try:
            return SqliteStore(file), SingleNode()
        except sqlite3.Error as error:
            raise ConfigError(
                f"--store {url}: cannot open the SQLite file {file} ({error}); "
                "sqlite:///PATH is relative to the working directory, sqlite:////PATH absolute"
            ) from None
    if url.startswith("etcd://"):
        hosts, _, path = url.removeprefix("etcd://").partition("/")
        endpoints = [endpoint for endpoint in hosts.split(",") if endpoint]
        if endpoints:
            store = await EtcdStore.connect(endpoints, f"/{path}" if path else DEFAULT_PREFIX)
            return store, EtcdLeadership(store, clock, election_ttl_s)
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
    security = config.security
    transport = open_transport(security, identity.center(security.trust_domain), listen=config.listen)
    clock = SystemClock()
    store, leadership = await open_store(config.store, clock, config.election_ttl_s)
    host = config.listen.rpartition(":")[0]
    center = Center(store, clock, config.settings, leadership)
    server = guarded_server(transport)
    center_server.add_to_server(center, server)
    health_status = health_servicer()

    async def report_leading(now_leading: bool) -> None:
        """The whole server ("") is SERVING on every replica (it is alive and redirects callers);
        the center's own services are SERVING only on the leader, for balancers that want it."""
        status = HealthCheckResponse.SERVING if now_leading else HealthCheckResponse.NOT_SERVING
        for service in center_server.SERVICES:
            await health_status.set(service, status)

    async def elected() -> None:
        await center.start()
        await report_leading(True)

    async def deposed() -> None:
        center.stop_serving()
        await report_leading(False)

    async def start(port: int) -> None:
        await report_leading(False)
        await leadership.start(lambda: config.advertise or f"{_reachable_host(host)}:{port}", elected, deposed)

    async def stop() -> None:
        await leadership.close()
        await store.close()

    await serve(
        server,
        config.listen,
        transport=transport,
        name="center",
        services=center_server.SERVICES,
        on_stop=stop,
        on_start=start,
        health_status=health_status,
        metrics=MetricsEndpoint(config.metrics_listen, center_registry(center)) if config.metrics_listen else None,
    )
