"""The seeds' third incident replayed against running processes: a flash price typed one zero short.

A 999.00 item meant to sell at 999.00 less 99.90 goes on sale at 99.90 (a discount of 899.10). The
promotion's floor is half the unit price. With the center stopped, the region's agent still refuses every
such line of a promotion that blocks, and lets one through, counted, where the promotion only alerts; on
the in-process ledger and on the region's Redis alike, since both sit behind the same agent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_testing.launch import agent_process, center_process
from quota_testing.servers import redis_server
from quota_testing.support import eventually, promotion, reject_reason
from region_agent.v1 import region_agent_pb2 as agent_pb
from tests.e2e.test_promotion_cache import admin_of, orders_of, status

pytestmark = pytest.mark.e2e

UNIT_PRICE, MEANT_DISCOUNT, TYPED_DISCOUNT = 99_900, 9_990, 89_910


def _flash(promotion_id: str, block: bool) -> center_pb.Promotion:
    message = promotion(promotion_id, regions=("eu",))
    message.floor_bps = 5_000
    message.block_below_floor = block
    return message


def _sale(order_key: str, promotion_id: str, discount: int) -> agent_pb.DeductRequest:
    line = agent_pb.Line(promotion_id=promotion_id, amount=1, user_id="buyer", unit_price=UNIT_PRICE, discount=discount)
    return agent_pb.DeductRequest(order_key=order_key, region="eu", lines=[line])


@pytest.fixture(params=["in-process", "redis"])
def ledger(request: pytest.FixtureRequest) -> Iterator[tuple[str, ...]]:
    if request.param == "in-process":
        yield ()
        return
    with redis_server() as redis:
        yield ("--ledger", f"redis://{redis.address}/0")


async def test_a_flash_price_one_zero_short_is_refused_or_counted_with_the_center_down(
    tmp_path: Path, ledger: tuple[str, ...]
) -> None:
    center = center_process(tmp_path).start()
    agent = agent_process(tmp_path, "eu", center.address, "--renew-interval", "0.2", *ledger).start()
    try:
        async with admin_of(center) as admin:
            for promotion_id, block in (("blocked", True), ("alerted", False)):
                await admin.CreatePromotion(
                    center_pb.CreatePromotionRequest(promotion=_flash(promotion_id, block)), timeout=5
                )
        async with orders_of(agent) as orders:
            for promotion_id in ("blocked", "alerted"):  # sales at the meant price: the region holds quota
                await orders.Deduct(_sale(f"fair-{promotion_id}", promotion_id, MEANT_DISCOUNT), timeout=5)

            async def holding() -> bool:
                return all(b.available >= 2 for b in (await status(orders)).balances)

            await eventually(holding)
            center.kill()
            before = {b.promotion_id: b for b in (await status(orders)).balances}

            refusals = []
            for attempt in range(2):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await orders.Deduct(_sale(f"typo-{attempt}", "blocked", TYPED_DISCOUNT), timeout=5)
                refusals.append(refused.value)
            let_through = await orders.Deduct(_sale("typo-alerted", "alerted", TYPED_DISCOUNT), timeout=5)
            after = {b.promotion_id: b for b in (await status(orders)).balances}
    finally:
        agent.kill()
        center.kill()

    for error in refusals:
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reject_reason(error) == "REJECT_REASON_BELOW_FLOOR"
        assert "promotion blocked sells a unit at 9990" in (error.details() or "")
        assert "below its floor of 49950" in (error.details() or "")
    assert not let_through.replayed
    assert after["blocked"].deducted == before["blocked"].deducted
    assert after["alerted"].deducted == before["alerted"].deducted + 1
    assert (after["blocked"].below_floor, after["alerted"].below_floor) == (2, 1)
    assert (
        "order 'typo-alerted' let through: promotion alerted sells a unit at 9990"
        in (tmp_path / "agent-eu.log").read_text()
    )
    given_away = TYPED_DISCOUNT - MEANT_DISCOUNT
    print(
        f"flash price one zero short, center down: {len(refusals)} lines refused by the agent, "
        f"{given_away * len(refusals):,} minor units of discount not given away ({given_away:,} per unit); "
        f"{after['alerted'].below_floor} line let through and counted for the alert"
    )
