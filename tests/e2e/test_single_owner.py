"""Whatever must have one owner has one: a port, a SQLite file, a region's in-process ledger. A
second process that would own it too is refused at start (exit 2, one line naming the owner), or,
for a replaced agent, stops (exit 3) rather than serving on as a zombie. Two centers on one etcd
prefix are safe by election and fenced writes (tests/faults/test_failover.py)."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_common.process import EXIT_RETIRED
from quota_testing.launch import ServerProcess, agent_process, center_process, run_quota
from quota_testing.support import order, promotion
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc

pytestmark = pytest.mark.e2e

FAST = ("--renew-interval", "0.2")


def refused(*args: str, cwd: Path) -> str:
    result = run_quota(*args, cwd=cwd)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    return line


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Processes a test starts; killed at its end, whatever happened."""
    processes: list[ServerProcess] = []
    yield processes
    for process in processes:
        process.kill()


def _workdir(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    status: int = answer.status
    return status


def test_a_second_center_on_a_taken_port_is_refused_and_the_first_serves_on(
    tmp_path: Path, started: list[ServerProcess]
) -> None:
    first = center_process(_workdir(tmp_path, "a"))
    started.append(first.start())

    line = refused("center", "serve", "--listen", first.address, cwd=_workdir(tmp_path, "b"))

    assert line == (
        f"quota: error: cannot listen on {first.address}: the port is in use by another process; "
        "stop it, or choose another --listen"
    )
    assert _health(first.address) == health_pb2.HealthCheckResponse.SERVING


def test_a_second_center_on_a_taken_sqlite_file_is_refused_until_the_owner_stops_or_dies(
    tmp_path: Path, started: list[ServerProcess]
) -> None:
    store = f"sqlite:///{tmp_path / 'center.db'}"
    second_center = ("center", "serve", "--listen", "127.0.0.1:0", "--store", store)
    first = center_process(_workdir(tmp_path, "a"), store=store)
    started.append(first.start())

    assert f"center.db is in use by another center (pid {first.pid})" in refused(*second_center, cwd=tmp_path)

    first.stop()
    second = center_process(_workdir(tmp_path, "b"), store=store)
    started.append(second.start())
    assert f"center.db is in use by another center (pid {second.pid})" in refused(*second_center, cwd=tmp_path)

    second.kill()
    third = center_process(_workdir(tmp_path, "c"), store=store)
    started.append(third.start())
    assert _health(third.address) == health_pb2.HealthCheckResponse.SERVING


def test_a_second_center_on_a_symlink_to_a_taken_sqlite_file_is_refused(
    tmp_path: Path, started: list[ServerProcess]
) -> None:
    """Another name for the same file (here a symlink in another folder) is the same store."""
    first = center_process(_workdir(tmp_path, "a"))
    started.append(first.start())
    alias = _workdir(tmp_path, "b") / "center.db"
    alias.symlink_to(tmp_path / "a" / "center.db")

    line = refused("center", "serve", "--listen", "127.0.0.1:0", "--store", f"sqlite:///{alias}", cwd=tmp_path)

    assert f"is in use by another center (pid {first.pid})" in line


def test_a_second_center_on_a_taken_metrics_port_is_refused(tmp_path: Path, started: list[ServerProcess]) -> None:
    first = center_process(_workdir(tmp_path, "a"), "--metrics-listen", "127.0.0.1:0")
    started.append(first.start())
    taken = f"127.0.0.1:{first.metrics_port}"

    line = refused("center", "serve", "--listen", "127.0.0.1:0", "--metrics-listen", taken, cwd=tmp_path)

    assert f"cannot serve metrics on {taken}: the port is in use" in line


@pytest.fixture
async def admin(started: list[ServerProcess], tmp_path: Path) -> AsyncIterator[center_grpc.PromotionAdminAsyncStub]:
    """A center (the first of `started`) selling promotion "promo" in eu, with leases of one second."""
    # A short lease: an agent of a region that has one waits out at most one before it may join.
    center = center_process(_workdir(tmp_path, "center"), "--lease-ttl", "1")
    started.append(center.start())
    async with grpc.aio.insecure_channel(center.address) as channel:
        stub = center_grpc.PromotionAdminStub(channel)
        await stub.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion(budget=1_000)))
        yield stub


async def test_a_second_agent_on_a_taken_port_is_refused_before_it_joins_the_region(
    tmp_path: Path, started: list[ServerProcess], admin: center_grpc.PromotionAdminAsyncStub
) -> None:
    center = started[0]
    first = agent_process(_workdir(tmp_path, "a"), "eu", center.address, *FAST)
    started.append(first.start())

    line = refused(
        "agent", "serve", "--region", "eu", "--listen", first.address, "--center", center.address, cwd=tmp_path
    )

    assert f"cannot listen on {first.address}: the port is in use" in line
    # Had the second one joined the region, the center would have written the first one's holdings off.
    async with grpc.aio.insecure_channel(first.address) as channel:
        answer = await agent_grpc.RegionAgentStub(channel).Deduct(order("after", "eu", ("promo", 1)), timeout=5)
    assert not answer.replayed


async def test_a_second_agent_of_a_served_region_on_another_ledger_is_refused_and_the_first_serves_on(
    tmp_path: Path, started: list[ServerProcess], admin: center_grpc.PromotionAdminAsyncStub
) -> None:
    """An agent started without the region's --ledger (so on an in-process one): had it joined, the center
    would have written off what the serving agent holds, and that one would have stopped."""
    center = started[0]
    first = agent_process(_workdir(tmp_path, "a"), "eu", center.address, *FAST)
    started.append(first.start())

    second = run_quota(
        "agent", "serve", "--region", "eu", "--listen", "127.0.0.1:0", "--center", center.address, cwd=tmp_path
    )

    assert second.returncode == 2, second.stderr
    waited, line = second.stderr.splitlines()
    assert "waiting" in waited
    assert line.startswith("quota: error: this agent cannot join: region eu is served by another agent")
    assert "give this one the region's --ledger" in line
    async with grpc.aio.insecure_channel(first.address) as channel:
        answer = await agent_grpc.RegionAgentStub(channel).Deduct(order("after", "eu", ("promo", 1)), timeout=5)
    assert not answer.replayed
    assert first.alive


async def test_an_agent_cut_off_for_a_lease_and_replaced_stops_serving_and_says_why(
    tmp_path: Path, started: list[ServerProcess], admin: center_grpc.PromotionAdminAsyncStub
) -> None:
    center = started[0]
    first = agent_process(_workdir(tmp_path, "a"), "eu", center.address, *FAST)
    started.append(first.start())
    async with grpc.aio.insecure_channel(first.address) as channel:
        await agent_grpc.RegionAgentStub(channel).Deduct(order("before", "eu", ("promo", 1)), timeout=5)
    os.kill(first.pid, signal.SIGSTOP)  # renews no more: to the center, as good as gone

    second = agent_process(_workdir(tmp_path, "b"), "eu", center.address, *FAST)
    started.append(second.start())  # once the first one's lease ran out
    async with grpc.aio.insecure_channel(second.address) as second_channel:
        # Its acquire admits the new incarnation: the center writes the first one off.
        await agent_grpc.RegionAgentStub(second_channel).Deduct(order("after", "eu", ("promo", 1)), timeout=5)
    os.kill(first.pid, signal.SIGCONT)
    status = first.wait()

    assert status == EXIT_RETIRED
    why = [line for line in first.log_path.read_text().splitlines() if "this process stops" in line]
    assert len(why) == 1
    assert "replaced this one" in why[0]
    assert "run one agent per region on the in-process ledger, or use Redis" in why[0]
