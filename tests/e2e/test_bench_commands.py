"""The benchmark commands run end to end and print the figures they promise."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis

from quota_testing.launch import ServerProcess
from quota_testing.servers import redis_server
from quota_testing.tls import write_dev_tls
from region_agent.v1 import region_agent_pb2 as pb
from region_agent.v1 import region_agent_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e


def _quota_json(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "quota_cli", *args, "--json"], capture_output=True, text=True, timeout=150, check=True
    )
    figures: dict[str, Any] = json.loads(done.stdout)
    return figures


def test_bench_store_measures_both_stores_through_the_api() -> None:
    figures = _quota_json("bench", "store", "--seconds", "0.5")

    assert figures["sqlite_grants_per_s"] > 0
    assert figures["etcd_grants_per_s"] > 0


def test_bench_failover_loses_nothing() -> None:
    figures = _quota_json("bench", "failover")

    assert 0 < figures["failover_s"] < 2 + 2  # the election TTL plus 2 s
    assert figures["deductions_acked"] > 0
    assert figures["over_issue"] == 0
    assert figures["lost_acks"] == 0
    assert figures["center_consumed"] == figures["agents_deducted"]


def test_bench_ledger_measures_both_ledgers_and_the_bare_script() -> None:
    figures = _quota_json("bench", "ledger", "--seconds", "0.5", "--clients", "4")

    for row in ("agent_memory", "agent_redis"):
        assert figures[row]["deductions_per_s"] > 0
        assert 0 < figures[row]["p50_ms"] <= figures[row]["p99_ms"]
    assert figures["evalsha_sequential_per_s"] > 0
    assert figures["evalsha_concurrent_per_s"] > 0
    assert figures["redis_vs_memory_ratio"] > 0


def test_bench_cells_measures_one_region_at_each_cell_count_and_loses_nothing() -> None:
    figures = _quota_json("bench", "cells", "--seconds", "0.5", "--clients", "4", "--cells", "1,2")

    assert [row["cells"] for row in figures["rows"]] == [1, 2]
    for row in figures["rows"]:
        assert row["deductions"] > 0
        assert row["agent_cores"] > 0
        assert (row["over_issue"], row["errors"]) == (0, 0)
    assert figures["rows"][0]["ratio_to_1_cell"] == 1.0


def test_bench_capacity_opens_every_pair_then_measures_the_center_under_renewals_and_orders() -> None:
    figures = _quota_json(
        "bench", "capacity", "--promotions", "20", "--regions", "2", "--seconds", "7", "--orders-per-s", "50",
        "--groups", "1,2",
    )  # fmt: skip

    (row,) = figures["rows"]
    assert (row["pairs"], row["promotions"], row["regions"]) == (40, 20, 2)
    assert row["openings"] == row["in_place_at_start"] == 40
    assert row["renew_calls"] > 0
    assert row["renew_request_bytes"] > 0
    assert 0 < row["renew_p50_ms"] <= row["renew_p99_ms"]
    assert 0 < row["center_renew_p50_ms_at_most"] <= row["center_renew_p99_ms_at_most"]
    assert (row["center_leadership_lost"], row["center_unretrieved_task_errors"]) == (0, 0)
    assert row["center_cpu_per_s"] > 0
    assert row["etcd_txn_per_s"] > 0
    assert row["deductions_per_s"] > 0
    (two,) = figures["group_rows"]
    assert (two["groups"], two["pairs"], sum(two["group_pairs"].values())) == (2, 40, 40)
    assert two["openings"] == two["in_place_at_start"] == 40, "every pair opened at the group serving it"
    assert two["renew_failed"] == two["center_leadership_lost"] == 0
    assert all(p99 > 0 for p99 in two["group_renew_p99_ms"].values()), "each group renewed"
    assert all(cores > 0 for cores in two["group_cores"].values())
    assert two["deductions_per_s"] > 0
    assert [count["groups"] for count in figures["group_capacity"]] == [1, 2]
    assert figures["group_capacity"][0]["ratio_to_one_group"] == 1.0
    assert figures["group_capacity"][1]["ratio_to_one_group"] > 0


def test_bench_cost_measures_every_step_from_bare_grpc_to_the_agent() -> None:
    figures = _quota_json("bench", "cost", "--seconds", "0.5", "--rounds", "1", "--clients", "4")

    servers = {row["server"]: row for row in figures["servers"]}
    assert list(servers) == [
        "echo",
        "echo_waiting",
        "echo_redis_volatile",
        "echo_redis_durable",
        "agent_memory",
        "agent_redis",
    ]
    assert servers["echo"]["vs_echo"] == 1.0
    for row in servers.values():
        assert len(row["per_s"]) == 1
        assert row["mean_per_s"] > 0
        assert row["cpu_us_per_call"] > 0


def test_bench_embedded_measures_both_agents_beside_their_yardsticks_and_at_one_offered_load() -> None:
    figures = _quota_json("bench", "embedded", "--seconds", "0.5", "--rounds", "1", "--clients", "4")

    rows = {row["strategy"]: row for row in figures["rows"]}
    assert list(rows) == ["embedded", "bare_evalsha", "agent_grpc", "agent_grpc_stub", "echo_redis"]
    assert all(row["throughput_per_s"] > 0 for row in rows.values())
    offered = {row["strategy"]: row for row in figures["offered_rows"]}
    assert list(offered) == ["embedded", "agent_grpc"]
    # The same orders offered to both (a busy machine may fail some: counted, not hidden).
    sent = {row: offered[row]["deductions"] + offered[row]["errors"] for row in offered}
    assert sent["embedded"] == sent["agent_grpc"] > 0
    ratios = (
        "embedded_vs_evalsha_ratio",
        "agent_grpc_vs_echo_redis_ratio",
        "agent_grpc_vs_echo_redis_cpu_ratio",
        "agent_grpc_client_vs_stub_ratio",
        "embedded_vs_agent_grpc_p99_ratio",
    )
    for ratio in ratios:
        assert figures[ratio] > 0
    assert figures["redis_calls_during_embedded"]["EVALSHA"] > 0


async def test_the_waiting_echo_answers_no_sooner_than_its_wait(tmp_path: Path) -> None:
    echo = ServerProcess("echo", ["--wait-ms", "50"], tmp_path / "echo.log", module="loadtest.echo")
    try:
        async with grpc.aio.insecure_channel(echo.start().address) as channel:
            stub = pb_grpc.RegionAgentStub(channel)
            await stub.Deduct(pb.DeductRequest(order_key="warm-up"), timeout=10)
            started = time.perf_counter()
            answer = await stub.Deduct(pb.DeductRequest(order_key="timed"), timeout=10)
            waited = time.perf_counter() - started
    finally:
        echo.stop()

    assert answer.order_key == "timed"
    assert waited >= 0.05


def test_bench_freeze_reports_a_freeze_reaching_every_region_sooner_by_push_than_by_pull_alone() -> None:
    figures = _quota_json("bench", "freeze", "--freezes", "10")

    for link in ("push", "pull_only"):
        assert figures[link]["n"] == 10
        assert 0 <= figures[link]["p50_ms"] <= figures[link]["p99_ms"]
    # Without the stream, the freeze waits for the next renewal or pull, which the push does not: however busy
    # the machine, the order holds. How fast each is is the benchmark's figure, not this test's.
    assert figures["push"]["p50_ms"] < figures["pull_only"]["p50_ms"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One short `quota bench --json` run, its figures and the docs directory it wrote to."""
    docs = tmp_path_factory.mktemp("docs")
    return _quota_json("bench", "--seconds", "1", "--clients", "8", "--docs", str(docs)), docs


