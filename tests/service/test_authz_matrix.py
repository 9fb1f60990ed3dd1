"""The authorization interceptor on real grpc.aio servers with mutual TLS on loopback: a center and an
agent of region eu, each serving fakes of its generated services (registered as the real servers
register theirs), health and reflection. Every identity against every RPC of both servers gets the code
the role table decides, with its exact message; a refused call never reaches the handler, and an
allowed one reaches it knowing who called."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from quota_center.v1 import quota_center_pb2, quota_center_pb2_grpc
from quota_common.authz import AuthorizationInterceptor, caller
from quota_common.identity import Identity, Role, center, person, regional
from quota_common.roles import TABLE, refusal
from quota_common.rpc import add_decoding
from quota_common.tls import TlsFiles, TlsWatch
from quota_testing.certs import LOOPBACK, Issued, issue, new_ca, write_pair
from region_agent.v1 import region_agent_pb2, region_agent_pb2_grpc

DOMAIN = "quota"
HANG_GUARD_S = 20
"""Only so that a broken call fails the test instead of hanging it; no call comes near it."""
OK = grpc.StatusCode.OK

IDENTITIES = [
    center(DOMAIN),
    regional(DOMAIN, Role.AGENT, "eu"),
    regional(DOMAIN, Role.AGENT, "us"),
    regional(DOMAIN, Role.ORDERS, "eu"),
    regional(DOMAIN, Role.ORDERS, "us"),
    person(DOMAIN, Role.OWNER, "alice"),
    person(DOMAIN, Role.APPROVER, "bob"),
    person(DOMAIN, Role.OPERATOR, "carol"),
]
CENTER_SERVICES = [
    quota_center_pb2.DESCRIPTOR.services_by_name[name] for name in ("PromotionAdmin", "Allocation", "Catalog")
]
AGENT_SERVICES = [region_agent_pb2.DESCRIPTOR.services_by_name["RegionAgent"]]
COMMON_SERVICES = [
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
]
CENTER_RPCS = [method for service in CENTER_SERVICES + COMMON_SERVICES for method in service.methods]
AGENT_RPCS = [method for service in AGENT_SERVICES + COMMON_SERVICES for method in service.methods]
FAKED = {service.full_name for service in CENTER_SERVICES + AGENT_SERVICES}
"""Services answered by fakes that record each call they receive."""


@dataclass(frozen=True)
class Reached:
    method: str
    caller: Identity | None
    request: Message


@dataclass
class Stack:
    """A center and an agent of eu, each on a TLS port and on a plaintext one, and what reached them."""

    pki: Pki
    center: int
    agent: int
    plain_center: int
    plain_agent: int
    reached: list[Reached] = field(default_factory=list)


@dataclass
class Pki:
    directory: Path
    ca: Issued
    now: datetime

    def files(self, name: str, uris: list[str], *, server: bool = False) -> TlsFiles:
        issued = issue(self.ca, self.now, 1, uris=uris, hosts=LOOPBACK if server else (), server=server)
        cert, key = write_pair(self.directory, name, issued)
        trusted = self.directory / "ca.pem"
        trusted.write_bytes(self.ca.cert_pem)
        return TlsFiles(cert, key, trusted)

    def credentials(self, uris: list[str]) -> grpc.ChannelCredentials:
        return TlsWatch(self.files("client", uris)).channel_credentials()


def _name(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def _fake(base: type[Any], service: ServiceDescriptor, reached: list[Reached]) -> Any:
    """An instance of the generated servicer `base` whose every method records the call and answers an
    empty response (one, for a stream)."""

    def answering(method: MethodDescriptor) -> Callable[..., Any]:
        response = message_factory.GetMessageClass(method.output_type)

        async def unary(self: Any, request: Message, context: Any) -> Message:
            reached.append(Reached(_name(method), caller(), request))
            return response()

        async def stream(self: Any, request: Message, context: Any) -> AsyncIterator[Message]:
            reached.append(Reached(_name(method), caller(), request))
            yield response()

        return stream if method.server_streaming else unary

    return type(f"Fake{service.name}", (base,), {m.name: answering(m) for m in service.methods})()


@contextlib.asynccontextmanager
async def _server(
    credentials: grpc.ServerCredentials, region: str | None, register: Callable[[grpc.aio.Server], None]
) -> AsyncIterator[tuple[int, int]]:
    """A server authorizing by TABLE with what `register` adds, health and reflection; its TLS and its
    plaintext ports."""
    server = grpc.aio.server(interceptors=[AuthorizationInterceptor(DOMAIN, TABLE, region)])
    register(server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    reflection.enable_server_reflection([health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    tls = server.add_secure_port("127.0.0.1:0", credentials)
    plain = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield tls, plain
    finally:
        await server.stop(None)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    now = datetime.now(UTC)
    pki = Pki(tmp_path, new_ca(now, 2), now)
    reached: list[Reached] = []

    def center_services(server: grpc.aio.Server) -> None:
        for service in CENTER_SERVICES:
            base = getattr(quota_center_pb2_grpc, f"{service.name}Servicer")
            add = getattr(quota_center_pb2_grpc, f"add_{service.name}Servicer_to_server")
            add_decoding(add, _fake(base, service, reached), server)

    def agent_services(server: grpc.aio.Server) -> None:
        fake = _fake(region_agent_pb2_grpc.RegionAgentServicer, AGENT_SERVICES[0], reached)
        add_decoding(region_agent_pb2_grpc.add_RegionAgentServicer_to_server, fake, server)

    center_files = pki.files("center", ["spiffe://quota/center"], server=True)
    agent_files = pki.files("agent-eu", ["spiffe://quota/region/eu/agent"], server=True)
    async with (
        _server(TlsWatch(center_files).server_credentials(), None, center_services) as (center_port, plain_center),
        _server(TlsWatch(agent_files).server_credentials(), "eu", agent_services) as (agent_port, plain_agent),
    ):
        yield Stack(pki, center_port, agent_port, plain_center, plain_agent, reached)


def _request(method: MethodDescriptor, region: str) -> bytes:
    """An empty request of `method`, naming `region` where the table reads the region from it."""
    request = message_factory.GetMessageClass(method.input_type)()
    path = TABLE[_name(method)].region_field
    if path is not None:
        *parents, last = path.split(".")
        target = request
        for name in parents:
            target = getattr(target, name)
        setattr(target, last, region)
    return request.SerializeToString()


def _same(raw: bytes) -> bytes:
    return raw


async def _call(channel: grpc.aio.Channel, method: MethodDescriptor, raw: bytes) -> tuple[grpc.StatusCode, str]:
    """The call's status code and message; a streaming answer is read up to its first message."""
    name = _name(method)
    try:
        if method.client_streaming:
            bidi = channel.stream_stream(name, request_serializer=_same, response_deserializer=_same)(
                timeout=HANG_GUARD_S
            )
            await bidi.write(reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString())
            await bidi.read()
            bidi.cancel()
        elif method.server_streaming:
            stream = channel.unary_stream(name, request_serializer=_same, response_deserializer=_same)(
                raw, timeout=HANG_GUARD_S
            )
            async for _ in stream:
                break
            stream.cancel()
        else:
            unary = channel.unary_unary(name, request_serializer=_same, response_deserializer=_same)
            await unary(raw, timeout=HANG_GUARD_S)
    except grpc.aio.AioRpcError as error:
        return error.code(), str(error.details())
    return OK, ""


