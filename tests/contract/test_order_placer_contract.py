"""Orders belong to the identity that placed them (region_agent/ledger/base.py), on every ledger: the
in-process one and Redis on a real redis-server. Another identity's retry, confirm, cancel or refund of
an order is refused with PermissionDenied, says nothing of the order, and changes nothing; the placer's
own calls go on as before. An order placed without an identity ("", a plaintext agent) is nobody's:
only a call without one may touch it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable

import pytest

from quota_common.errors import NotFound, PermissionDenied
from region_agent.ledger.base import Balance, Ledger, Line, Settle, SettleOutcome
from tests.contract.conftest import REDIS_KINDS, funded, remembering_for

EU = "spiffe://quota/region/eu/orders/checkout"
OTHER = "spiffe://quota/region/eu/orders/other"
SHARED = "spiffe://quota/region/eu/orders"
"""The region's shared order-service identity: another identity than any named service's."""
PLAINTEXT = ""
A = Line("a", 3, "secret-user")
HOUR_MS = 3_600_000


async def _refused(call: Awaitable[object], caller: str) -> PermissionDenied:
    with pytest.raises(PermissionDenied) as refused:
        await call
    message = refused.value.message
    assert "placed by another identity" in message
    assert (caller or "without an identity") in message
    # Nothing of the order: neither whose it is nor what it holds.
    for secret in (EU, "secret-user", "'a'", "3"):
        if secret != caller:
            assert secret not in message.replace("'o1'", "")
    return refused.value


@pytest.mark.parametrize("intruder", [OTHER, SHARED, PLAINTEXT])
async def test_another_identity_can_neither_replay_nor_refund_a_deduction(ledger: Ledger, intruder: str) -> None:
    await funded(ledger)
    first = await ledger.deduct("o1", (A,), placer=EU)
    before = await ledger.balances()

    await _refused(ledger.deduct("o1", (A,), placer=intruder), intruder)
    await _refused(ledger.deduct("o1", (Line("b", 1),), placer=intruder), intruder)  # not even "other lines"
    await _refused(ledger.deduct("o1", (A,), hold_ms=HOUR_MS, placer=intruder), intruder)
    await _refused(ledger.find_order("o1", (A,), placer=intruder), intruder)
    await _refused(ledger.refund("o1", "r1", (), placer=intruder), intruder)
    await _refused(ledger.refund("o1", "r1", (Line("a", 1),), placer=intruder), intruder)
    await _refused(ledger.settle("o1", Settle.CANCEL, placer=intruder), intruder)

    assert await ledger.balances() == before
    again = await ledger.deduct("o1", (A,), placer=EU)
    assert (again.replayed, again.lines) == (True, first.lines)
    assert await ledger.find_order("o1", (A,), placer=EU) == again
    assert (await ledger.refund("o1", "r1", (), placer=EU)).lines == (Line("a", 3),)
    assert (await ledger.balance("a")).refunded == 3


async def test_a_refund_and_its_retry_are_the_placers_only(ledger: Ledger) -> None:
    await funded(ledger)
    await ledger.deduct("o1", (A,), placer=EU)
    refunded = await ledger.refund("o1", "r1", (Line("a", 1),), placer=EU)
    before = await ledger.balances()

    await _refused(ledger.refund("o1", "r1", (Line("a", 1),), placer=OTHER), OTHER)
    await _refused(ledger.refund("o1", "r1", (Line("a", 2),), placer=OTHER), OTHER)
    await _refused(ledger.refund("o1", "r2", (), placer=OTHER), OTHER)

    assert await ledger.balances() == before
    replay = await ledger.refund("o1", "r1", (Line("a", 1),), placer=EU)
    assert (replay.replayed, replay.lines) == (True, refunded.lines)


@pytest.mark.parametrize("how", list(Settle))
async def test_another_identity_can_neither_confirm_nor_cancel_nor_replay_a_reservation(
    ledger: Ledger, how: Settle
) -> None:
    await funded(ledger)
    reserved = await ledger.deduct("o1", (A,), hold_ms=HOUR_MS, placer=EU)
    before = await ledger.balances()
    assert before["a"].held == 3

    for intruder in (OTHER, SHARED, PLAINTEXT):
        await _refused(ledger.settle("o1", Settle.CONFIRM, placer=intruder), intruder)
        await _refused(ledger.settle("o1", Settle.CANCEL, placer=intruder), intruder)
        await _refused(ledger.deduct("o1", (A,), hold_ms=HOUR_MS, placer=intruder), intruder)
        await _refused(ledger.find_order("o1", (A,), reserve=True, placer=intruder), intruder)
    assert await ledger.balances() == before

    replay = await ledger.deduct("o1", (A,), hold_ms=HOUR_MS, placer=EU)
    assert (replay.replayed, replay.expires_at_ms) == (True, reserved.expires_at_ms)
    assert await ledger.settle("o1", how, placer=EU) == SettleOutcome((A,))
    await _refused(ledger.settle("o1", how, placer=OTHER), OTHER)  # its replay too
    assert await ledger.settle("o1", how, placer=EU) == SettleOutcome((A,), replayed=True)
    settled = Balance(granted=10, deducted=3) if how is Settle.CONFIRM else Balance(granted=10)
    assert await ledger.balance("a") == settled


async def test_an_expired_reservation_lapses_by_itself_whoever_placed_it(ledger: Ledger) -> None:
    """Expiry asks nobody's leave; another identity's cancel of a lapsed reservation still changes nothing."""
    await funded(ledger)
    await ledger.deduct("o1", (A,), hold_ms=100, placer=EU)
    await asyncio.sleep(0.3)

    await _refused(ledger.settle("o1", Settle.CANCEL, placer=OTHER), OTHER)
    assert (await ledger.balance("a")).held == 3  # not even released as expired

    await ledger.expire_reservations()
    assert await ledger.balance("a") == Balance(granted=10)
    assert (await ledger.settle("o1", Settle.CANCEL, placer=EU)).expired


async def test_an_order_placed_without_an_identity_is_touched_only_without_one(ledger: Ledger) -> None:
    """The choice for orders made on a plaintext agent (or before placers were recorded): the placer must
    match exactly, so once identities are on, nobody's order is not everybody's."""
    await funded(ledger)
    await ledger.deduct("o1", (A,))
    await ledger.deduct("o2", (A,), hold_ms=HOUR_MS, placer=PLAINTEXT)
    before = await ledger.balances()

    for identity in (EU, SHARED):
        await _refused(ledger.deduct("o1", (A,), placer=identity), identity)
        await _refused(ledger.refund("o1", "r1", (), placer=identity), identity)
        await _refused(ledger.settle("o2", Settle.CONFIRM, placer=identity), identity)
    assert await ledger.balances() == before

    assert (await ledger.deduct("o1", (A,))).replayed
    assert (await ledger.refund("o1", "r1", ())).lines == (Line("a", 3),)
    assert await ledger.settle("o2", Settle.CONFIRM) == SettleOutcome((A,))


async def test_keys_nobody_used_are_unknown_to_everyone(ledger: Ledger) -> None:
    await funded(ledger)

    with pytest.raises(NotFound):
        await ledger.refund("nope", "r1", (), placer=OTHER)
    with pytest.raises(NotFound):
        await ledger.settle("nope", Settle.CONFIRM, placer=OTHER)
    assert await ledger.find_order("nope", (A,), placer=OTHER) is None


async def test_a_crowd_of_placers_racing_for_keys_gets_each_key_once_and_only_for_its_placer(ledger: Ledger) -> None:
    """Many at once (the Redis ledger batches them into one script call): whoever came first owns the key,
    every other identity's call on it is refused, and the owner's retries replay."""
    await ledger.apply_grant("g1", "a", 1_000, await ledger.incarnation())
    line = Line("a", 1, "u1")
    attempts = [(f"o{n}", placer) for n in range(40) for placer in (EU, OTHER, SHARED, PLAINTEXT) for _ in range(2)]
    random.Random(7).shuffle(attempts)

    answers = await asyncio.gather(
        *(ledger.deduct(key, (line,), placer=placer) for key, placer in attempts), return_exceptions=True
    )

    owners: dict[str, set[str]] = {}
    for (key, placer), answer in zip(attempts, answers, strict=True):
        if isinstance(answer, PermissionDenied):
            continue
        assert not isinstance(answer, BaseException), answer
        owners.setdefault(key, set()).add(placer)
    assert all(len(placer) == 1 for placer in owners.values())
    assert len(owners) == 40
    assert (await ledger.balance("a")).deducted == 40
    for key, (owner,) in owners.items():
        assert (await ledger.deduct(key, (line,), placer=owner)).replayed


@pytest.mark.parametrize("kind", ["memory", *REDIS_KINDS])
async def test_a_refund_keeps_the_order_and_its_placer_as_long_as_the_refund(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """A refund's record outlives the order's first retention period, so the order's record stays as long:
    a retried refund is still checked against the placer rather than replayed to anyone."""
    retention_s = 2.0
    async with remembering_for(kind, request, retention_s=retention_s) as short_memory:
        await funded(short_memory)
        await short_memory.deduct("o1", (A,), placer=EU)
        await asyncio.sleep(retention_s * 0.6)
        await short_memory.refund("o1", "r1", (Line("a", 1),), placer=EU)
        await asyncio.sleep(retention_s * 0.6)  # past the deduction's retention, within the refund's

        await _refused(short_memory.refund("o1", "r1", (Line("a", 1),), placer=OTHER), OTHER)
        await _refused(short_memory.deduct("o1", (A,), placer=OTHER), OTHER)
        assert (await short_memory.refund("o1", "r1", (Line("a", 1),), placer=EU)).replayed
        assert (await short_memory.deduct("o1", (A,), placer=EU)).replayed
