"""Mutual TLS on every link, as an operator runs it: the center, an agent and `quota budget` as real processes
holding certificates from a development CA (quota_testing.tls); plaintext refused by a TLS server and, without
TLS, kept to loopback; a process whose certificate does not fit its role refused at start; certificates
replaced on disk used by the next connection, with no restart."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_common.identity import PEER_PEM_CERT
from quota_common.rpc import Context
from quota_testing.inprocess import running_center
from quota_testing.launch import ServerProcess, agent_process, center_process, run_quota
from quota_testing.support import eventually, order, promotion
from quota_testing.tls import DevTls, write_dev_tls
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc
from tests.e2e.test_bad_settings import refused

pytestmark = pytest.mark.e2e

OWNER = "owner-alice"
FAST = ("--renew-interval", "0.2")
HANG_GUARD_S = 60
"""Only so that a broken link fails the test instead of hanging it."""


@dataclass
class Secured:
    dev: DevTls
    center: ServerProcess
    agent: ServerProcess


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    workdir = tmp_path_factory.mktemp("secured")
    dev = write_dev_tls(workdir / "certs", ["eu", "us"])
    center = center_process(workdir, tls=dev).start()
    try:
        agent = agent_process(workdir, "eu", center.address, *FAST, tls=dev).start()
        try:
            yield Secured(dev, center, agent)
        finally:
            agent.kill()
    finally:
        center.kill()


def budget(secured: Secured, *args: str, flags: tuple[str, ...] | None = None) -> Any:
    """`quota budget ... --json` as the owner (or with `flags`), which must exit 0; what it printed."""
    given = secured.dev.flags(OWNER) if flags is None else list(flags)
    done = run_quota("budget", "--center", secured.center.address, *given, *args, "--json", cwd=secured.dev.directory)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_with_mutual_tls_a_center_and_an_agent_serve_orders_end_to_end(secured: Secured) -> None:
    created = budget(secured, "create", "tls-sale", "--budget", "100", "--regions", "eu")
    assert created["budget"] == 100

    with secured.dev.transport("orders-eu").channel(secured.agent.address) as channel:
        answer = agent_grpc.RegionAgentStub(channel).Deduct(order("tls-1", "eu", ("tls-sale", 3)), timeout=10)
    assert [line.amount for line in answer.lines] == [3]

    deadline = time.monotonic() + HANG_GUARD_S
    while [region["spent"] for region in budget(secured, "usage", "tls-sale")["regions"]] != [3]:
        assert time.monotonic() < deadline, "the agent's renewals never reported its sale over TLS"
        time.sleep(0.2)


def test_plaintext_to_a_tls_server_is_refused(secured: Secured) -> None:
    for server in (secured.center, secured.agent):
        with grpc.insecure_channel(server.address) as channel:
            probe = health_pb2_grpc.HealthStub(channel).Check
            with pytest.raises(grpc.RpcError) as refusal:
                probe(health_pb2.HealthCheckRequest(), timeout=10)
        assert isinstance(refusal.value, grpc.Call)
        assert refusal.value.code() == grpc.StatusCode.UNAVAILABLE

    plaintext = run_quota("budget", "--center", secured.center.address, "--insecure", "list", cwd=secured.dev.directory)
    assert plaintext.returncode == 4, plaintext.stderr  # no center answered
    assert "a center with mutual TLS needs --tls-cert, --tls-key and --tls-ca" in plaintext.stderr


def test_without_tls_files_a_loopback_server_serves_plaintext_and_says_how_to_secure_it(tmp_path: Path) -> None:
    """The README's `quota center serve --listen 127.0.0.1:...` still works, with a warning line."""
    args = ["center", "serve", "--listen", "127.0.0.1:0", "--store", f"sqlite:///{tmp_path / 'c.db'}"]
    center = ServerProcess("center", args, tmp_path / "center.log").start()
    try:
        with grpc.insecure_channel(center.address) as channel:
            probe = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    finally:
        center.stop()
    assert probe.status == health_pb2.HealthCheckResponse.SERVING
    warning = "serving plaintext on 127.0.0.1:0: any process on this machine may call it, unauthenticated"
    assert warning in (tmp_path / "center.log").read_text()


def test_plaintext_beyond_loopback_or_a_certificate_that_does_not_fit_the_role_is_exit_2(tmp_path: Path) -> None:
    dev = write_dev_tls(tmp_path / "certs", ["eu", "us"])
    agent_eu = ("agent", "serve", "--region", "eu", "--listen", "127.0.0.1:0")

    insecure = refused("center", "serve", "--listen", "0.0.0.0:0", "--insecure", cwd=tmp_path)
    assert (
        "--insecure allows plaintext only on loopback (127.0.0.0/8, ::1, localhost), not --listen 0.0.0.0:0" in insecure
    )
    wrong_region = refused(*agent_eu, *dev.flags("agent-us"), cwd=tmp_path)
    assert "names spiffe://quota/region/us/agent, but an agent of region eu needs" in wrong_region
    to_the_network = refused("budget", "--center", "10.0.0.5:50051", "list", cwd=tmp_path)
    assert "not --center 10.0.0.5:50051" in to_the_network


