"""Settlement against running processes (a center on SQLite, an agent on its in-process ledger), through the
real `quota budget` commands: a promotion ends, its region gives back what it holds, it settles once the
grace has passed, and its statement stays the same after a late refund (which the region and the center's
usage still honour) and after the center restarts. Then it is archived: listed only when asked for, still
answering its statement, and its region holds none of it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_testing.launch import ServerProcess, agent_process, center_process
from quota_testing.support import now_ms, promotion
from region_agent.v1 import region_agent_pb2 as agent_pb
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc
from tests.e2e.test_budget_cli import deduct, refusal_of, refused, run_budget, succeeds, wait_for

pytestmark = pytest.mark.e2e

GRACE = ("--settle-grace", "2")
SALE = "closing-sale"
ENDS_IN_MS = 4_000


@dataclass
class Running:
    workdir: Path
    center: ServerProcess
    agent: ServerProcess

    def restart_center(self) -> None:
        port = self.center.port
        self.center.stop()
        self.center = center_process(self.workdir, *GRACE, port=port).start()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    center = center_process(tmp_path, *GRACE).start()
    running = Running(tmp_path, center, center)
    try:
        running.agent = agent_process(tmp_path, "eu", center.address, "--renew-interval", "0.2").start()
        yield running
    finally:
        for process in (running.agent, running.center):
            process.kill()


def usage(center: ServerProcess) -> center_pb.RegionUsage:
    with grpc.insecure_channel(center.address) as channel:
        answer = center_grpc.PromotionAdminStub(channel).GetUsage(
            center_pb.GetUsageRequest(promotion_id=SALE), timeout=5
        )
    [eu] = [region for region in answer.regions if region.region == "eu"]
    return eu


def held_by_agent(agent: ServerProcess) -> agent_pb.PromotionBalance:
    with grpc.insecure_channel(agent.address) as channel:
        status = agent_grpc.RegionAgentStub(channel).GetStatus(agent_pb.GetStatusRequest(), timeout=5)
    return next(b for b in status.balances if b.promotion_id == SALE)


def refund(agent: ServerProcess, order_key: str) -> None:
    with grpc.insecure_channel(agent.address) as channel:
        agent_grpc.RegionAgentStub(channel).Refund(agent_pb.RefundRequest(order_key=order_key), timeout=5)


def sell_until_refused(agent: ServerProcess) -> int:
    """Sells one unit per order until the agent refuses (the sale ended); returns the units sold. Each order
    is a new one: a retried order would answer as the first time."""
    sold = 0

    def refused_now() -> bool:
        nonlocal sold
        if refusal_of(agent, "eu", f"probe-{sold}", SALE) != "ok":
            return True
        sold += 1
        return False

    wait_for(refused_now, "the sale ended")
    return sold


def statement(center: ServerProcess) -> Any:
    return succeeds(center.address, "statement", SALE)


def test_a_settled_statement_stays_the_same_after_a_late_refund_and_a_center_restart(running: Running) -> None:
    with grpc.insecure_channel(running.center.address) as channel:
        sale = promotion(SALE, budget=100, regions=("eu",), end_ms=now_ms() + ENDS_IN_MS)
        center_grpc.PromotionAdminStub(channel).CreatePromotion(center_pb.CreatePromotionRequest(promotion=sale))
    for number in range(3):
        deduct(running.agent, "eu", f"order-{number}", SALE, 5)
    assert statement(running.center)["state"] == "open"

    issued = 15 + sell_until_refused(running.agent)
    wait_for(lambda: usage(running.center).held == 0, "eu gave back what it held once the sale ended")
    final = wait_for(lambda: (answer := statement(running.center))["state"] == "settled" and answer, "settled")
    figures = ("budget", "issued", "refunded", "written_off", "stranded", "unspent")
    assert [final[figure] for figure in figures] == [100, issued, 0, 0, 0, 100 - issued]
    [eu] = final["regions"]
    assert (eu["region"], eu["issued"], eu["returned"] + eu["issued"]) == ("eu", issued, eu["granted"])

    refund(running.agent, "order-0")  # after settlement: honoured by the region, reported to the center
    wait_for(lambda: usage(running.center).consumed == issued - 5, "the center took in the late refund")
    assert held_by_agent(running.agent).refunded == 5
    assert statement(running.center) == final

    running.restart_center()
    assert wait_for(lambda: run_budget(running.center.address, "list").returncode == 0, "the center leads again")
    assert statement(running.center) == final
    table = run_budget(running.center.address, "statement", SALE).stdout
    assert "final, late refunds no longer change it" in table
    assert f"+ unspent {100 - issued}" in table

    archived = succeeds(running.center.address, "archive", SALE)
    assert archived["archived"] is True
    assert succeeds(running.center.address, "archive", SALE) == archived  # archiving twice changes nothing
    assert SALE not in [p["id"] for p in succeeds(running.center.address, "list")["promotions"]]
    assert SALE in [p["id"] for p in succeeds(running.center.address, "list", "--archived")["promotions"]]
    assert statement(running.center) == final
    assert "NOT_ACTIVE" in refusal_of(running.agent, "eu", "after-the-archive", SALE)
    wait_for(lambda: held_by_agent(running.agent).available == 0, "eu holds nothing of an archived promotion")


def test_a_promotion_is_archived_only_once_settled(running: Running) -> None:
    with grpc.insecure_channel(running.center.address) as channel:
        sale = promotion(SALE, budget=100, regions=("eu",))
        center_grpc.PromotionAdminStub(channel).CreatePromotion(center_pb.CreatePromotionRequest(promotion=sale))

    message = refused(running.center.address, "archive", SALE)

    assert "is not settled, so it cannot be archived yet" in message
    assert "FAILED_PRECONDITION" in message
    assert succeeds(running.center.address, "show", SALE)["archived"] is False