def _expected(method: MethodDescriptor, identity: Identity) -> tuple[grpc.StatusCode, str]:
    why = refusal(TABLE, _name(method), identity, "eu")
    if why is not None:
        return grpc.StatusCode.PERMISSION_DENIED, why
    if _name(method) == "/grpc.health.v1.Health/List":
        return grpc.StatusCode.UNIMPLEMENTED, ""  # grpcio's async health servicer has no List (yet)
    return OK, ""


@contextlib.contextmanager
def _unchanged(stack: Stack) -> Iterator[None]:
    before = list(stack.reached)
    yield
    assert stack.reached == before, "a refused call reached its handler"


@pytest.mark.parametrize("identity", IDENTITIES, ids=str)
async def test_every_identity_against_every_rpc_of_both_servers(stack: Stack, identity: Identity) -> None:
    """Each call names region eu where the request has a region; the agent serves eu."""
    credentials = stack.pki.credentials([identity.uri])
    for port, rpcs in [(stack.center, CENTER_RPCS), (stack.agent, AGENT_RPCS)]:
        async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
            for method in rpcs:
                before = len(stack.reached)
                answer = await _call(channel, method, _request(method, "eu"))
                expected = _expected(method, identity)

                assert answer[0] == expected[0], _name(method)
                assert answer[1] == expected[1] or expected[0] == grpc.StatusCode.UNIMPLEMENTED, _name(method)
                if method.containing_service.full_name in FAKED:
                    reached = stack.reached[before:]
                    if answer[0] == OK:
                        assert [(r.method, r.caller) for r in reached] == [(_name(method), identity)]
                    else:
                        assert reached == [], f"{_name(method)} refused, yet its handler ran"


