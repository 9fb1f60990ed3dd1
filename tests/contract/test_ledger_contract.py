"""The regional Ledger contract (region_agent/ledger/base.py), run against every implementation:
the in-process ledger and the Redis ledger on a real redis-server on a free loopback port.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as redis

from quota_common.errors import FailedPrecondition, InvalidArgument, LedgerLost, NotFound
from quota_common.validation import MAX_AMOUNT
from quota_testing.servers import RunningServer
from region_agent.ledger.base import Balance, Ledger, Line, Settle, UserLimit
from region_agent.ledger.memory import InProcessLedger
from region_agent.ledger.redis import RedisLedger
from tests.contract.conftest import funded, remembering_for

A, B = Line("a", 3, "u1"), Line("b", 2, "u1")


async def test_a_grant_applies_once_by_id(ledger: Ledger) -> None:
    assert await ledger.apply_grant("g1", "a", 5, await ledger.incarnation()) is True
    assert await ledger.apply_grant("g1", "a", 5, await ledger.incarnation()) is False
    assert await ledger.balance("a") == Balance(granted=5)


async def test_an_order_takes_every_line_or_none(ledger: Ledger) -> None:
    await funded(ledger, a=10, b=1)

    refused = await ledger.deduct("o1", (A, B))

    assert refused.short == ("b",)
    assert await ledger.balances() == {"a": Balance(granted=10), "b": Balance(granted=1)}
    assert await ledger.find_order("o1", (A, B)) is None


async def test_a_retried_order_returns_the_first_answer_and_spends_once(ledger: Ledger) -> None:
    await funded(ledger)

    first = await ledger.deduct("o1", (A, B))
    again = await ledger.deduct("o1", (A, B))

    assert first.accepted
    assert not first.replayed
    assert first.available_after == (7, 8)
    assert again.accepted
    assert again.replayed
    assert again.lines == first.lines
    assert await ledger.find_order("o1", (A, B)) == again
    assert (await ledger.balance("a")).deducted == 3


async def test_a_retry_with_its_lines_in_another_order_is_the_same_order(ledger: Ledger) -> None:
    """An order names each promotion once: a retry that rebuilt its lines from a set or a dict is a retry.
    Refused as another order, its caller would be told to place it under a new key, and it would spend twice."""
    await funded(ledger)
    await ledger.deduct("o1", (A, B))
    await ledger.refund("o1", "r1", (Line("a", 1), Line("b", 1)))

    again = await ledger.deduct("o1", (B, A))
    found = await ledger.find_order("o1", (B, A))
    refunded_again = await ledger.refund("o1", "r1", (Line("b", 1), Line("a", 1)))

    assert (again.replayed, found is not None and found.replayed, refunded_again.replayed) == (True, True, True)
    assert [(await ledger.balance(p)).deducted for p in ("a", "b")] == [A.amount, B.amount]
    assert [(await ledger.balance(p)).refunded for p in ("a", "b")] == [1, 1]


async def test_an_order_key_reused_for_other_lines_is_refused(ledger: Ledger) -> None:
    await funded(ledger)
    await ledger.deduct("o1", (A,))

    with pytest.raises(FailedPrecondition, match="different lines"):
        await ledger.deduct("o1", (B,))
    assert (await ledger.balance("b")).deducted == 0


async def test_a_lines_prices_are_part_of_the_order(ledger: Ledger) -> None:
    await funded(ledger)
    priced = Line("a", 1, "u1", unit_price=99_900, discount=9_990)
    await ledger.deduct("o1", (priced,))
    await ledger.deduct("r1", (priced,), hold_ms=60_000)

    assert (await ledger.deduct("o1", (priced,))).replayed
    for other in (Line("a", 1, "u1", 99_900, 89_910), Line("a", 1, "u1")):
        with pytest.raises(FailedPrecondition, match="different lines"):
            await ledger.deduct("o1", (other,))
        with pytest.raises(FailedPrecondition, match="different lines"):
            await ledger.find_order("o1", (other,))
    assert (await ledger.settle("r1", Settle.CONFIRM)).lines == (priced,)
    assert (await ledger.balance("a")).deducted == 2


async def test_concurrent_orders_never_overspend(ledger: Ledger) -> None:
    await ledger.apply_grant("g1", "a", 10, await ledger.incarnation())

    outcomes = await asyncio.gather(*(ledger.deduct(f"o{n}", (A,)) for n in range(8)))

    assert sum(outcome.accepted for outcome in outcomes) == 3
    assert (await ledger.balance("a")).available == 1


async def test_a_crowd_of_orders_with_retries_among_them_is_answered_as_if_one_at_a_time(ledger: Ledger) -> None:
    """Hundreds at once: the Redis ledger sends them in batches, which must not change any answer."""
    await ledger.apply_grant("g1", "a", 150, await ledger.incarnation())
    line = Line("a", 1, "u1")
    calls = [ledger.deduct(f"o{n}", (line,)) for n in range(200)]
    calls += [ledger.deduct(f"o{n}", (line,)) for n in range(100)]  # retries, racing their originals
    calls.append(ledger.deduct("o7", (B,)))  # a key reused for other lines

    *outcomes, reused = await asyncio.gather(*calls, return_exceptions=True)

    assert isinstance(reused, FailedPrecondition)
    answers = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
    assert len(answers) == 300
    first_times = [answer for answer in answers if answer.accepted and not answer.replayed]
    assert len(first_times) == 150
    assert (await ledger.balance("a")).deducted == 150
    assert sum(answer.replayed for answer in answers) <= 100


async def test_refunds_go_back_to_the_allotment_once_per_refund_id(ledger: Ledger) -> None:
    await funded(ledger)
    await ledger.deduct("o1", (A, B))

    partial = await ledger.refund("o1", "r1", (Line("a", 1),))
    repeated = await ledger.refund("o1", "r1", (Line("a", 1),))
    rest = await ledger.refund("o1", "r2", ())

    assert partial.lines == (Line("a", 1),)
    assert repeated.replayed
    assert rest.lines == (Line("a", 2), Line("b", 2))
    assert await ledger.balances() == {
        "a": Balance(granted=10, deducted=3, refunded=3),
        "b": Balance(granted=10, deducted=2, refunded=2),
    }


async def test_a_refund_never_exceeds_what_the_order_spent(ledger: Ledger) -> None:
    await funded(ledger)
    await ledger.deduct("o1", (A,))
    await ledger.refund("o1", "r1", (Line("a", 2),))

    with pytest.raises(FailedPrecondition, match="at most 1"):
        await ledger.refund("o1", "r2", (Line("a", 2),))
    with pytest.raises(InvalidArgument):
        await ledger.refund("o1", "r3", (Line("b", 1),))
    with pytest.raises(NotFound):
        await ledger.refund("unknown", "r4", ())
    assert await ledger.balance("a") == Balance(granted=10, deducted=3, refunded=2)


async def test_take_back_removes_only_what_is_available(ledger: Ledger) -> None:
    await funded(ledger, a=5)
    await ledger.deduct("o1", (A,))

    assert await ledger.return_quota("a", 100) == 2
    assert await ledger.return_quota("a", 1) == 0
    assert await ledger.balance("a") == Balance(granted=5, returned=2, deducted=3)


async def test_an_incarnation_is_stable_for_the_ledgers_life(ledger: Ledger) -> None:
    assert await ledger.incarnation() == await ledger.incarnation()


async def test_an_in_process_ledger_starts_a_new_incarnation_every_time() -> None:
    assert await InProcessLedger().incarnation() != await InProcessLedger().incarnation()


async def test_lines_of_one_promotion_are_checked_together(ledger: Ledger) -> None:
    await ledger.apply_grant("g1", "a", 5, await ledger.incarnation())

    refused = await ledger.deduct("o1", (A, A))

    assert refused.short == ("a",)
    assert await ledger.balance("a") == Balance(granted=5)


async def test_amounts_up_to_the_maximum_stay_exact(ledger: Ledger) -> None:
    await ledger.apply_grant("g1", "a", MAX_AMOUNT, await ledger.incarnation())
    huge = (Line("a", MAX_AMOUNT, "u1"),)

    assert (await ledger.deduct("o1", huge)).available_after == (0,)
    refunded = await ledger.refund("o1", "r1", ())

    assert refunded.lines == (Line("a", MAX_AMOUNT),)
    assert await ledger.balance("a") == Balance(granted=MAX_AMOUNT, deducted=MAX_AMOUNT, refunded=MAX_AMOUNT)


async def test_a_user_gets_no_more_units_than_the_promotion_allows(ledger: Ledger) -> None:
    await ledger.apply_grant("g1", "a", 100, await ledger.incarnation())
    limits = {"a": UserLimit(units=5)}

    assert (await ledger.deduct("o1", (Line("a", 3, "ann"),), limits)).accepted
    refused = await ledger.deduct("o2", (Line("a", 3, "ann"),), limits)
    other_user = await ledger.deduct("o3", (Line("a", 3, "bob"),), limits)

    assert refused.over_limit == ("a",)
    assert other_user.accepted
    assert (await ledger.balance("a")).deducted == 6
    await ledger.refund("o1", "r1", (Line("a", 2),))
    assert (await ledger.deduct("o4", (Line("a", 3, "ann"),), limits)).accepted


async def test_a_user_gets_no_more_orders_than_the_promotion_allows(ledger: Ledger) -> None:
    await funded(ledger)
    limits = {"a": UserLimit(orders=1)}

    assert (await ledger.deduct("o1", (Line("a", 1, "ann"),), limits)).accepted
    assert (await ledger.deduct("o2", (Line("a", 1, "ann"),), limits)).over_limit == ("a",)
    await ledger.refund("o1", "r1", (Line("a", 1),))  # fully refunded: the order stops counting
    assert (await ledger.deduct("o3", (Line("a", 1, "ann"),), limits)).accepted


async def test_one_agent_of_a_region_refills_a_promotion_at_a_time(redis_ledger: RedisLedger) -> None:
    assert await redis_ledger.claim_refill("a", "agent-1", ttl_s=5)
    assert not await redis_ledger.claim_refill("a", "agent-2", ttl_s=5)
    assert await redis_ledger.claim_refill("b", "agent-2", ttl_s=5)

    await redis_ledger.release_refill("a", "agent-2")
    assert not await redis_ledger.claim_refill("a", "agent-2", ttl_s=5)
    await redis_ledger.release_refill("a", "agent-1")
    assert await redis_ledger.claim_refill("a", "agent-2", ttl_s=0.05)
    await asyncio.sleep(0.1)
    assert await redis_ledger.claim_refill("a", "agent-3", ttl_s=5)


async def test_a_grant_made_to_another_incarnation_is_never_applied(ledger: Ledger) -> None:
    with pytest.raises(LedgerLost):
        await ledger.apply_grant("g1", "a", 5, "00000000000000000000-some-earlier-life")

    assert await ledger.balances() == {}
    assert await ledger.apply_grant("g1", "a", 5, await ledger.incarnation())


async def test_refund_records_of_different_orders_never_collide(ledger: Ledger) -> None:
    await funded(ledger)
    await ledger.deduct("o:1", (Line("a", 1, "u1"),))
    await ledger.deduct("o", (Line("a", 2, "u1"),))

    await ledger.refund("o:1", "r", ())
    second = await ledger.refund("o", "1:r", ())

    assert not second.replayed
    assert second.lines == (Line("a", 2),)


async def test_a_redis_that_went_back_in_time_ends_the_life_for_every_agent(redis_address: RunningServer) -> None:
    client = redis.Redis(host=redis_address.host, port=redis_address.port)
    region = f"test-{uuid.uuid4().hex}"
    agent, other_agent = RedisLedger(client, region), RedisLedger(client, region)
    life = await agent.incarnation()
    assert await other_agent.incarnation() == life
    await agent.apply_grant("g1", "a", 10, life)
    await agent.deduct("o1", (Line("a", 4, "u1"),))
    # What a restart from an older snapshot, or a failover to a lagging replica, looks like.
    await client.hset(f"{{quota:{region}}}:incarnation", "sequence", 1)

    with pytest.raises(LedgerLost):
        await agent.deduct("o2", (Line("a", 1, "u1"),))

    new_life = await agent.incarnation()
    assert new_life != life
    assert await agent.balances() == {}
    with pytest.raises(LedgerLost):
        await other_agent.deduct("o3", (Line("a", 1, "u1"),))
    assert await other_agent.incarnation() == new_life
    await agent.aclose()
    await other_agent.aclose()
    await client.aclose()


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_order_records_are_kept_for_the_retention_period_only(kind: str, request: pytest.FixtureRequest) -> None:
    # Long beside the four calls that must fall within it however busy the machine is, short enough to wait out.
    retention_s = 2.0
    async with remembering_for(kind, request, retention_s=retention_s) as short_memory:
        await funded(short_memory)
        await short_memory.deduct("o1", (A,))
        await short_memory.refund("o1", "r1", (Line("a", 1),))

        assert (await short_memory.deduct("o1", (A,))).replayed
        assert (await short_memory.refund("o1", "r1", (Line("a", 1),))).replayed
        # At least the retention since the last record was made (a busy machine only waits longer), and a
        # little more for the ledgers' millisecond clocks.
        await asyncio.sleep(retention_s + 0.1)
        assert not (await short_memory.deduct("o1", (A,))).replayed
        assert not (await short_memory.refund("o1", "r1", (Line("a", 1),))).replayed


async def test_a_refund_id_retried_with_other_lines_is_refused(ledger: Ledger) -> None:
    await funded(ledger)
    await ledger.deduct("o1", (Line("a", 3, "u1"),))
    await ledger.refund("o1", "r1", (Line("a", 1),))

    for other in ((Line("a", 2),), ()):
        with pytest.raises(FailedPrecondition, match="'r1'"):
            await ledger.refund("o1", "r1", other)

    assert (await ledger.refund("o1", "r1", (Line("a", 1),))).replayed
    assert (await ledger.balance("a")).refunded == 1


async def test_an_order_over_the_users_limit_is_told_so_even_when_the_allotment_is_short(ledger: Ledger) -> None:
    await funded(ledger, a=3)
    limits = {"a": UserLimit(units=1)}
    await ledger.deduct("o1", (Line("a", 1, "u1"),), limits)

    refused = await ledger.deduct("o2", (Line("a", 5, "u1"),), limits)

    assert (refused.over_limit, refused.short) == (("a",), ())


async def test_a_refund_naming_a_promotion_twice_is_refused_and_changes_nothing(ledger: Ledger) -> None:
    await funded(ledger)
    await ledger.deduct("o1", (Line("a", 5, "u1"),))

    with pytest.raises(InvalidArgument, match="twice"):
        await ledger.refund("o1", "r1", (Line("a", 3), Line("a", 3)))

    assert await ledger.balance("a") == Balance(granted=10, deducted=5)
