"""Reading an order (`get_order`) under the Ledger contract, on every implementation: it answers what
became of the order and changes nothing. Deadlines are real (Redis's clock, or this process's)."""

from __future__ import annotations

import time
import uuid

import pytest
import redis.asyncio as redis

from quota_common.errors import PermissionDenied
from quota_common.incarnation import new_incarnation
from quota_testing.servers import RunningServer
from region_agent.ledger.base import (
    CANCELLED,
    CONFIRMED,
    DEDUCTED,
    EXPIRED,
    RESERVED,
    Balance,
    Joined,
    Ledger,
    Line,
    OrderView,
    Settle,
)
from region_agent.ledger.memory import InProcessLedger
from region_agent.ledger.redis import RedisLedger
from tests.contract.conftest import funded
from tests.contract.test_reservation_contract import HOUR_MS, SHORT_MS, lapse

LINES = (Line("a", 3, "u1", unit_price=1_000, discount=100), Line("b", 2, "u1"))
PLACER = "spiffe://quota.test/region/eu/orders"


async def test_an_order_never_placed_reads_as_none(ledger: Ledger) -> None:
    assert await ledger.get_order("never") is None


async def test_a_deduction_reads_as_placed_with_its_refunds_so_far(ledger: Ledger) -> None:
    await funded(ledger)
    await ledger.deduct("o1", LINES, placer=PLACER)
    assert await ledger.get_order("o1", PLACER) == OrderView(DEDUCTED, LINES)

    await ledger.refund("o1", "r1", (Line("a", 1),), PLACER)
    await ledger.refund("o1", "r2", (Line("a", 1), Line("b", 2)), PLACER)

    assert await ledger.get_order("o1", PLACER) == OrderView(DEDUCTED, LINES, refunded=(Line("a", 2), Line("b", 2)))


async def test_each_end_of_a_reservation_reads_as_such(ledger: Ledger) -> None:
    await funded(ledger)
    held = await ledger.deduct("held", LINES, hold_ms=HOUR_MS)
    for key, how in (("confirmed", Settle.CONFIRM), ("cancelled", Settle.CANCEL)):
        await ledger.deduct(key, LINES, hold_ms=HOUR_MS)
        await ledger.settle(key, how)
    await ledger.refund("confirmed", "r1", (Line("b", 1),))

    assert await ledger.get_order("held") == OrderView(RESERVED, LINES, held.expires_at_ms)
    confirmed = await ledger.get_order("confirmed")
    assert confirmed == OrderView(CONFIRMED, LINES, confirmed.expires_at_ms if confirmed else 0, (Line("b", 1),))
    assert await _state(ledger, "cancelled") == CANCELLED


async def test_a_lapsed_reservation_reads_expired_before_and_after_the_sweep(ledger: Ledger) -> None:
    await funded(ledger)
    await ledger.deduct("o1", LINES, hold_ms=SHORT_MS)
    await lapse()

    assert await _state(ledger, "o1") == EXPIRED
    # The read released nothing: the sweep still finds the hold to release.
    assert (await ledger.balance("a")).held == 3
    assert await ledger.expire_reservations() == 1
    assert await _state(ledger, "o1") == EXPIRED


async def test_reading_a_reservation_neither_extends_nor_creates_it(ledger: Ledger) -> None:
    await funded(ledger)
    held = await ledger.deduct("o1", LINES, hold_ms=HOUR_MS)

    for _ in range(3):
        assert await ledger.get_order("o1") == OrderView(RESERVED, LINES, held.expires_at_ms)
        assert await ledger.get_order("o2") is None

    assert await ledger.balance("a") == Balance(granted=10, held=3)
    assert (await ledger.deduct("o1", LINES, hold_ms=HOUR_MS)).expires_at_ms == held.expires_at_ms
    # Never placed, so a first Reserve of it is a new order, not a replay of the reads.
    assert not (await ledger.deduct("o2", LINES, hold_ms=HOUR_MS)).replayed


async def test_only_the_placer_may_read_an_order(ledger: Ledger) -> None:
    await funded(ledger)
    await ledger.deduct("o1", LINES, placer=PLACER)

    for other in ("spiffe://quota.test/region/eu/other-orders", ""):
        with pytest.raises(PermissionDenied, match="only the identity that placed"):
            await ledger.get_order("o1", other)


async def test_without_the_centers_word_an_in_process_ledger_says_an_earlier_life_may_be_lost(
    ledger: Ledger,
) -> None:
    # It begins with its process and cannot know whether one before it held orders; a region's Redis can.
    assert await ledger.life_lost() is not ledger.outlives_agent


@pytest.mark.parametrize("after_earlier_life", [False, True], ids=["first-life", "after-an-earlier-life"])
async def test_a_ledger_says_what_the_center_said_of_earlier_lives_at_its_join(
    redis_address: RunningServer, after_earlier_life: bool
) -> None:
    client = redis.Redis(host=redis_address.host, port=redis_address.port)
    on_redis = RedisLedger(client, f"test-{uuid.uuid4().hex}")
    ledgers: list[Ledger] = [InProcessLedger(), on_redis]

    async def join(replaces: str) -> Joined:
        return Joined(new_incarnation(time.time_ns()), after_earlier_life)

    try:
        for ledger in ledgers:
            await ledger.incarnation(join)

        assert [await ledger.life_lost() for ledger in ledgers] == [after_earlier_life, after_earlier_life]
    finally:
        await on_redis.aclose()
        await client.aclose()


async def test_a_redis_life_after_a_loss_says_so_to_every_agent(redis_address: RunningServer) -> None:
    client = redis.Redis(host=redis_address.host, port=redis_address.port)
    region = f"test-{uuid.uuid4().hex}"
    agent, later_agent = RedisLedger(client, region), RedisLedger(client, region)
    try:
        await agent.incarnation()
        assert not await agent.life_lost()
        await client.delete(f"{{quota:{region}}}:incarnation")  # what a flushed Redis looks like to the life

        await agent.incarnation()

        assert await agent.life_lost()
        await later_agent.incarnation()
        assert await later_agent.life_lost()
    finally:
        await agent.aclose()
        await later_agent.aclose()
        await client.aclose()


async def _state(ledger: Ledger, order_key: str) -> str | None:
    read = await ledger.get_order(order_key)
    return None if read is None else read.state
