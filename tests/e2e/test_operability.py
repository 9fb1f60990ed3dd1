"""What operators and their tools see of running processes: the standard health service (Kubernetes
gRPC probes), server reflection (grpcurl) and the Prometheus endpoint, on the center and an agent."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from prometheus_client.parser import text_string_to_metric_families

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_testing.launch import ServerProcess, agent_process, center_process
from quota_testing.support import eventually, order, promotion
from region_agent.v1 import region_agent_pb2 as agent_pb
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc

pytestmark = pytest.mark.e2e

METRICS = ("--metrics-listen", "127.0.0.1:0")
CENTER_SERVICES = {"quota_center.v1.PromotionAdmin", "quota_center.v1.Catalog", "quota_center.v1.Allocation"}
AGENT_SERVICES = {"region_agent.v1.RegionAgent"}
STANDARD = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


@dataclass
class Running:
    center: ServerProcess
    agent: ServerProcess


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    workdir: Path = tmp_path_factory.mktemp("operability")
    center = center_process(workdir, *METRICS).start()
    agent = None
    try:
        agent = agent_process(workdir, "eu", center.address, "--renew-interval", "0.2", *METRICS).start()
        yield Running(center, agent)
    finally:
        if agent is not None:
            agent.stop()
        center.stop()


def _health(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    status: int = answer.status
    return status


def _listed_services(address: str) -> tuple[set[str], list[str]]:
    """What `grpcurl list` and `grpcurl describe` do: services by reflection, then each one's methods."""
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        methods = [
            method.full_name for name in sorted(services - STANDARD) for method in pool.FindServiceByName(name).methods
        ]
    return services, methods


def test_the_center_and_the_agent_answer_health_checks_serving(running: Running) -> None:
    assert _health(running.center.address) == health_pb2.HealthCheckResponse.SERVING
    assert _health(running.agent.address) == health_pb2.HealthCheckResponse.SERVING
    # The center's own services report leadership; on SQLite the only replica leads.
    for service in CENTER_SERVICES:
        assert _health(running.center.address, service) == health_pb2.HealthCheckResponse.SERVING


def test_a_health_check_for_a_service_the_server_lacks_is_not_found(running: Running) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        _health(running.agent.address, "quota_center.v1.Allocation")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_every_servers_services(running: Running) -> None:
    services, methods = _listed_services(running.center.address)
    assert services == CENTER_SERVICES | STANDARD
    assert "quota_center.v1.PromotionAdmin.GetUsage" in methods
    assert "quota_center.v1.Allocation.Acquire" in methods

    services, methods = _listed_services(running.agent.address)
    assert services == AGENT_SERVICES | STANDARD
    assert {"region_agent.v1.RegionAgent.Deduct", "region_agent.v1.RegionAgent.Refund"} <= set(methods)


@pytest.fixture(scope="module")
def sold(running: Running) -> None:
    """Promotion "metered" (budget 1,000) with 40 one-unit orders in eu, one replayed, one refunded
    and three refused for the user's limit."""
    asyncio.run(_sell(running))


