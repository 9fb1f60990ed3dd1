"""Mutual TLS against real grpc.aio servers on loopback, with the credentials quota_common.tls builds:
a client certificate from the CA is required, the server learns who is calling from it, and files
replaced on disk are used for the next connection without a restart."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_common.identity import IdentityError, peer_identity
from quota_common.tls import TlsFiles, TlsWatch
from quota_testing.certs import LOOPBACK, DevPlan, Issued, dev_identities, issue, new_ca, write_dev_set, write_pair
from quota_testing.inprocess import running_agent, running_center
from quota_testing.support import order, promotion
from quota_testing.tls import write_dev_tls
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc

TRUST_DOMAIN = "quota"
HANG_GUARD_S = 20
"""Only so that a broken handshake fails the test instead of hanging it; no call comes near it."""
WHOAMI = "/test.Whoami/Get"
ALICE = "spiffe://quota/owner/alice"


async def _whoami(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    """Answers with the caller's identity, or UNAUTHENTICATED saying why it has none."""
    try:
        return str(peer_identity(context.auth_context(), TRUST_DOMAIN)).encode()
    except IdentityError as error:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, error.message)


@dataclass
class Pki:
    directory: Path
    ca: Issued
    now: datetime

    def files(self, name: str, uris: list[str], *, server: bool = False, common_name: str = "") -> TlsFiles:
        """Writes <name>.pem and <name>-key.pem issued by our CA, and <name>-ca.pem, our CA."""
        hosts = LOOPBACK if server else ()
        issued = issue(self.ca, self.now, 1, uris=uris, hosts=hosts, server=server, common_name=common_name)
        cert, key = write_pair(self.directory, name, issued)
        trusted = self.directory / f"{name}-ca.pem"
        trusted.write_bytes(self.ca.cert_pem)
        return TlsFiles(cert, key, trusted)


@dataclass
class Served:
    port: int
    files: TlsFiles


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    now = datetime.now(UTC)
    return Pki(tmp_path, new_ca(now, 2), now)


@pytest.fixture
async def server(pki: Pki) -> AsyncIterator[Served]:
    files = pki.files("center", ["spiffe://quota/center"], server=True)
    async with _serving(files) as port:
        yield Served(port, files)


async def _ask(port: int, credentials: grpc.ChannelCredentials | None, host: str = "localhost") -> str:
    """The server's answer to whoami on a new channel (plaintext when `credentials` is None)."""
    target = f"{host}:{port}"
    channel = grpc.aio.insecure_channel(target) if credentials is None else grpc.aio.secure_channel(target, credentials)
    async with channel:
        whoami = channel.unary_unary(WHOAMI, request_serializer=bytes, response_deserializer=bytes)
        answer = await whoami(b"", timeout=HANG_GUARD_S)
        return answer.decode()


async def _refused(port: int, credentials: grpc.ChannelCredentials | None) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _ask(port, credentials)
    return refused.value


def _raw(issued: Issued, trusted: Issued) -> grpc.ChannelCredentials:
    """Credentials built by hand, for certificates TlsWatch itself would refuse to load."""
    return grpc.ssl_channel_credentials(trusted.cert_pem, issued.key_pem, issued.cert_pem)


@pytest.mark.parametrize("uri", ["spiffe://quota/region/eu/agent", "spiffe://quota/region/eu/orders", ALICE])
async def test_with_mutual_tls_the_server_sees_who_calls(pki: Pki, server: Served, uri: str) -> None:
    client = TlsWatch(pki.files("client", [uri]))

    assert await _ask(server.port, client.channel_credentials()) == uri
    assert await _ask(server.port, client.channel_credentials(), host="127.0.0.1") == uri
    async with grpc.aio.secure_channel(f"localhost:{server.port}", client.channel_credentials()) as channel:
        probe = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=HANG_GUARD_S)
    assert probe.status == health_pb2.HealthCheckResponse.SERVING


async def test_plaintext_is_refused(server: Served) -> None:
    assert (await _refused(server.port, None)).code() == grpc.StatusCode.UNAVAILABLE


async def test_tls_without_a_client_certificate_is_refused(pki: Pki, server: Served) -> None:
    only_server_checked = grpc.ssl_channel_credentials(pki.ca.cert_pem)

    assert (await _refused(server.port, only_server_checked)).code() == grpc.StatusCode.UNAVAILABLE


async def test_an_expired_client_certificate_is_refused_at_the_handshake(pki: Pki, server: Served) -> None:
    last_week = pki.now - timedelta(days=7)
    expired = issue(pki.ca, last_week, 1, uris=[ALICE], not_before=last_week)
    current = issue(pki.ca, pki.now, 1, uris=[ALICE])

    assert (await _refused(server.port, _raw(expired, pki.ca))).code() == grpc.StatusCode.UNAVAILABLE
    assert await _ask(server.port, _raw(current, pki.ca)) == ALICE  # the same, but current


async def test_a_client_certificate_from_another_ca_is_refused_at_the_handshake(pki: Pki, server: Served) -> None:
    """Even one naming a real identity, and trusting the server's CA."""
    stranger = issue(new_ca(pki.now, 1, "another CA"), pki.now, 1, uris=[ALICE])
    ours = issue(pki.ca, pki.now, 1, uris=[ALICE])

    assert (await _refused(server.port, _raw(stranger, pki.ca))).code() == grpc.StatusCode.UNAVAILABLE
    assert await _ask(server.port, _raw(ours, pki.ca)) == ALICE  # the same, from our CA


