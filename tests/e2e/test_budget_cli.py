"""`quota budget ...` as a budget owner runs it: a process against a real center and two agents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_common.errors import LEADER_METADATA_KEY, REJECT_REASON_METADATA_KEY, NotLeader, trailing
from quota_testing.launch import ServerProcess, agent_process, center_process
from quota_testing.servers import free_port
from quota_testing.support import order, promotion
from region_agent.v1 import region_agent_pb2 as agent_pb
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc

pytestmark = pytest.mark.e2e

REGIONS = ("eu", "us")
T = TypeVar("T")


@dataclass
class Stack:
    center: ServerProcess
    agents: dict[str, ServerProcess]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("budget-cli")
    center = center_process(workdir).start()
    agents: dict[str, ServerProcess] = {}
    try:
        for region in REGIONS:
            agents[region] = agent_process(workdir, region, center.address, "--renew-interval", "0.2").start()
        yield Stack(center, agents)
    finally:
        for process in [*agents.values(), center]:
            process.kill()


def run_budget(center: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a separate process, addressed through QUOTA_CENTER, without a terminal."""
    return subprocess.run(
        [sys.executable, "-m", "quota_cli", "budget", *args],
        env={**os.environ, "QUOTA_CENTER": center, "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=30,
    )


def succeeds(center: str, *args: str) -> Any:
    """Runs a --json command, which must exit 0, and returns what it printed."""
    done = run_budget(center, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def refused(center: str, *args: str) -> str:
    """Runs a command the center must refuse (exit 3); returns its stderr."""
    done = run_budget(center, *args)
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert done.stderr.startswith("error: ")
    return done.stderr


def deduct(agent: ServerProcess, region: str, order_key: str, promotion_id: str, amount: int) -> None:
    with grpc.insecure_channel(agent.address) as channel:
        agent_grpc.RegionAgentStub(channel).Deduct(order(order_key, region, (promotion_id, amount)), timeout=5)


def refusal_of(agent: ServerProcess, region: str, order_key: str, promotion_id: str, amount: int = 1) -> str:
    """What the agent answers to an order (one unit unless told): "ok", or its status and reject reason."""
    try:
        deduct(agent, region, order_key, promotion_id, amount)
    except grpc.RpcError as error:
        if not isinstance(error, grpc.Call):
            raise
        return f"{error.code().name} {trailing(error, REJECT_REASON_METADATA_KEY)}"
    return "ok"


def wait_for(check: Callable[[], T], what: str, timeout_s: float = 30.0) -> T:
    """Polls `check()` until it returns something truthy, which it returns; `timeout_s` only bounds a hang."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"not reached within {timeout_s} s: {what}")


def no_floats(value: Any) -> bool:
    if isinstance(value, dict):
        return all(no_floats(item) for item in value.values())
    if isinstance(value, list):
        return all(no_floats(item) for item in value)
    return not isinstance(value, float)


def test_usage_shows_what_each_region_spent(stack: Stack) -> None:
    center = stack.center.address
    created = succeeds(center, "create", "sale", "--budget", "1000", "--regions", "eu,us")
    assert created["budget"] == 1000
    assert created["regions"] == ["eu", "us"]
    assert created["frozen"] is False
    sold = {"eu": [3, 4, 5], "us": [2, 7]}
    for region, amounts in sold.items():
        for number, amount in enumerate(amounts):
            deduct(stack.agents[region], region, f"sale-{region}-{number}", "sale", amount)

    def reported() -> Any:
        usage = succeeds(center, "usage", "sale")
        spent = {region["region"]: region["spent"] for region in usage["regions"]}
        return usage if spent == {region: sum(amounts) for region, amounts in sold.items()} else None

    usage = wait_for(reported, "both regions' renewals report their sales")

    assert set(usage) == {"promotion", "budget", "unallocated", "regions"}
    assert no_floats(usage)
    assert usage["budget"] == usage["promotion"]["budget"] == 1000
    regions = {region["region"]: region for region in usage["regions"]}
    assert list(regions) == list(REGIONS)
    for region in regions.values():
        assert region["held"] == region["granted"] - region["returned"] - region["spent"] - region["written_off"]
        assert region["held"] >= 0
        assert region["lease_state"] == "active"
        assert region["burn_per_minute"] > 0
    assert usage["unallocated"] == 1000 - sum(region["granted"] - region["returned"] for region in regions.values())

    table = run_budget(center, "usage", "sale")
    assert table.returncode == 0, table.stderr
    rows = {cells[0]: cells[1:] for cells in _table_rows(table.stdout)}
    assert set(rows) == {*REGIONS, "total"}
    for region, amounts in sold.items():
        granted, spent, returned, held, written_off = (int(cell.replace(",", "")) for cell in rows[region][:5])
        assert spent == sum(amounts)
        assert held == granted - returned - spent - written_off
        assert rows[region][5] == "active"
        assert rows[region][7].endswith(f"{sum(amounts) / 1000:.1%}")
    assert rows["total"][1] == "21"
    assert "budget 1,000" in table.stdout
    assert "spent 21" in table.stdout
    assert "not frozen" in table.stdout


def _table_rows(rendered: str) -> list[list[str]]:
    """The body and footer rows of a Rich table, as lists of stripped cells."""
    return [[cell.strip() for cell in line.strip("│ ").split("│")] for line in rendered.splitlines() if "│" in line]


@pytest.mark.parametrize(
    "command", ["usage no-such-sale", "show no-such-sale", "freeze no-such-sale", "set-budget no-such-sale 5"]
)
def test_an_unknown_promotion_is_named(stack: Stack, command: str) -> None:
    stderr = refused(stack.center.address, *command.split())
    assert "no-such-sale" in stderr
    assert "(NOT_FOUND)" in stderr


def test_set_budget_is_compare_and_set(stack: Stack) -> None:
    center = stack.center.address
    succeeds(center, "create", "cas", "--budget", "100", "--regions", "eu")
    deduct(stack.agents["eu"], "eu", "cas-1", "cas", 5)

    below_held = refused(center, "set-budget", "cas", "1")
    assert "(FAILED_PRECONDITION)" in below_held
    assert "re-read" in below_held

    read = succeeds(center, "show", "cas")
    changed = succeeds(center, "set-budget", "cas", "200")
    assert changed["budget"] == 200
    assert changed["revision"] > read["revision"]

    stale = refused(center, "set-budget", "cas", "300", "--expected-revision", str(read["revision"]))
    assert "(FAILED_PRECONDITION)" in stale
    assert f"not {read['revision']}" in stale
    assert succeeds(center, "show", "cas")["budget"] == 200


def test_freeze_stops_sales_until_unfreeze(stack: Stack) -> None:
    center, eu = stack.center.address, stack.agents["eu"]
    succeeds(center, "create", "kill-switch", "--budget", "100", "--regions", "eu,us")
    assert refusal_of(eu, "eu", "ks-0", "kill-switch") == "ok"

    assert succeeds(center, "freeze", "kill-switch")["frozen"] is True
    orders = iter(range(1, 1000))
    wait_for(
        lambda: refusal_of(eu, "eu", f"ks-{next(orders)}", "kill-switch") == "FAILED_PRECONDITION REJECT_REASON_FROZEN",
        "the agent refuses the frozen promotion",
    )

    assert succeeds(center, "unfreeze", "kill-switch")["frozen"] is False
    wait_for(lambda: refusal_of(eu, "eu", f"ks-{next(orders)}", "kill-switch") == "ok", "the agent sells again")


def test_the_emergency_switch_stops_one_region_and_each_change_is_in_the_audit_trail(stack: Stack) -> None:
    center, eu, us = stack.center.address, stack.agents["eu"], stack.agents["us"]
    succeeds(center, "create", "switched", "--budget", "100", "--regions", "eu,us", "--request-id", "CHG-1")
    orders = iter(range(1000))
    try:
        assert succeeds(center, "emergency", "freeze", "--region", "eu", "--request-id", "INC-7")["regions"] == ["eu"]
        wait_for(
            lambda: (
                refusal_of(eu, "eu", f"sw-{next(orders)}", "switched") == "FAILED_PRECONDITION REJECT_REASON_FROZEN"
            ),
            "eu refuses every promotion",
        )
        assert refusal_of(us, "us", f"sw-{next(orders)}", "switched") == "ok"
    finally:
        assert succeeds(center, "emergency", "unfreeze", "--region", "eu")["regions"] == []
    wait_for(lambda: refusal_of(eu, "eu", f"sw-{next(orders)}", "switched") == "ok", "eu sells again")

    records = succeeds(center, "audit")["records"]
    created = [r for r in records if r["promotion_id"] == "switched"]
    switched = [r for r in records if r["call"] == "SetEmergencyFreeze"][-2:]
    assert [(r["call"], r["request_id"], r["before"]) for r in created] == [("CreatePromotion", "CHG-1", None)]
    assert [(r["request_id"], r["after"]["regions"]) for r in switched] == [
        ("INC-7", ["eu"]),
        (switched[1]["request_id"], []),
    ]
    assert all(r["actor"].startswith("plaintext caller") for r in [*created, *switched])
    verified = run_budget(center, "audit", "--verify")
    assert verified.returncode == 0, verified.stderr
    assert verified.stderr.startswith(f"verified: {len(records)} records intact and chained")


def test_an_unreachable_center_names_every_address_tried() -> None:
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    done = run_budget("unused:1", "--center", ",".join(dead), "list")
    assert done.returncode == 4, done.stderr
    for address in dead:
        assert address in done.stderr
    assert "quota center serve" in done.stderr


class Standby(grpc.GenericRpcHandler):
    """A center replica that does not lead: every call is UNAVAILABLE, naming the leader if it knows one."""

    def __init__(self, leader: str) -> None:
        self.leader = leader

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes]:
        return grpc.unary_unary_rpc_method_handler(self._refuse)

    def _refuse(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        if self.leader:
            context.set_trailing_metadata(((LEADER_METADATA_KEY, self.leader),))
        context.abort(grpc.StatusCode.UNAVAILABLE, NotLeader(self.leader or None).message)


def serve_standby(leader: str) -> tuple[grpc.Server, str]:
    server = grpc.server(ThreadPoolExecutor(max_workers=2), handlers=[Standby(leader)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def test_the_leader_answers_whichever_replica_is_named_first(stack: Stack) -> None:
    leader = stack.center.address
    pointing, pointing_address = serve_standby(leader)
    lost, lost_address = serve_standby("")
    try:
        for addresses in (f"127.0.0.1:{free_port()},{leader}", pointing_address, f"{lost_address},{pointing_address}"):
            assert "promotions" in succeeds(addresses, "list"), addresses

        done = run_budget(lost_address, "list")
        assert done.returncode == 4, done.stderr
        assert f"{lost_address}: this center replica is not the leader" in done.stderr
    finally:
        pointing.stop(0)
        lost.stop(0)


def test_a_bad_field_is_refused_by_the_center_and_bad_usage_by_the_cli(stack: Stack) -> None:
    center = stack.center.address
    no_currency = refused(center, "create", "bad", "--budget", "10", "--regions", "eu", "--kind", "amount")
    assert "(INVALID_ARGUMENT)" in no_currency
    assert "currency" in no_currency
    backwards = refused(
        center, "create", "bad", "--budget", "10", "--regions", "eu", "--start", "2030-01-02", "--end", "2030-01-01"
    )
    assert "(INVALID_ARGUMENT)" in backwards
    assert "end_time" in backwards
    assert run_budget(center, "create", "bad", "--budget", "0", "--regions", "eu").returncode == 2
    assert "(NOT_FOUND)" in refused(center, "show", "bad")


def test_list_shows_every_promotion_however_many_pages_they_take(tmp_path: Path) -> None:
    # 34 promotions naming 1000 regions of 128 bytes each: about 4.4 MB, more than one gRPC message may carry.
    regions = tuple(f"region-{index:04d}-".ljust(128, "x") for index in range(1000))
    ids = [f"wide-{index:02d}" for index in range(34)]
    center = center_process(tmp_path).start()
    try:
        with grpc.insecure_channel(center.address) as channel:
            admin = center_grpc.PromotionAdminStub(channel)
            for promotion_id in ids:
                admin.CreatePromotion(
                    center_pb.CreatePromotionRequest(promotion=promotion(promotion_id, regions=regions)), timeout=5
                )

        listed = succeeds(center.address, "list")
    finally:
        center.kill()

    assert [p["id"] for p in listed["promotions"]] == ids
    assert all(len(p["regions"]) == 1000 for p in listed["promotions"])


def test_create_states_what_a_unit_is_worth_and_show_prints_it(stack: Stack) -> None:
    center = stack.center.address
    values = ("--face-value", "10000", "--min-spend", "20000", "--max-per-order", "2")
    created = succeeds(center, "create", "valued", "--budget", "50", "--regions", "eu", *values)
    assert (created["face_value"], created["min_spend"], created["discount_bps"], created["max_per_order"]) == (
        10_000,
        20_000,
        0,
        2,
    )
    shown = run_budget(center, "show", "valued")
    assert "face value 10,000, from an order of 20,000, at most 2 per order" in shown.stdout
    assert "none recorded (created without TLS)" in shown.stdout
    refused_bps = run_budget(center, "create", "pct", "--budget", "5", "--regions", "eu", "--discount-bps", "10001")
    assert refused_bps.returncode == 2


def test_a_change_the_guard_rules_warn_about_is_made_and_the_answer_names_the_rule(stack: Stack) -> None:
    center = stack.center.address
    in_40_days = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 40 * 86_400))
    done = run_budget(center, "create", "long-sale", "--budget", "10", "--regions", "eu", "--end", in_40_days)

    assert done.returncode == 0, done.stderr
    assert "created" in done.stdout
    assert "warning: the guard rules flagged this change: window-over-31-days" in done.stderr
    again = run_budget(center, "set-budget", "long-sale", "20")
    assert again.returncode == 0, again.stderr
    assert "window-over-31-days" in again.stderr  # the window is still over 31 days: every change is judged whole
    in_50_days = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 50 * 86_400))
    longer = run_budget(center, "update", "long-sale", "--end", in_50_days)
    assert longer.returncode == 0, longer.stderr
    assert "warning: the guard rules flagged this change: window-over-31-days" in longer.stderr


def _region(center: str, promotion_id: str, region: str) -> dict[str, Any]:
    [found] = [row for row in succeeds(center, "usage", promotion_id)["regions"] if row["region"] == region]
    return found  # type: ignore[no-any-return]


def test_update_changes_what_agents_enforce_and_a_region_removed_gives_back(stack: Stack) -> None:
    center, eu, us = stack.center.address, stack.agents["eu"], stack.agents["us"]
    succeeds(center, "create", "life", "--budget", "1000", "--regions", "eu,us")
    deduct(us, "us", "life-us-0", "life", 2)
    assert refusal_of(eu, "eu", "life-eu-0", "life", 3) == "ok"

    changed = run_budget(center, "update", "life", "--max-per-order", "2", "--per-user-orders", "5")
    assert changed.returncode == 0, changed.stderr
    assert "max_per_order 0 -> 2" in changed.stdout
    assert "per_user_orders 0 -> 5" in changed.stdout
    orders = iter(range(1, 1000))
    wait_for(
        lambda: refusal_of(eu, "eu", f"life-eu-{next(orders)}", "life", 3).endswith("REJECT_REASON_OVER_ORDER_LIMIT"),
        "the agent refuses a line above the new max_per_order, without a restart",
    )

    assert succeeds(center, "update", "life", "--regions", "eu")["regions"] == ["eu"]
    wait_for(
        lambda: refusal_of(us, "us", f"life-us-{next(orders)}", "life").endswith("REJECT_REASON_REGION_NOT_ALLOWED"),
        "the removed region refuses the promotion",
    )
    us_usage = wait_for(
        lambda: (row := _region(center, "life", "us"))["held"] == 0 and row["returned"] > 0 and row,
        "the removed region gives back what it held",
    )
    assert us_usage["spent"] == 2
    assert refusal_of(eu, "eu", f"life-eu-{next(orders)}", "life") == "ok"

    stale = refused(center, "update", "life", "--per-user-limit", "3", "--expected-revision", "1")
    assert "read it again" in stale


def test_end_stops_sales_honours_refunds_and_regions_give_back(stack: Stack) -> None:
    center, eu = stack.center.address, stack.agents["eu"]
    succeeds(center, "create", "ending", "--budget", "500", "--regions", "eu,us")
    deduct(eu, "eu", "ending-0", "ending", 5)

    ended = run_budget(center, "end", "ending")

    assert ended.returncode == 0, ended.stderr
    assert "ended at" in ended.stdout
    orders = iter(range(1, 1000))
    wait_for(
        lambda: refusal_of(eu, "eu", f"ending-{next(orders)}", "ending").endswith("REJECT_REASON_NOT_ACTIVE"),
        "the agent refuses the ended promotion",
    )
    refund = agent_pb.RefundRequest(
        order_key="ending-0", refund_id="late", lines=[agent_pb.RefundLine(promotion_id="ending", amount=2)]
    )
    with grpc.insecure_channel(eu.address) as channel:
        agent_grpc.RegionAgentStub(channel).Refund(refund, timeout=5)
    settled = wait_for(
        lambda: (row := _region(center, "ending", "eu"))["held"] == 0 and row["spent"] == 3 and row,
        "the region gives back all it holds, the refunded units too",
    )
    assert settled["granted"] - settled["returned"] == 3
    assert succeeds(center, "usage", "ending")["unallocated"] == 497


def test_create_sets_a_price_floor_and_show_prints_it(stack: Stack) -> None:
    center = stack.center.address
    floor = ("--floor-price", "1000", "--floor-bps", "5000", "--block-below-floor")
    created = succeeds(center, "create", "floored", "--budget", "50", "--regions", "eu", *floor)
    assert (created["floor_price"], created["floor_bps"], created["block_below_floor"]) == (1_000, 5_000, True)
    shown = run_budget(center, "show", "floored")
    assert "a unit sells for at least 1,000 and 50.00 % of its price (refused below)" in shown.stdout
    refused_bps = run_budget(center, "create", "over", "--budget", "5", "--regions", "eu", "--floor-bps", "10001")
    assert refused_bps.returncode == 2


def test_a_held_create_says_it_waits_for_an_approver_and_not_to_send_it_again(stack: Stack) -> None:
    done = run_budget(
        stack.center.address, "create", "free-100", "--budget", "10", "--regions", "eu", "--face-value", "10000"
    )

    assert done.returncode == 3, done.stdout
    assert done.stderr.startswith(
        "held for approval: CreatePromotion of free-100 is held for approval as pending change P-"
    )
    assert "zero-threshold-no-user-limit" in done.stderr
    assert "Sending the change again only books another pending change" in done.stderr
    assert "retry" not in done.stderr