@pytest.mark.parametrize("presented", ["none", "no SAN URI", "another trust domain"])
async def test_a_caller_without_an_identity_is_unauthenticated_everywhere(stack: Stack, presented: str) -> None:
    """Plaintext (on a port that allows it), a certificate naming nobody, one of another trust domain:
    every RPC, health and reflection included, is refused before anything runs."""
    messages = {
        "none": "the call came without a verified client certificate",
        "no SAN URI": "the certificate has no URI SAN, so it names no identity",
        "another trust domain": "belongs to trust domain 'elsewhere', not 'quota'",
    }
    uris = {"no SAN URI": [], "another trust domain": ["spiffe://elsewhere/owner/alice"]}
    with _unchanged(stack):
        for tls_port, plain_port, rpcs in [
            (stack.center, stack.plain_center, CENTER_RPCS),
            (stack.agent, stack.plain_agent, AGENT_RPCS),
        ]:
            if presented == "none":
                channel = grpc.aio.insecure_channel(f"127.0.0.1:{plain_port}")
            else:
                channel = grpc.aio.secure_channel(f"localhost:{tls_port}", stack.pki.credentials(uris[presented]))
            async with channel:
                for method in rpcs:
                    code, message = await _call(channel, method, _request(method, "eu"))
                    assert code == grpc.StatusCode.UNAUTHENTICATED, _name(method)
                    assert messages[presented] in message


async def test_an_agent_acts_only_for_its_own_region_at_the_center(stack: Stack) -> None:
    us_agent = stack.pki.credentials(["spiffe://quota/region/us/agent"])
    async with grpc.aio.secure_channel(f"localhost:{stack.center}", us_agent) as channel:
        stub = quota_center_pb2_grpc.AllocationStub(channel)
        eu = quota_center_pb2.AgentIdentity(region="eu", incarnation="i")
        with _unchanged(stack), pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Acquire(quota_center_pb2.AcquireRequest(agent=eu, amount=5), timeout=HANG_GUARD_S)
        us = quota_center_pb2.AgentIdentity(region="us", incarnation="i")
        await stub.Acquire(quota_center_pb2.AcquireRequest(agent=us, amount=5), timeout=HANG_GUARD_S)

    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details() == (
        "spiffe://quota/region/us/agent may not call /quota_center.v1.Allocation/Acquire for region eu: "
        "an agent calls only for its own region"
    )
    [acquired] = stack.reached
    assert acquired.caller == regional(DOMAIN, Role.AGENT, "us")
    assert acquired.request == quota_center_pb2.AcquireRequest(agent=us, amount=5)


async def test_a_request_that_does_not_decode_is_refused_before_its_region_is_read(stack: Stack) -> None:
    eu_agent = stack.pki.credentials(["spiffe://quota/region/eu/agent"])
    renew = quota_center_pb2.DESCRIPTOR.services_by_name["Allocation"].methods_by_name["Renew"]
    async with grpc.aio.secure_channel(f"localhost:{stack.center}", eu_agent) as channel:
        with _unchanged(stack):
            answer = await _call(channel, renew, b"\x0a\x05eu")  # field 1 says 5 bytes follow; 2 do

    assert answer == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "the request could not be decoded as quota_center.v1.RenewRequest: send that message, built from this "
        "server's .proto files",
    )


async def test_handlers_that_decode_their_own_requests_are_checked_the_same_way(tmp_path: Path) -> None:
    """A servicer registered by the generated add_*_to_server (gRPC decodes the request) rather than
    add_decoding: the interceptor reads the region from the decoded message."""
    now = datetime.now(UTC)
    pki = Pki(tmp_path, new_ca(now, 1), now)
    reached: list[Reached] = []
    fake = _fake(quota_center_pb2_grpc.CatalogServicer, CENTER_SERVICES[2], reached)
    credentials = TlsWatch(pki.files("center", ["spiffe://quota/center"], server=True)).server_credentials()

    def register(server: grpc.aio.Server) -> None:
        quota_center_pb2_grpc.add_CatalogServicer_to_server(fake, server)

    async with (
        _server(credentials, None, register) as (port, _),
        grpc.aio.secure_channel(f"localhost:{port}", pki.credentials(["spiffe://quota/region/eu/agent"])) as channel,
    ):
        stub = quota_center_pb2_grpc.CatalogStub(channel)
        await stub.ListChanges(quota_center_pb2.CatalogRequest(region="eu"), timeout=HANG_GUARD_S)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListChanges(quota_center_pb2.CatalogRequest(region="us"), timeout=HANG_GUARD_S)

    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "for region us: an agent calls only for its own region" in str(refused.value.details())
    assert [(r.method, r.request) for r in reached] == [
        ("/quota_center.v1.Catalog/ListChanges", quota_center_pb2.CatalogRequest(region="eu"))
    ]


async def test_a_method_the_server_does_not_have_is_unimplemented(stack: Stack) -> None:
    owner = stack.pki.credentials(["spiffe://quota/owner/alice"])
    async with grpc.aio.secure_channel(f"localhost:{stack.agent}", owner) as channel:
        set_budget = quota_center_pb2.DESCRIPTOR.services_by_name["PromotionAdmin"].methods_by_name["SetBudget"]
        assert (await _call(channel, set_budget, b""))[0] == grpc.StatusCode.UNIMPLEMENTED
