"""The Ledger contract at the edges of the number range, on both ledgers: amounts up to MAX_AMOUNT,
cumulative counters past 2^53 (where Lua's doubles stop being exact) and up to the ceiling that keeps
them within an int64. Counters get there through real calls: cycles that spend and give back."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import pytest
import redis.asyncio as redis

from quota_common.errors import FailedPrecondition
from quota_common.validation import COUNTER_CEILING, MAX_AMOUNT, MAX_COUNTER
from quota_testing.servers import RunningServer
from region_agent.ledger.base import Balance, Ledger, Line, Settle
from region_agent.ledger.redis import RedisLedger

ORDER = 10**14 + 3
"""An order size whose running totals pass 2^53 after 93 deduct/refund cycles, on an odd number."""
HOUR_MS = 3_600_000
AT_THE_CEILING = "new incarnation"


def pieces(total: int) -> list[int]:
    """`total` in amounts of at most MAX_AMOUNT."""
    whole, rest = divmod(total, MAX_AMOUNT)
    return [MAX_AMOUNT] * whole + ([rest] if rest else [])


async def spend_and_refund(ledger: Ledger, promotion: str, amounts: Iterable[int]) -> None:
    """Deducts and fully refunds each amount: deducted and refunded grow, what is available does not."""
    for n, amount in enumerate(amounts):
        order_key = f"cycle-{uuid.uuid4().hex}-{n}"
        assert (await ledger.deduct(order_key, (Line(promotion, amount, "u1"),))).accepted
        await ledger.refund(order_key, "r", ())


async def grant_and_return(ledger: Ledger, promotion: str, amounts: Iterable[int], keep: int = 0) -> None:
    """Grants each amount and gives all but `keep` of it back: granted and returned grow."""
    for amount in amounts:
        await ledger.apply_grant(f"grant-{uuid.uuid4().hex}", promotion, amount, await ledger.incarnation())
        assert await ledger.return_quota(promotion, amount - keep) == amount - keep


async def fund_the_maximum_and_one(ledger: Ledger) -> None:
    """Room for the largest order beside an order of one unit."""
    for grant_id, amount in (("g1", MAX_AMOUNT), ("g2", 1)):
        await ledger.apply_grant(grant_id, "a", amount, await ledger.incarnation())


def test_a_counter_below_the_ceiling_has_room_in_an_int64_for_the_largest_amount() -> None:
    assert COUNTER_CEILING - 1 + MAX_AMOUNT <= MAX_COUNTER


# In doubles, the first came out one unit too many (an order beyond it was accepted), the second one too few.
@pytest.mark.parametrize("left", [ORDER, ORDER + 2])
async def test_what_is_left_stays_exact_after_counters_pass_2_to_the_53(ledger: Ledger, left: int) -> None:
    await ledger.apply_grant("g1", "a", left, await ledger.incarnation())
    await spend_and_refund(ledger, "a", [ORDER] * 93)

    refused = await ledger.deduct("beyond", (Line("a", left + 1, "u1"),))
    accepted = await ledger.deduct("all", (Line("a", left, "u1"),))

    assert refused.short == ("a",)
    assert accepted.available_after == (0,)
    spent = 93 * ORDER
    assert spent > 2**53
    assert await ledger.balance("a") == Balance(granted=left, deducted=spent + left, refunded=spent)


async def test_amounts_at_the_maximum_stay_exact_while_counters_cross_2_to_the_53(ledger: Ledger) -> None:
    life = await ledger.incarnation()
    await ledger.apply_grant("g1", "a", MAX_AMOUNT, life)
    assert (await ledger.deduct("o1", (Line("a", MAX_AMOUNT, "u1"),))).available_after == (0,)
    await ledger.refund("o1", "r1", ())
    assert (await ledger.deduct("o2", (Line("a", 2, "u1"),))).available_after == (MAX_AMOUNT - 2,)

    reserved = await ledger.deduct("o3", (Line("a", MAX_AMOUNT - 2, "u1"),), hold_ms=HOUR_MS)
    assert reserved.available_after == (0,)
    assert (await ledger.deduct("o4", (Line("a", 1, "u1"),))).short == ("a",)
    await ledger.settle("o3", Settle.CONFIRM)
    await ledger.refund("o3", "r3", ())
    assert await ledger.return_quota("a", MAX_AMOUNT) == MAX_AMOUNT - 2
    await ledger.apply_grant("g2", "a", MAX_AMOUNT, life)
    assert (await ledger.deduct("o5", (Line("a", MAX_AMOUNT, "u1"),))).available_after == (0,)

    assert await ledger.balance("a") == Balance(
        granted=2 * MAX_AMOUNT,
        returned=MAX_AMOUNT - 2,
        deducted=MAX_AMOUNT + 2 + (MAX_AMOUNT - 2) + MAX_AMOUNT,
        refunded=MAX_AMOUNT + (MAX_AMOUNT - 2),
    )


async def test_deducted_and_refunded_take_the_largest_amount_below_the_ceiling_and_nothing_at_it(
    ledger: Ledger,
) -> None:
    await fund_the_maximum_and_one(ledger)
    await ledger.deduct("kept", (Line("a", 1, "u1"),))
    await spend_and_refund(ledger, "a", pieces(COUNTER_CEILING - 2))
    assert (await ledger.balance("a")).deducted == COUNTER_CEILING - 1

    await spend_and_refund(ledger, "a", [MAX_AMOUNT])
    before = await ledger.balances()

    for refused in (
        ledger.deduct("more", (Line("a", 1, "u1"),)),
        ledger.deduct("held", (Line("a", 1, "u1"),), hold_ms=HOUR_MS),
        ledger.refund("kept", "r", ()),
        ledger.refund("kept", "r", ()),
    ):
        with pytest.raises(FailedPrecondition, match=AT_THE_CEILING):
            await refused
    assert await ledger.balances() == before
    assert await ledger.find_order("more", (Line("a", 1, "u1"),)) is None
    assert await ledger.return_quota("a", 1) == 1
    assert (await ledger.balance("a")).deducted == COUNTER_CEILING - 1 + MAX_AMOUNT


async def test_granted_and_returned_stop_at_the_ceiling_and_a_refused_grant_is_not_marked_applied(
    ledger: Ledger,
) -> None:
    grants = [*pieces(COUNTER_CEILING - 1), MAX_AMOUNT]
    await grant_and_return(ledger, "a", grants, keep=1)
    life = await ledger.incarnation()
    before = await ledger.balances()

    for refused in (ledger.apply_grant("g-next", "a", 5, life), ledger.apply_grant("g-next", "a", 5, life)):
        with pytest.raises(FailedPrecondition, match=AT_THE_CEILING):
            await refused
    with pytest.raises(FailedPrecondition, match=AT_THE_CEILING):
        await ledger.return_quota("a", 1)

    assert await ledger.balances() == before
    assert (await ledger.deduct("o1", (Line("a", 1, "u1"),))).available_after == (len(grants) - 1,)


async def test_a_reservation_held_when_deducted_reaches_the_ceiling_can_be_cancelled_not_confirmed(
    ledger: Ledger,
) -> None:
    await fund_the_maximum_and_one(ledger)
    await ledger.deduct("held", (Line("a", 1, "u1"),), hold_ms=HOUR_MS)
    await spend_and_refund(ledger, "a", pieces(COUNTER_CEILING))

    with pytest.raises(FailedPrecondition, match=AT_THE_CEILING):
        await ledger.settle("held", Settle.CONFIRM)
    await ledger.settle("held", Settle.CANCEL)

    assert (await ledger.balance("a")).available == MAX_AMOUNT + 1


async def test_a_balance_written_before_the_available_field_is_read_exactly(redis_address: RunningServer) -> None:
    client = redis.Redis(host=redis_address.host, port=redis_address.port)
    region = f"test-{uuid.uuid4().hex}"
    ledger = RedisLedger(client, region)
    life = await ledger.incarnation()
    old = {"granted": 2**53 - 1, "returned": 10, "deducted": 2**53 - 3, "refunded": 20, "held": 5}
    balance_key = f"{{quota:{region}}}:{life}:balance:a"
    for field, value in old.items():
        await client.hset(balance_key, field, value)
    await client.sadd(f"{{quota:{region}}}:{life}:promotions", "a")

    assert (await ledger.deduct("o1", (Line("a", 7, "u1"),))).available_after == (0,)
    assert (await ledger.deduct("o2", (Line("a", 1, "u1"),))).short == ("a",)
    await ledger.apply_grant("g1", "a", 4, life)

    balance = await ledger.balance("a")
    assert balance == Balance(granted=2**53 + 3, returned=10, deducted=2**53 + 4, refunded=20, held=5)
    assert int(await client.hget(balance_key, "available") or -1) == balance.available == 4
    await ledger.aclose()
    await client.aclose()