class PeerCertificates(grpc.aio.ServerInterceptor):
    """The test's hook in the center: the serial numbers of the client certificates it saw, by method."""

    def __init__(self) -> None:
        self.serials: dict[str, set[int]] = defaultdict(set)

    def _record(self, method: str, context: Context) -> None:
        [pem] = context.auth_context()[PEER_PEM_CERT]
        self.serials[method].add(x509.load_pem_x509_certificate(pem).serial_number)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method.rpartition("/")[2]
        # The stubs type handlers as grpc's synchronous ones; on a grpc.aio server they are coroutines.
        unary = cast("Callable[[Any, Context], Awaitable[Any]] | None", handler.unary_unary)
        streamed = cast("Callable[[Any, Context], AsyncIterator[Any]] | None", handler.unary_stream)
        decode, encode = handler.request_deserializer, handler.response_serializer
        if unary is not None:

            async def seen_unary(request: Any, context: Context) -> Any:
                self._record(method, context)
                return await unary(request, context)

            return grpc.unary_unary_rpc_method_handler(seen_unary, decode, encode)
        if streamed is not None:

            async def seen_stream(request: Any, context: Context) -> AsyncIterator[Any]:
                self._record(method, context)
                async for message in streamed(request, context):
                    yield message

            return grpc.unary_stream_rpc_method_handler(seen_stream, decode, encode)
        return handler


async def test_an_agent_certificate_replaced_on_disk_is_used_for_its_next_connection(tmp_path: Path) -> None:
    """The agent (a process) keeps running; the center (in this process) sees the new certificate on its
    renewals at once, and on the catalog stream once the old channel's calls are done and it closed."""
    dev = write_dev_tls(tmp_path / "certs", ["eu"])
    seen = PeerCertificates()
    first = x509.load_pem_x509_certificate(dev.files("agent-eu").cert.read_bytes()).serial_number
    async with running_center(tmp_path, interceptors=[seen], tls=dev) as center:
        async with dev.transport(OWNER).aio_channel(center.address) as channel:
            request = center_pb.CreatePromotionRequest(promotion=promotion(regions=("eu",)))
            await center_grpc.PromotionAdminStub(channel).CreatePromotion(request, timeout=HANG_GUARD_S)
        agent = await asyncio.to_thread(agent_process(tmp_path, "eu", center.address, *FAST, tls=dev).start)
        try:
            async with dev.transport("orders-eu").aio_channel(agent.address) as channel:
                await agent_grpc.RegionAgentStub(channel).Deduct(order("o-1", "eu", ("promo", 1)), timeout=HANG_GUARD_S)
            await eventually(_has(seen, "Renew", first))
            await eventually(_has(seen, "Watch", first))

            rotated = dev.rotate("agent-eu", datetime.now(UTC)).serial_number

            await eventually(_has(seen, "Renew", rotated))
            await eventually(_has(seen, "Watch", rotated), timeout_s=60)
            assert agent.alive, "no restart"
        finally:
            await asyncio.to_thread(agent.stop)


def _has(seen: PeerCertificates, method: str, serial: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return serial in seen.serials[method]

    return check


def test_a_center_certificate_replaced_on_disk_serves_the_next_connection(tmp_path: Path) -> None:
    dev = write_dev_tls(tmp_path / "certs", [])
    center = center_process(tmp_path, tls=dev).start()
    try:
        first = _served_serial(center.port, dev)

        rotated = dev.rotate("center", datetime.now(UTC)).serial_number

        assert _served_serial(center.port, dev) == rotated != first
        listed = run_quota("budget", "--center", center.address, *dev.flags(OWNER), "list", cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert center.alive, "no restart"
    finally:
        center.stop()


def _served_serial(port: int, dev: DevTls) -> int:
    """The serial number of the certificate the server presents to a new connection (the owner's handshake)."""
    files = dev.files(OWNER)
    context = ssl.create_default_context(cafile=files.ca)
    context.load_cert_chain(files.cert, files.key)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as connection,
        context.wrap_socket(connection, server_hostname="127.0.0.1") as tls,
    ):
        served = tls.getpeercert(binary_form=True)
    assert served is not None
    return x509.load_der_x509_certificate(served).serial_number