def test_bench_compares_every_strategy_at_both_wan_settings(bench: tuple[dict[str, Any], Path]) -> None:
    figures, docs = bench

    rows = {(row["strategy"], row["wan_rtt_ms"]): row for row in figures["rows"]}
    strategies = ("agent_memory", "agent_redis", "central_grpc", "central_redis")
    mtls = {("agent_memory_mtls", 0), ("agent_redis_mtls", 0)}
    assert set(rows) == {(strategy, rtt) for strategy in strategies for rtt in (0, 80)} | mtls
    for row in rows.values():
        assert row["deductions"] > 0
        assert row["over_issue"] == 0
        assert row["errors"] == 0
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["p999_ms"]
    for strategy in ("central_grpc", "central_redis"):
        # Every order crosses the WAN: no median can beat the round trip.
        assert rows[(strategy, 80)]["p50_ms"] >= 80
        assert rows[(strategy, 80)]["center_calls_per_1k"] == 1000
    for strategy in ("agent_memory", "agent_redis"):
        # The agents' orders stay in the region: the typical one never waits for the center.
        assert rows[(strategy, 80)]["p50_ms"] < 40
        assert rows[(strategy, 80)]["center_calls_per_1k"] < 100
    assert figures["echo_per_s"] > 0
    assert figures["lua_loop_per_s"] > 0
    assert figures["agent_vs_echo_ratio"] > 0
    assert figures["echo_redis_per_s"] > 0
    assert figures["agent_vs_echo_redis_ratio"] > 0
    assert figures["agent_vs_lua_ratio"] > 0
    # What quota_client costs per call, apart from the agent's cost; how much, the benchmark says.
    for ledger in ("agent_memory", "agent_redis"):
        assert figures[f"{ledger}_client_vs_stub_ratio"] > 0
    page = (docs / "benchmarks.md").read_text()
    assert "| agent_redis | 80 |" in page


