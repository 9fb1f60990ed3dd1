"""The per-RPC metrics of a server, against real grpc.aio servers on loopback: every call to a method the
server serves counted once with the status it ended with (a stream when it ends, a call the role table
refused too), timed, and a made-up method path never a series."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from quota_center import server as center_server
from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_common.process import STANDARD_SERVICES, exclusive_server
from quota_common.rpc_metrics import RpcMetrics
from quota_testing.inprocess import running_center
from quota_testing.support import eventually
from quota_testing.tls import write_dev_tls

HEALTH = "grpc.health.v1.Health"


def _handled(registry: CollectorRegistry, service: str, method: str, code: str) -> float:
    labels = {"grpc_service": service, "grpc_method": method, "grpc_code": code}
    return registry.get_sample_value("grpc_server_handled_total", {**labels, "grpc_type": _type(method)}) or 0


def _type(method: str) -> str:
    return "server_stream" if method == "Watch" else "unary"


async def test_calls_are_counted_by_method_and_status_and_streams_when_they_end() -> None:
    registry = CollectorRegistry()
    server = exclusive_server([RpcMetrics(registry, [HEALTH])])
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
            watch = stub.Watch(health_pb2.HealthCheckRequest(), timeout=5)
            await watch.read()
            watch.cancel()
            made_up = channel.unary_unary(f"/{HEALTH}/Made-Up", request_serializer=bytes, response_deserializer=bytes)
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await made_up(b"", timeout=5)

            async def watch_ended() -> bool:
                return _handled(registry, HEALTH, "Watch", "CANCELLED") == 1

            await eventually(watch_ended)
    finally:
        await server.stop(None)

    assert (missing.value.code(), unknown.value.code()) == (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED)
    assert _handled(registry, HEALTH, "Check", "OK") == 2
    assert _handled(registry, HEALTH, "Check", "NOT_FOUND") == 1
    timed = {"grpc_service": HEALTH, "grpc_method": "Check", "grpc_type": "unary"}
    assert registry.get_sample_value("grpc_server_handling_seconds_count", timed) == 3
    methods = {sample.labels.get("grpc_method") for family in registry.collect() for sample in family.samples}
    assert methods == {"Check", "Watch"}


async def test_a_call_the_role_table_refuses_is_counted_with_its_status(tmp_path: Path) -> None:
    dev = write_dev_tls(tmp_path / "tls")
    registry = CollectorRegistry()
    calls = RpcMetrics(registry, [*center_server.SERVICES, *STANDARD_SERVICES])
    async with running_center(tmp_path, tls=dev, calls=calls) as center:
        async with dev.transport("orders-eu").aio_channel(center.address) as channel:
            admin = center_grpc.PromotionAdminStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await admin.GetUsage(center_pb.GetUsageRequest(promotion_id="p"), timeout=5)
        async with dev.transport("owner-alice").aio_channel(center.address) as channel:
            admin = center_grpc.PromotionAdminStub(channel)
            await asyncio.wait_for(admin.ListPromotions(center_pb.ListPromotionsRequest()), 5)

    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    admin_service = "quota_center.v1.PromotionAdmin"
    assert _handled(registry, admin_service, "GetUsage", "PERMISSION_DENIED") == 1
    assert _handled(registry, admin_service, "ListPromotions", "OK") == 1