async def test_a_server_from_another_ca_is_refused_by_the_client(pki: Pki, server: Served) -> None:
    other = new_ca(pki.now, 1, "another CA")
    client = issue(pki.ca, pki.now, 1, uris=[ALICE])

    assert (await _refused(server.port, _raw(client, other))).code() == grpc.StatusCode.UNAVAILABLE


async def test_a_certificate_without_a_san_uri_connects_but_has_no_identity(pki: Pki, server: Served) -> None:
    nameless = TlsWatch(pki.files("nameless", [], common_name="spiffe://quota/operator/carol"))

    refused = await _refused(server.port, nameless.channel_credentials())

    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "the certificate has no URI SAN, so it names no identity" in str(refused.details())


async def test_a_certificate_of_another_trust_domain_has_no_identity(pki: Pki, server: Served) -> None:
    foreign = TlsWatch(pki.files("foreign", ["spiffe://elsewhere/owner/alice"]))

    refused = await _refused(server.port, foreign.channel_credentials())

    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "belongs to trust domain 'elsewhere', not 'quota'" in str(refused.details())


async def test_server_files_replaced_on_disk_serve_the_next_connection(pki: Pki, server: Served) -> None:
    """A new CA, and the server's certificate from it, written over the server's files while it runs."""
    alice = TlsWatch(pki.files("alice", [ALICE]))
    assert await _ask(server.port, alice.channel_credentials()) == ALICE

    rotated = new_ca(pki.now, 2, "rotated CA")
    write_pair(
        pki.directory, "center", issue(rotated, pki.now, 1, uris=["spiffe://quota/center"], hosts=LOOPBACK, server=True)
    )
    server.files.ca.write_bytes(rotated.cert_pem)

    bob = issue(rotated, pki.now, 1, uris=["spiffe://quota/owner/bob"])
    assert await _ask(server.port, _raw(bob, rotated)) == "spiffe://quota/owner/bob"
    assert (await _refused(server.port, alice.channel_credentials())).code() == grpc.StatusCode.UNAVAILABLE


async def test_server_files_that_do_not_check_out_leave_the_old_ones_serving(pki: Pki, server: Served) -> None:
    alice = TlsWatch(pki.files("alice", [ALICE]))
    server.files.key.write_bytes(issue(pki.ca, pki.now, 1).key_pem)  # a key that is not the certificate's

    assert await _ask(server.port, alice.channel_credentials()) == ALICE


async def test_client_files_replaced_on_disk_serve_the_next_channel(pki: Pki, server: Served) -> None:
    files = pki.files("client", [ALICE])
    client = TlsWatch(files)
    assert await _ask(server.port, client.channel_credentials()) == ALICE

    write_pair(pki.directory, "client", issue(pki.ca, pki.now, 1, uris=["spiffe://quota/operator/carol"]))

    assert await _ask(server.port, client.channel_credentials()) == "spiffe://quota/operator/carol"


@contextlib.asynccontextmanager
async def _serving(files: TlsFiles) -> AsyncIterator[int]:
    """A server on loopback with `files` (whoami and the standard health service); its port."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {"Get": grpc.unary_unary_rpc_method_handler(_whoami)}
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Whoami", handlers)])
    port = server.add_secure_port("127.0.0.1:0", TlsWatch(files).server_credentials())
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


async def test_the_development_set_links_every_role(tmp_path: Path) -> None:
    """What `quota certs dev` writes: the center and the agents serve; every identity calls; a caller's
    certificate cannot serve (its extended key usage is client authentication only)."""
    plan = DevPlan(dev_identities(TRUST_DOMAIN, ["eu"], ["alice"], ["bob"], ["carol"]))
    write_dev_set(tmp_path, plan, datetime.now(UTC))

    def files(name: str) -> TlsFiles:
        return TlsFiles(tmp_path / f"{name}.pem", tmp_path / f"{name}-key.pem", tmp_path / "ca.pem")

    for serving, calling in [
        ("center", "agent-eu"),
        ("center", "owner-alice"),
        ("center", "approver-bob"),
        ("center", "operator-carol"),
        ("agent-eu", "orders-eu"),
        ("agent-eu", "center"),
    ]:
        async with _serving(files(serving)) as port:
            caller = TlsWatch(files(calling))
            assert await _ask(port, caller.channel_credentials()) == plan.identities[calling].uri
    async with _serving(files("owner-alice")) as port:
        refused = await _refused(port, TlsWatch(files("agent-eu")).channel_credentials())
        assert refused.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_in_process_center_and_agent_serve_orders_over_mutual_tls(tmp_path: Path) -> None:
    """quota_testing.inprocess with a development set: the agent reaches the center with its certificate,
    and an order service with its own reaches the agent; plaintext reaches neither."""
    dev = write_dev_tls(tmp_path / "certs", ["eu"])
    async with running_center(tmp_path, tls=dev) as center, running_agent("eu", center.address, tls=dev) as agent:
        async with dev.transport("owner-alice").aio_channel(center.address) as channel:
            request = center_pb.CreatePromotionRequest(promotion=promotion(regions=("eu",)))
            await center_grpc.PromotionAdminStub(channel).CreatePromotion(request, timeout=HANG_GUARD_S)
        async with dev.transport("orders-eu").aio_channel(agent.address) as channel:
            answer = await agent_grpc.RegionAgentStub(channel).Deduct(order("o-1", "eu", ("promo", 2)), timeout=20)

        assert [line.amount for line in answer.lines] == [2]
        for address in (center.address, agent.address):
            async with grpc.aio.insecure_channel(address) as plaintext:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await health_pb2_grpc.HealthStub(plaintext).Check(health_pb2.HealthCheckRequest(), timeout=20)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