def test_bench_measures_each_agent_with_and_without_mutual_tls_in_the_same_run(
    bench: tuple[dict[str, Any], Path],
) -> None:
    figures, docs = bench

    secured = [(row["strategy"], row["wan_rtt_ms"]) for row in figures["rows"] if row["mtls"]]
    assert secured == [("agent_memory_mtls", 0), ("agent_redis_mtls", 0)]
    strategies = [row["strategy"] for row in figures["rows"]]
    for ledger in ("agent_memory", "agent_redis"):
        # Each mTLS row sits right below the plaintext row it is held against.
        assert strategies[strategies.index(ledger) + 1] == f"{ledger}_mtls"
    # The cost of security as ratios of rates measured in this run; how large, the benchmark says, not this test.
    for ratio in ("agent_memory_mtls_ratio", "agent_redis_mtls_ratio", "echo_mtls_ratio", "echo_mtls_authz_ratio"):
        assert figures[ratio] > 0
    for echo in ("echo_mtls", "echo_mtls_authz"):
        assert figures[f"{echo}_per_s"] > 0
        assert len(figures[f"{echo}_per_s_before_after"]) == 2
    page = (docs / "benchmarks.md").read_text()
    assert "| agent_redis_mtls | 0 |" in page
    assert f"Redis ledger **{figures['agent_redis_mtls_ratio']}**" in page


async def test_the_echo_yardstick_with_authorization_answers_its_region_and_refuses_others(tmp_path: Path) -> None:
    dev = write_dev_tls(tmp_path / "tls", regions=("bench", "us"))
    args = [*dev.flags("agent-bench"), "--authz", "bench"]
    echo = ServerProcess("echo", args, tmp_path / "echo.log", module="loadtest.echo").start()
    try:
        async with dev.transport("orders-bench").aio_channel(echo.address) as channel:
            answer = await pb_grpc.RegionAgentStub(channel).Deduct(pb.DeductRequest(order_key="ours"), timeout=10)
        async with dev.transport("orders-us").aio_channel(echo.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await pb_grpc.RegionAgentStub(channel).Deduct(pb.DeductRequest(order_key="theirs"), timeout=10)
        async with grpc.aio.insecure_channel(echo.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as plaintext:
                await pb_grpc.RegionAgentStub(channel).Deduct(pb.DeductRequest(order_key="plain"), timeout=10)
    finally:
        echo.stop()

    assert answer.order_key == "ours"
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_echo_yardstick_with_redis_writes_once_per_call_before_answering(tmp_path: Path) -> None:
    with redis_server() as store:
        echo = ServerProcess(
            "echo", ["--redis", f"redis://{store.address}/0"], tmp_path / "echo.log", module="loadtest.echo"
        )
        try:
            async with grpc.aio.insecure_channel(echo.start().address) as channel:
                stub = pb_grpc.RegionAgentStub(channel)
                keys = [f"order-{n}" for n in range(50)]
                calls = (stub.Deduct(pb.DeductRequest(order_key=key), timeout=10) for key in keys)
                answers = await asyncio.gather(*calls)
        finally:
            echo.stop()
        client = redis.Redis(host=store.host, port=store.port)
        written = await client.get("echo:calls")
        await client.aclose()

    assert [answer.order_key for answer in answers] == keys
    assert written == b"50"


def test_bench_recovery_serves_again_after_every_outage() -> None:
    figures = _quota_json("bench", "recovery", "--outages", "1,3", "--renew-interval", "0.5")

    rows = figures["outages"]
    print(f"back to serving (target {figures['target_s']} s):", [row["back_to_serving_s"] for row in rows])
    assert [row["outage_s"] for row in rows] == [1.0, 3.0]
    for row in rows:
        assert row["renew_interval_s"] == 0.5
        assert row["back_to_serving_s"] is not None, "the agent never accepted an order again"
        assert row["back_to_serving_s"] >= 0
        assert isinstance(row["within_target"], bool)
    # Three seconds outlast the 1.5 s lease: the region went dark, and came back.
    assert rows[1]["orders_refused"] > 0


def test_bench_groups_measures_each_group_count_on_one_etcd() -> None:
    figures = _quota_json("bench", "groups", "--seconds", "0.5", "--workers", "4")

    assert [row["groups"] for row in figures["rows"]] == [1, 2, 4]
    assert all(row["grants_per_s"] > 0 for row in figures["rows"])
    assert figures["rows"][0]["ratio_to_one_group"] == 1.0
