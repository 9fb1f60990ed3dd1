"""An order is its placer's, over real mutual TLS: an in-process center and agent of eu (on the in-process
ledger and on Redis) with a development certificate set, and order services calling as
spiffe://quota/region/eu/orders (orders-eu), .../orders/checkout and .../orders/other. The identity
that placed an order retries, confirms, cancels and refunds it; any other gets PERMISSION_DENIED naming
itself, saying nothing of the order, and the region's ledger does not move."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
import redis.asyncio as redis
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_common.identity import Role, regional
from quota_testing.certs import Issued, issue, write_pair
from quota_testing.inprocess import ServedAgent, running_agent, running_center
from quota_testing.servers import RunningServer, redis_server
from quota_testing.support import order, promotion
from quota_testing.tls import DevTls, write_dev_tls
from region_agent.ledger.base import Ledger
from region_agent.ledger.memory import InProcessLedger
from region_agent.ledger.redis import RedisLedger
from region_agent.v1 import region_agent_pb2 as agent_pb
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc

TIMEOUT_S = 20
"""Only so that a broken link fails the test instead of hanging it."""
SHARED = "orders-eu"
CHECKOUT, OTHER = "orders-eu-checkout", "orders-eu-other"
"""Certificate files of order services of eu that name their service."""


@dataclass
class Region:
    dev: DevTls
    agent: ServedAgent

    def stub(self, name: str) -> tuple[grpc.aio.Channel, agent_grpc.RegionAgentAsyncStub]:
        channel = self.dev.transport(name).aio_channel(self.agent.address)
        return channel, agent_grpc.RegionAgentStub(channel)

    async def spent(self) -> tuple[int, int, int]:
        """What orders did to the region's ledger: (deducted, refunded, held). Refills may move the rest."""
        channel, stub = self.stub(SHARED)
        async with channel:
            status = await stub.GetStatus(agent_pb.GetStatusRequest(), timeout=TIMEOUT_S)
        found = next(balance for balance in status.balances if balance.promotion_id == "promo")
        return found.deducted, found.refunded, found.held


def _add_order_services(dev: DevTls, *services: str) -> None:
    """Certificates from the set's CA for order services of eu that name their service, as orders-eu-<service>."""
    ca_key = load_pem_private_key((dev.directory / "ca-key.pem").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = Issued(x509.load_pem_x509_certificate((dev.directory / "ca.pem").read_bytes()), ca_key)
    for service in services:
        identity = regional(dev.trust_domain, Role.ORDERS, "eu", service)
        write_pair(dev.directory, f"orders-eu-{service}", issue(ca, datetime.now(UTC), 1, uris=[identity.uri]))


@pytest.fixture(scope="module")
def redis_address() -> Iterator[RunningServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
async def region(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Region]:
    dev = write_dev_tls(tmp_path / "certs", ["eu", "us"])
    _add_order_services(dev, "checkout", "other")
    client: redis.Redis | None = None
    ledger: Ledger = InProcessLedger()
    if request.param == "redis":
        server: RunningServer = request.getfixturevalue("redis_address")
        client = redis.Redis(host=server.host, port=server.port)
        ledger = RedisLedger(client, region=f"eu-{uuid.uuid4().hex}")
    try:
        async with running_center(tmp_path, tls=dev) as center:
            async with dev.transport("owner-alice").aio_channel(center.address) as channel:
                created = center_pb.CreatePromotionRequest(promotion=promotion(regions=("eu",)))
                await center_grpc.PromotionAdminStub(channel).CreatePromotion(created, timeout=TIMEOUT_S)
            async with running_agent("eu", center.address, ledger=ledger, tls=dev) as agent:
                yield Region(dev, agent)
    finally:
        await ledger.aclose()
        if client is not None:
            await client.aclose()


async def _denied(call: Awaitable[object], caller: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    message = refused.value.details() or ""
    assert message.startswith(f"{caller} may not use order key 'o-1': that order was placed by another identity")
    assert "user-1" not in message
    assert "promo" not in message


def _uri(name: str) -> str:
    return {
        SHARED: "spiffe://quota/region/eu/orders",
        CHECKOUT: "spiffe://quota/region/eu/orders/checkout",
        OTHER: "spiffe://quota/region/eu/orders/other",
    }[name]


async def test_only_the_placer_may_retry_or_refund_a_deduction(region: Region) -> None:
    placer_channel, placer = region.stub(SHARED)
    async with placer_channel:
        first = await placer.Deduct(order("o-1", "eu", ("promo", 3)), timeout=TIMEOUT_S)
        before = await region.spent()
        assert before == (3, 0, 0)

        for intruder in (OTHER, CHECKOUT):
            channel, stub = region.stub(intruder)
            async with channel:
                await _denied(stub.Deduct(order("o-1", "eu", ("promo", 3)), timeout=TIMEOUT_S), _uri(intruder))
                await _denied(stub.Deduct(order("o-1", "eu", ("promo", 1)), timeout=TIMEOUT_S), _uri(intruder))
                refund = agent_pb.RefundRequest(order_key="o-1", refund_id="r-1")
                await _denied(stub.Refund(refund, timeout=TIMEOUT_S), _uri(intruder))
                await _denied(
                    stub.GetOrder(agent_pb.GetOrderRequest(order_key="o-1"), timeout=TIMEOUT_S), _uri(intruder)
                )
        assert await region.spent() == before

        again = await placer.Deduct(order("o-1", "eu", ("promo", 3)), timeout=TIMEOUT_S)
        assert again.replayed
        assert list(again.lines) == list(first.lines)
        refunded = await placer.Refund(agent_pb.RefundRequest(order_key="o-1", refund_id="r-1"), timeout=TIMEOUT_S)
        assert [line.amount for line in refunded.lines] == [3]

        channel, other = region.stub(OTHER)
        async with channel:
            refund = agent_pb.RefundRequest(order_key="o-1", refund_id="r-1")
            await _denied(other.Refund(refund, timeout=TIMEOUT_S), _uri(OTHER))  # not even its replay
    assert await region.spent() == (3, 3, 0)


@pytest.mark.parametrize("settle", ["Confirm", "Cancel"])
async def test_only_the_placer_may_confirm_cancel_or_retry_a_reservation(region: Region, settle: str) -> None:
    reserve = agent_pb.ReserveRequest(
        order_key="o-1", region="eu", lines=[agent_pb.Line(promotion_id="promo", amount=2, user_id="user-1")]
    )
    request = agent_pb.SettleRequest(order_key="o-1")
    placer_channel, placer = region.stub(CHECKOUT)
    async with placer_channel:
        reserved = await placer.Reserve(reserve, timeout=TIMEOUT_S)
        before = await region.spent()
        assert before == (0, 0, 2)

        for intruder in (OTHER, SHARED):
            channel, stub = region.stub(intruder)
            async with channel:
                await _denied(stub.Confirm(request, timeout=TIMEOUT_S), _uri(intruder))
                await _denied(stub.Cancel(request, timeout=TIMEOUT_S), _uri(intruder))
                await _denied(stub.Reserve(reserve, timeout=TIMEOUT_S), _uri(intruder))
        assert await region.spent() == before

        replay = await placer.Reserve(reserve, timeout=TIMEOUT_S)
        assert replay.replayed
        assert replay.expires_at_ms == reserved.expires_at_ms
        settled = await getattr(placer, settle)(request, timeout=TIMEOUT_S)
        assert not settled.replayed
        assert (await getattr(placer, settle)(request, timeout=TIMEOUT_S)).replayed

    assert await region.spent() == ((2, 0, 0) if settle == "Confirm" else (0, 0, 0))
