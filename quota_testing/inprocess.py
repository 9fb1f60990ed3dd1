"""Test support, shipped as code: a center and agents served in this process on port 0.

async with running_center(tmp_path) as center:
    async with running_agent("eu", center.address) as agent:
        ...  # talk gRPC to center.address and agent.address

With `tls` (a development set, quota_testing.tls) the center serves with its certificate, an agent
with its region's (and calls the center with it), and every caller needs a certificate of the set.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from quota_center import server as center_server
from quota_center.center import Center
from quota_center.center_core import CenterSettings
from quota_center.issuer import KEY_DOCUMENT
from quota_center.store.sqlite import SqliteStore
from quota_common.clock import Clock, SystemClock
from quota_common.incarnation import issue_incarnation
from quota_common.process import bind, guarded_server
from quota_common.rpc_metrics import RpcMetrics
from quota_common.transport import Transport
from quota_testing.tls import DevTls
from region_agent import server as agent_server
from region_agent.agent import Agent, AgentSettings
from region_agent.grpc_center import GrpcCenter
from region_agent.ledger.base import Ledger
from region_agent.ledger.memory import InProcessLedger


@dataclass(frozen=True)
class Served:
    address: str


@dataclass(frozen=True)
class ServedCenter(Served):
    center: Center
    store: SqliteStore


@dataclass(frozen=True)
class ServedAgent(Served):
    agent: Agent
    ledger: Ledger


async def _start(server: grpc.aio.Server, transport: Transport) -> str:
    port = bind(server, "127.0.0.1:0", transport.server_credentials())
    await server.start()
    return f"127.0.0.1:{port}"


def _transport(tls: DevTls | None, name: str) -> Transport:
    return Transport() if tls is None else tls.transport(name)


TEST_INCARNATION_KEY = bytes(range(32))
"""The key in-process centers issue incarnations under, so that a test can call the Allocation API as an
agent would after joining (`issued_incarnation`) without a Join of its own."""


def issued_incarnation(started_ns: int, region: str = "eu") -> str:
    """An incarnation as an in-process center issues it to `region`, for a ledger life started at `started_ns`."""
    return issue_incarnation(started_ns, region, TEST_INCARNATION_KEY)


@asynccontextmanager
async def running_center(
    workdir: Path,
    settings: CenterSettings | None = None,
    clock: Clock | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    tls: DevTls | None = None,
    calls: RpcMetrics | None = None,
) -> AsyncIterator[ServedCenter]:
    """`interceptors` see every call the center receives (a test counting what reached it); `calls`
    counts them as the center process does, refused ones too."""
    store = SqliteStore(workdir / "center.db")
    if await store.load_document(KEY_DOCUMENT) is None:
        await store.save_document(KEY_DOCUMENT, {"key": TEST_INCARNATION_KEY.hex()})
    center = Center(store, clock or SystemClock(), settings)
    await center.start()
    transport = _transport(tls, "center")
    server = guarded_server(transport, interceptors=interceptors, calls=calls)
    center_server.add_to_server(center, server)
    try:
        yield ServedCenter(await _start(server, transport), center, store)
    finally:
        await server.stop(None)
        await store.close()


@asynccontextmanager
async def running_agent(
    region: str,
    center_address: str,
    settings: AgentSettings | None = None,
    ledger: Ledger | None = None,
    clock: Clock | None = None,
    tls: DevTls | None = None,
) -> AsyncIterator[ServedAgent]:
    ledger = ledger or InProcessLedger()
    transport = _transport(tls, f"agent-{region}")
    client = GrpcCenter([center_address], region, transport=transport)
    agent = Agent(settings or AgentSettings(region), ledger, client, clock or SystemClock())
    try:
        await agent.start()
    except BaseException:
        await client.close()
        raise
    server = guarded_server(transport, region)
    agent_server.add_to_server(agent, server)
    try:
        yield ServedAgent(await _start(server, transport), agent, ledger)
    finally:
        await server.stop(None)
        await agent.stop()
        await client.close()
