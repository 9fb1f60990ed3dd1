"""The center's composition root: pick the store, build the service, serve it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc

from quota_center import server as center_server
from quota_center.clock import SystemClock
from quota_center.errors import InvalidArgument
from quota_center.process import serve
from quota_center.service import Center, CenterSettings
from quota_center.store.base import Store
from quota_center.store.etcd import DEFAULT_PREFIX, EtcdStore
from quota_center.store.sqlite import SqliteStore


@dataclass(frozen=True)
class CenterConfig:
    listen: str = "127.0.0.1:50051"
    """host:port to serve gRPC on; port 0 picks a free one (printed on stdout)."""
    store: str = "sqlite:///quota-center.db"
    """Where state lives: sqlite:///PATH (embedded default) or etcd://HOST:PORT[,HOST:PORT...][/PREFIX]."""
    settings: CenterSettings = field(default_factory=CenterSettings)


async def open_store(url: str) -> Store:
    if url.startswith("sqlite:///"):
        return SqliteStore(Path(url.removeprefix("sqlite:///")))
    if url.startswith("etcd://"):
        hosts, _, path = url.removeprefix("etcd://").partition("/")
        endpoints = [endpoint for endpoint in hosts.split(",") if endpoint]
        if endpoints:
            return await EtcdStore.connect(endpoints, f"/{path}" if path else DEFAULT_PREFIX)
    raise InvalidArgument(f"unknown store {url!r}; use sqlite:///PATH or etcd://HOST:PORT[,HOST:PORT...][/PREFIX]")


async def run_center(config: CenterConfig) -> None:
    store = await open_store(config.store)
    center = Center(store, SystemClock(), config.settings)
    await center.start()
    server = grpc.aio.server()
    center_server.add_to_server(center, server)
    await serve(server, config.listen, on_stop=store.close, name="center")
