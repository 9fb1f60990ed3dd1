"""Reservations (Reserve -> Confirm / Cancel / expiry) under the Ledger contract, on every
implementation. Deadlines are real (Redis's clock, or this process's), so holds are short."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from quota_common.errors import FailedPrecondition, NotFound, Rejected, RejectReason
from region_agent.ledger.base import Balance, Ledger, Line, Settle, SettleOutcome, UserLimit
from tests.contract.conftest import REDIS_KINDS, funded, remembering_for

A = Line("a", 3, "u1")
HOUR_MS = 3_600_000
SHORT_MS = 150
"""A hold that lapses within the test; waits are twice as long, so a slow machine cannot flake them."""


async def lapse() -> None:
    await asyncio.sleep(2 * SHORT_MS / 1000)


async def test_a_reservation_holds_quota_until_confirmed(ledger: Ledger) -> None:
    await funded(ledger)
    before_ms = time.time_ns() // 1_000_000

    reserved = await ledger.deduct("o1", (A,), hold_ms=HOUR_MS)

    assert reserved.accepted
    assert reserved.available_after == (7,)
    assert before_ms + HOUR_MS <= reserved.expires_at_ms <= before_ms + HOUR_MS + 5_000
    assert await ledger.balance("a") == Balance(granted=10, held=3)
    assert await ledger.settle("o1", Settle.CONFIRM) == SettleOutcome((A,))
    assert await ledger.balance("a") == Balance(granted=10, deducted=3)


async def test_every_reservation_call_replays_its_first_answer(ledger: Ledger) -> None:
    await funded(ledger)
    first = await ledger.deduct("o1", (A,), hold_ms=HOUR_MS)

    again = await ledger.deduct("o1", (A,), hold_ms=HOUR_MS)
    assert (again.replayed, again.expires_at_ms) == (True, first.expires_at_ms)
    assert await ledger.find_order("o1", (A,), reserve=True) == again
    assert await ledger.settle("o1", Settle.CONFIRM) == SettleOutcome((A,))
    assert await ledger.settle("o1", Settle.CONFIRM) == SettleOutcome((A,), replayed=True)
    assert (await ledger.deduct("o1", (A,), hold_ms=HOUR_MS)).replayed

    await ledger.deduct("o2", (A,), hold_ms=HOUR_MS)
    assert await ledger.settle("o2", Settle.CANCEL) == SettleOutcome((A,))
    assert await ledger.settle("o2", Settle.CANCEL) == SettleOutcome((A,), replayed=True)
    assert await ledger.balance("a") == Balance(granted=10, deducted=3)


async def test_a_cancelled_reservation_gives_its_quota_and_the_users_limit_back(ledger: Ledger) -> None:
    await funded(ledger, a=3)
    limits = {"a": UserLimit(units=3, orders=1)}
    await ledger.deduct("o1", (A,), limits, hold_ms=HOUR_MS)
    assert (await ledger.deduct("o2", (Line("a", 1, "u2"),), limits)).short == ("a",)

    await ledger.settle("o1", Settle.CANCEL)

    assert (await ledger.balance("a")).available == 3
    assert (await ledger.deduct("o3", (A,), limits, hold_ms=HOUR_MS)).accepted


async def test_a_held_reservation_counts_against_the_users_limit(ledger: Ledger) -> None:
    await funded(ledger, a=10)
    limits = {"a": UserLimit(orders=1)}
    await ledger.deduct("o1", (A,), limits, hold_ms=HOUR_MS)

    assert (await ledger.deduct("o2", (A,), limits)).over_limit == ("a",)
    assert (await ledger.deduct("o3", (A,), limits, hold_ms=HOUR_MS)).over_limit == ("a",)


async def test_an_unconfirmed_reservation_lapses_by_itself(ledger: Ledger) -> None:
    await funded(ledger)
    await ledger.deduct("o1", (A,), hold_ms=SHORT_MS)
    await ledger.deduct("o2", (A,), hold_ms=HOUR_MS)
    await lapse()

    assert await ledger.expire_reservations() == 1
    assert await ledger.expire_reservations() == 0
    assert await ledger.balance("a") == Balance(granted=10, held=3)
    assert await ledger.settle("o1", Settle.CANCEL) == SettleOutcome((A,), expired=True)


async def test_confirm_after_the_deadline_is_refused_even_before_the_sweep(ledger: Ledger) -> None:
    await funded(ledger)
    await ledger.deduct("o1", (A,), hold_ms=SHORT_MS)
    await lapse()

    with pytest.raises(Rejected, match="expired at") as refused:
        await ledger.settle("o1", Settle.CONFIRM)

    assert refused.value.reason is RejectReason.RESERVATION_EXPIRED
    assert await ledger.balance("a") == Balance(granted=10)
    assert await ledger.expire_reservations() == 0
    assert await ledger.settle("o1", Settle.CANCEL) == SettleOutcome((A,), expired=True)


async def test_a_reservation_cannot_take_what_is_not_available(ledger: Ledger) -> None:
    await funded(ledger, a=2)

    refused = await ledger.deduct("o1", (A,), hold_ms=HOUR_MS)

    assert refused.short == ("a",)
    assert await ledger.balance("a") == Balance(granted=2)
    assert await ledger.find_order("o1", (A,), reserve=True) is None


@pytest.mark.parametrize(
    ("first", "then"),
    [
        ("reserve", "deduct"),
        ("deduct", "reserve"),
        ("deduct", "confirm"),
        ("deduct", "cancel"),
        ("reserve", "refund"),
        ("cancelled", "confirm"),
        ("cancelled", "refund"),
        ("confirmed", "cancel"),
    ],
)
async def test_a_call_of_the_wrong_kind_for_an_order_is_refused_and_changes_nothing(
    ledger: Ledger, first: str, then: str
) -> None:
    await funded(ledger)
    if first == "deduct":
        await ledger.deduct("o1", (A,))
    else:
        await ledger.deduct("o1", (A,), hold_ms=HOUR_MS)
    if first in ("cancelled", "confirmed"):
        await ledger.settle("o1", Settle.CANCEL if first == "cancelled" else Settle.CONFIRM)
    before = await ledger.balances()

    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "deduct": lambda: ledger.deduct("o1", (A,)),
        "reserve": lambda: ledger.deduct("o1", (A,), hold_ms=HOUR_MS),
        "refund": lambda: ledger.refund("o1", "r1", ()),
        "confirm": lambda: ledger.settle("o1", Settle.CONFIRM),
        "cancel": lambda: ledger.settle("o1", Settle.CANCEL),
    }

    with pytest.raises(FailedPrecondition, match="'o1'") as refused:
        await calls[then]()

    assert not isinstance(refused.value, Rejected)
    assert await ledger.balances() == before


async def test_settling_an_unknown_order_is_not_found(ledger: Ledger) -> None:
    for how in Settle:
        with pytest.raises(NotFound, match="'nope'"):
            await ledger.settle("nope", how)


async def test_a_confirmed_reservation_refunds_like_a_deduction(ledger: Ledger) -> None:
    await funded(ledger)
    await ledger.deduct("o1", (A,), hold_ms=HOUR_MS)
    await ledger.settle("o1", Settle.CONFIRM)

    assert (await ledger.refund("o1", "r1", (Line("a", 1),))).lines == (Line("a", 1),)
    assert (await ledger.refund("o1", "r2", ())).lines == (Line("a", 2),)
    assert await ledger.balance("a") == Balance(granted=10, deducted=3, refunded=3)


async def test_racing_confirm_cancel_and_expiry_settle_a_reservation_once(ledger: Ledger) -> None:
    await funded(ledger, a=100)
    for n in range(10):
        await ledger.deduct(f"o{n}", (A,), hold_ms=SHORT_MS)
    await asyncio.sleep(SHORT_MS / 1000 * 0.9)

    async def settle(order_key: str, how: Settle) -> str:
        try:
            outcome = await ledger.settle(order_key, how)
        except Rejected:
            return "expired"
        except FailedPrecondition:
            return "lost the race"
        return "expired" if outcome.expired else how.value

    answers = await asyncio.gather(
        *(settle(f"o{n}", how) for n in range(10) for how in Settle), ledger.expire_reservations()
    )
    await lapse()
    await ledger.expire_reservations()

    balance = await ledger.balance("a")
    confirmed = answers.count("confirm")
    assert all(answers[2 * n : 2 * n + 2].count("lost the race") <= 1 for n in range(10))
    assert balance.held == 0
    assert balance.deducted == 3 * confirmed
    assert balance.available == 100 - 3 * confirmed


@pytest.mark.parametrize("kind", ["memory", *REDIS_KINDS])
async def test_a_reservation_outlives_a_shorter_retention(kind: str, request: pytest.FixtureRequest) -> None:
    async with remembering_for(kind, request, retention_s=SHORT_MS / 1000 / 3) as short_memory:
        await funded(short_memory)
        await short_memory.deduct("o1", (A,), hold_ms=SHORT_MS)
        await lapse()

        assert await short_memory.expire_reservations() == 1
        assert await short_memory.balance("a") == Balance(granted=10)
        assert await short_memory.settle("o1", Settle.CANCEL) == SettleOutcome((A,), expired=True)
        await lapse()
        with pytest.raises(NotFound):
            await short_memory.settle("o1", Settle.CANCEL)