async def _sell(running: Running) -> None:
    async with (
        grpc.aio.insecure_channel(running.center.address) as center_channel,
        grpc.aio.insecure_channel(running.agent.address) as agent_channel,
    ):
        admin = center_grpc.PromotionAdminStub(center_channel)
        await admin.CreatePromotion(
            center_pb.CreatePromotionRequest(promotion=promotion("metered", 1_000, ("eu",), per_user_orders=1))
        )
        orders = agent_grpc.RegionAgentStub(agent_channel)
        for number in range(40):
            await orders.Deduct(order(f"m-{number}", "eu", ("metered", 1), user_id=f"u-{number}"), timeout=5)
        await orders.Deduct(order("m-0", "eu", ("metered", 1), user_id="u-0"), timeout=5)
        for number in range(3):
            with pytest.raises(grpc.aio.AioRpcError):
                await orders.Deduct(order(f"again-{number}", "eu", ("metered", 1), user_id="u-1"), timeout=5)
        refund = agent_pb.RefundRequest(order_key="m-1", lines=[agent_pb.RefundLine(promotion_id="metered", amount=1)])
        await orders.Refund(refund, timeout=5)

        async def reported() -> bool:
            usage = await admin.GetUsage(center_pb.GetUsageRequest(promotion_id="metered"), timeout=5)
            return [region.consumed for region in usage.regions] == [39]

        await eventually(reported)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(port: int) -> Samples:
    """GET /metrics as curl does; every sample by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.usefixtures("sold")
def test_the_centers_metrics_show_budget_allocation_and_spending_per_region(running: Running) -> None:
    samples = _scrape(running.center.metrics_port)
    promotion_label = (("promotion", "metered"),)
    region_labels = (("promotion", "metered"), ("region", "eu"))
    granted = samples[("quota_region_granted_units_total", region_labels)]
    returned = samples[("quota_region_returned_units_total", region_labels)]

    assert samples[("quota_center_leader", ())] == 1
    assert samples[("quota_promotion_budget_units", promotion_label)] == 1_000
    assert samples[("quota_promotion_unallocated_units", promotion_label)] == 1_000 - granted + returned
    assert samples[("quota_region_spent_units", region_labels)] == 39
    assert samples[("quota_region_held_units", region_labels)] == granted - returned - 39
    assert 0 <= samples[("quota_region_lease_age_seconds", region_labels)] < 5
    assert samples[("quota_region_burn_rate_units_per_second", region_labels)] >= 0


def test_the_leading_center_keeps_its_state_out_of_the_collectors_passes(running: Running) -> None:
    samples = _scrape(running.center.metrics_port)

    assert samples[("quota_center_leader", ())] == 1
    assert samples[("python_gc_frozen_objects", ())] > 0  # frozen when it won the election (quota_common.gc_policy)


@pytest.mark.usefixtures("sold")
def test_the_agents_metrics_count_answers_by_result_and_show_its_ledger_and_cache(running: Running) -> None:
    samples = _scrape(running.agent.metrics_port)
    region = ("region", "eu")

    def deductions(result: str, reason: str = "") -> float:
        labels = (("operation", "deduct"), ("reason", reason), region, ("result", result))
        return samples.get(("quota_agent_deductions_total", labels), 0)

    assert deductions("accepted") == 40
    assert deductions("replayed") == 1
    assert deductions("rejected", "user_limit") == 3
    assert samples[("quota_agent_deduction_duration_seconds_count", (("operation", "deduct"), region))] == 44
    ledger = (("promotion", "metered"), region)
    assert samples[("quota_agent_deducted_units_total", ledger)] == 40
    assert samples[("quota_agent_refunded_units_total", ledger)] == 1
    granted, returned = (
        samples[("quota_agent_granted_units_total", ledger)],
        samples[("quota_agent_returned_units_total", ledger)],
    )
    assert samples[("quota_agent_available_units", ledger)] == granted - returned - 40 + 1
    assert samples[("quota_agent_lease_remaining_seconds", ledger)] > 0
    assert samples[("quota_agent_below_floor_lines_total", ledger)] == 0  # its lines state no prices
    assert samples[("quota_agent_cached_promotions", (region,))] >= 1
    by_group = (("group", "default"), region)
    assert samples[("quota_agent_catalog_staleness_seconds", by_group)] < 10
    assert ("quota_agent_catalog_stream_up", by_group) in samples
    assert ("quota_agent_catalog_revision", by_group) in samples
    acquires = samples[("quota_agent_center_call_duration_seconds_count", (("method", "Acquire"), region))]
    assert acquires >= 1
    assert samples[("quota_agent_center_calls_total", (("code", "OK"), ("method", "Acquire"), region))] == acquires


def _calls(samples: Samples, method: str, code: str) -> float:
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "grpc_server_handled_total" and ("grpc_method", method) in labels and ("grpc_code", code) in labels
    )


@pytest.mark.usefixtures("sold")
def test_the_center_counts_every_call_by_method_and_status_and_no_unknown_method(running: Running) -> None:
    with grpc.insecure_channel(running.center.address) as channel:
        admin = center_grpc.PromotionAdminStub(channel)
        admin.GetUsage(center_pb.GetUsageRequest(promotion_id="metered"), timeout=5)
        with pytest.raises(grpc.RpcError) as missing:
            admin.GetUsage(center_pb.GetUsageRequest(promotion_id="no-such-promotion"), timeout=5)
        made_up: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/quota_center.v1.PromotionAdmin/Made-Up"
        )
        with pytest.raises(grpc.RpcError) as unknown:
            made_up(b"", timeout=5)
    assert (missing.value.code(), unknown.value.code()) == (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED)

    samples = _scrape(running.center.metrics_port)

    service = ("grpc_service", "quota_center.v1.PromotionAdmin")
    assert _calls(samples, "CreatePromotion", "OK") == 1
    assert _calls(samples, "GetUsage", "OK") >= 2  # the fixture's polls, and this one
    assert _calls(samples, "GetUsage", "NOT_FOUND") == 1
    unary = (("grpc_method", "GetUsage"), service, ("grpc_type", "unary"))
    assert samples[("grpc_server_handling_seconds_count", unary)] == sum(
        _calls(samples, "GetUsage", code) for code in ("OK", "NOT_FOUND")
    )
    assert _calls(samples, "Renew", "OK") >= 1  # the agent's renewals
    assert not [labels for _, labels in samples if ("grpc_method", "Made-Up") in labels]
    assert samples[("process_resident_memory_bytes", ())] > 0
    assert samples[("process_open_fds", ())] > 0
    assert ("process_cpu_seconds_total", ()) in samples


@pytest.mark.usefixtures("sold")
def test_the_agent_counts_every_call_by_method_and_status(running: Running) -> None:
    samples = _scrape(running.agent.metrics_port)

    assert _calls(samples, "Deduct", "OK") == 41  # 40 orders and a replay
    assert _calls(samples, "Deduct", "FAILED_PRECONDITION") == 3  # refused: the user's limit
    assert _calls(samples, "Refund", "OK") == 1
    assert samples[("process_open_fds", ())] > 0
    assert ("python_gc_collections_total", (("generation", "0"),)) in samples
    # Frozen once it has joined its region (quota_common.gc_policy): no full collection walks its start again.
    assert samples[("python_gc_frozen_objects", ())] > 0


def test_the_metrics_port_answers_kubernetes_probes_while_serving(running: Running) -> None:
    for port in (running.center.metrics_port, running.agent.metrics_port):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            assert (answer.status, answer.read()) == (200, b"serving\n")


def test_the_metrics_endpoint_answers_only_metrics(running: Running) -> None:
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"http://127.0.0.1:{running.agent.metrics_port}/admin", timeout=5)
    raised.value.close()
    assert raised.value.code == 404
