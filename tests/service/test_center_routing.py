"""Which replica the agent's calls go to: a standby names the leader, and the agent goes there only by a way
the operator gave it (one of the listed addresses), or when it was given a single address (a Service) and has
no other way."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from quota_center.v1 import quota_center_pb2 as pb
from quota_center.v1 import quota_center_pb2_grpc as pb_grpc
from quota_common.errors import LEADER_METADATA_KEY
from quota_common.rpc import Context
from region_agent.grpc_center import GrpcCenter


class Catalog(pb_grpc.CatalogServicer):
    def __init__(self, leader: str) -> None:
        self.leader = leader
        """Empty: this replica leads; else the address it names as leader."""
        self.calls = 0

    async def ListChanges(self, request: pb.CatalogRequest, context: Context) -> pb.CatalogChanges:
        self.calls += 1
        if self.leader:
            context.set_trailing_metadata(((LEADER_METADATA_KEY, self.leader),))
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"standby; the leader is {self.leader}")
        return pb.CatalogChanges()

    async def Watch(self, request: pb.CatalogRequest, context: Context) -> AsyncIterator[pb.CatalogChanges]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "these tests only list changes")
        yield pb.CatalogChanges()


@pytest.fixture
async def servers() -> AsyncIterator[tuple[list[str], list[Catalog]]]:
    """Two replicas on loopback; the test says who leads by setting `leader` on each."""
    addresses, catalogs, started = [], [], []
    for _ in range(2):
        server = grpc.aio.server()
        catalog = Catalog("")
        pb_grpc.add_CatalogServicer_to_server(catalog, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        addresses.append(f"127.0.0.1:{port}")
        catalogs.append(catalog)
        started.append(server)
    yield addresses, catalogs
    for server in started:
        await server.stop(None)


UNREACHABLE = "127.0.0.1:9"
"""What a replica advertises when the region cannot reach it directly (only through its listed gateway)."""


async def test_a_leader_named_outside_the_listed_addresses_is_reached_through_the_list(
    servers: tuple[list[str], list[Catalog]],
) -> None:
    addresses, (standby, leader) = servers
    standby.leader = UNREACHABLE
    client = GrpcCenter(addresses, "eu", call_timeout_s=1.0)

    await client.list_changes(0)

    assert (standby.calls, leader.calls) == (1, 1)


async def test_a_single_address_follows_the_leader_it_is_told_of(
    servers: tuple[list[str], list[Catalog]],
) -> None:
    (service, leader_address), (standby, leader) = servers
    standby.leader = leader_address
    client = GrpcCenter([service], "eu", call_timeout_s=1.0)

    await client.list_changes(0)

    assert (standby.calls, leader.calls) == (1, 1)
