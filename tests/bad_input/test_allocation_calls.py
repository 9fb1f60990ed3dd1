"""Bad input to the agents' calls to the center: precise status, actionable message, nothing changed."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeAlias

import grpc
import pytest

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_common.incarnation import MAX_AHEAD_S
from quota_common.validation import MAX_RENEWAL
from quota_testing.bad_calls import (
    BAD_AMOUNTS,
    BAD_IDS,
    FAILED,
    ID_128,
    ID_129,
    INVALID,
    MAX_AMOUNT,
    NOT_FOUND,
    World,
    acquire,
    counters,
    create,
    identity,
    rejected,
    unchanged,
)
from quota_testing.inprocess import issued_incarnation
from quota_testing.support import promotion

# Acquire, Renew, Return


@pytest.mark.parametrize("amount", BAD_AMOUNTS)
async def test_acquire_rejects_a_bad_amount(
    granted: World, allocation: center_grpc.AllocationAsyncStub, amount: int
) -> None:
    async with unchanged(granted):
        await rejected(allocation.Acquire(acquire(amount=amount, request_id="req-2"), timeout=5), INVALID, "amount")


async def test_acquire_rejects_a_negative_demand(granted: World, allocation: center_grpc.AllocationAsyncStub) -> None:
    async with unchanged(granted):
        await rejected(
            allocation.Acquire(acquire(request_id="req-2", demand=-1), timeout=5), INVALID, "demand_per_minute", "-1"
        )


async def test_acquire_of_an_unknown_promotion_is_not_found(
    granted: World, allocation: center_grpc.AllocationAsyncStub
) -> None:
    async with unchanged(granted):
        await rejected(allocation.Acquire(acquire("ghost"), timeout=5), NOT_FOUND, "'ghost'")


async def test_acquire_for_a_region_the_promotion_does_not_allow_is_denied(
    granted: World, allocation: center_grpc.AllocationAsyncStub
) -> None:
    request = acquire(request_id="req-us", agent=identity("us"))

    async with unchanged(granted):
        await rejected(allocation.Acquire(request, timeout=5), grpc.StatusCode.PERMISSION_DENIED, "'us'", "eu")


@pytest.mark.parametrize(("request_id", "fragment"), BAD_IDS)
async def test_acquire_rejects_a_bad_request_id(
    granted: World, allocation: center_grpc.AllocationAsyncStub, request_id: str, fragment: str
) -> None:
    async with unchanged(granted):
        await rejected(allocation.Acquire(acquire(request_id=request_id), timeout=5), INVALID, "request_id", fragment)


@pytest.mark.parametrize(("promotion_id", "fragment"), BAD_IDS)
async def test_acquire_rejects_a_bad_promotion_id(
    granted: World, allocation: center_grpc.AllocationAsyncStub, promotion_id: str, fragment: str
) -> None:
    async with unchanged(granted):
        await rejected(allocation.Acquire(acquire(promotion_id), timeout=5), INVALID, "promotion_id", fragment)


AllocationCall: TypeAlias = "Callable[[center_grpc.AllocationAsyncStub, center_pb.AgentIdentity], Awaitable[object]]"

AGENT_CALLS: list[tuple[str, AllocationCall]] = [
    ("Acquire", lambda s, a: s.Acquire(acquire(request_id="req-2", agent=a), timeout=5)),
    ("Renew", lambda s, a: s.Renew(center_pb.RenewRequest(agent=a, counters=[counters()]), timeout=5)),
    ("Return", lambda s, a: s.Return(center_pb.ReturnRequest(agent=a, counters=counters(returned=10)), timeout=5)),
]

BAD_IDENTITIES = [
    pytest.param(identity(region=""), "agent.region", "is required", id="region-empty"),
    pytest.param(identity(region=ID_129), "agent.region", "129 bytes", id="region-129-bytes"),
    pytest.param(identity(incarnation=""), "agent.incarnation", "is required", id="incarnation-empty"),
    pytest.param(identity(incarnation=ID_129), "agent.incarnation", "129 bytes", id="incarnation-129-bytes"),
    # Incarnations are ordered as text: one that sorts above every real one would retire them all.
    pytest.param(
        identity(incarnation="\U0010ffff" * 32), "agent.incarnation", "not an incarnation", id="incarnation-form"
    ),
    pytest.param(
        identity(incarnation=issued_incarnation(time.time_ns() + (MAX_AHEAD_S + 86_400) * 10**9)),
        "agent.incarnation",
        "set the agent host's clock right",
        id="incarnation-dated-ahead",
    ),
]


@pytest.mark.parametrize(("agent", "field", "fragment"), BAD_IDENTITIES)
@pytest.mark.parametrize("call", [pytest.param(c, id=name) for name, c in AGENT_CALLS])
async def test_allocation_calls_reject_a_bad_agent_identity(
    granted: World,
    allocation: center_grpc.AllocationAsyncStub,
    call: AllocationCall,
    agent: center_pb.AgentIdentity,
    field: str,
    fragment: str,
) -> None:
    async with unchanged(granted):
        await rejected(call(allocation, agent), INVALID, field, fragment)


async def test_acquire_accepts_128_byte_ids(
    admin: center_grpc.PromotionAdminAsyncStub, allocation: center_grpc.AllocationAsyncStub
) -> None:
    region, request_id = "r" * 128, "q" * 128
    incarnation = issued_incarnation(3, region)
    await create(admin, promotion(ID_128, budget=MAX_AMOUNT, regions=("eu", region)))

    answer = await allocation.Acquire(acquire(ID_128, MAX_AMOUNT, request_id, identity(region, incarnation)), timeout=5)

    assert (answer.grant.promotion_id, answer.grant.region, answer.grant.amount) == (ID_128, region, MAX_AMOUNT)
    assert answer.unallocated == 0


async def test_renew_naming_a_promotion_twice_is_rejected(
    granted: World, allocation: center_grpc.AllocationAsyncStub
) -> None:
    request = center_pb.RenewRequest(agent=identity(), counters=[counters(deducted=10), counters(deducted=20)])

    async with unchanged(granted):
        await rejected(allocation.Renew(request, timeout=5), INVALID, "'promo'", "twice")


async def test_renew_of_more_promotions_than_one_call_takes_is_rejected(
    granted: World, allocation: center_grpc.AllocationAsyncStub
) -> None:
    """A renewal naming 300,000 unknown promotions held the center's event loop for 3 s, and its
    answer passed 4 MiB; an agent splits its report into calls of at most MAX_RENEWAL."""
    reports = [counters(promotion_id=f"ghost-{n}") for n in range(MAX_RENEWAL + 1)]
    request = center_pb.RenewRequest(agent=identity(), counters=reports)

    async with unchanged(granted):
        await rejected(allocation.Renew(request, timeout=5), INVALID, f"{MAX_RENEWAL + 1} promotions", "at most")


@pytest.mark.parametrize(
    ("report", "fragments"),
    [
        pytest.param(counters(deducted=-1), ["counters.deducted", "-1"], id="negative-deducted"),
        pytest.param(counters(promotion_id=""), ["counters.promotion_id", "is required"], id="promotion-id-empty"),
        pytest.param(
            center_pb.Counters(promotion_id="promo", granted=100, below_floor=-1),
            ["counters.below_floor", "-1"],
            id="negative-below-floor",
        ),
    ],
)
async def test_renew_rejects_malformed_counters(
    granted: World, allocation: center_grpc.AllocationAsyncStub, report: center_pb.Counters, fragments: list[str]
) -> None:
    request = center_pb.RenewRequest(agent=identity(), counters=[report])

    async with unchanged(granted):
        await rejected(allocation.Renew(request, timeout=5), INVALID, *fragments)


@pytest.mark.parametrize(
    ("report", "fragments"),
    [
        pytest.param(counters(granted=101, deducted=50), ["101", "only 100"], id="more-granted-than-the-center-did"),
        pytest.param(counters(granted=2**63 - 1), [str(2**63 - 1), "only 100"], id="granted-2**63-1"),
        pytest.param(counters(deducted=5, refunded=6), ["inconsistent"], id="refunded-above-deducted"),
        pytest.param(counters(returned=60, deducted=50), ["inconsistent"], id="spent-more-than-held"),
    ],
)
async def test_renew_refuses_impossible_counters_in_that_promotions_directive(
    granted: World, allocation: center_grpc.AllocationAsyncStub, report: center_pb.Counters, fragments: list[str]
) -> None:
    request = center_pb.RenewRequest(agent=identity(), counters=[report])

    async with unchanged(granted):
        answer = await allocation.Renew(request, timeout=5)

    (directive,) = answer.directives
    assert directive.promotion_id == "promo"
    for fragment in fragments:
        assert fragment in directive.refusal


async def _unknown(admin: center_grpc.PromotionAdminAsyncStub, allocation: center_grpc.AllocationAsyncStub) -> None:
    pass


async def _us_only_granted(
    admin: center_grpc.PromotionAdminAsyncStub, allocation: center_grpc.AllocationAsyncStub
) -> None:
    await create(admin, promotion("second", budget=1_000, regions=("us",)))


async def _granted_100(admin: center_grpc.PromotionAdminAsyncStub, allocation: center_grpc.AllocationAsyncStub) -> None:
    await create(admin, promotion("second", budget=1_000, regions=("eu",)))
    await allocation.Acquire(acquire("second", amount=100, request_id="req-2"), timeout=5)


RenewSetup: TypeAlias = (
    "Callable[[center_grpc.PromotionAdminAsyncStub, center_grpc.AllocationAsyncStub], Awaitable[None]]"
)


@pytest.mark.parametrize(
    ("setup", "fragments"),
    [
        pytest.param(_unknown, ["'second'"], id="second-unknown"),
        pytest.param(_us_only_granted, ["'eu'", "second"], id="second-not-allowed"),
        pytest.param(_granted_100, ["101", "second"], id="second-claims-more-granted"),
    ],
)
async def test_renew_with_one_bad_report_refuses_it_alone_and_takes_in_the_others(
    granted: World,
    allocation: center_grpc.AllocationAsyncStub,
    setup: RenewSetup,
    fragments: list[str],
) -> None:
    await setup(granted.admin, allocation)
    before = await granted.snapshot()
    request = center_pb.RenewRequest(
        agent=identity(), counters=[counters(deducted=40), counters("second", granted=101)]
    )

    answer = await allocation.Renew(request, timeout=5)

    good, bad = answer.directives
    assert (good.promotion_id, good.refusal) == ("promo", "")
    assert bad.promotion_id == "second"
    for fragment in fragments:
        assert fragment in bad.refusal
    usage = await granted.admin.GetUsage(center_pb.GetUsageRequest(promotion_id="promo"), timeout=5)
    assert [(region.region, region.consumed) for region in usage.regions] == [("eu", 40)]
    after = await granted.snapshot()
    assert [u for u in after[1] if u.promotion.id != "promo"] == [u for u in before[1] if u.promotion.id != "promo"]


async def test_return_claiming_more_granted_than_the_center_granted_is_rejected(
    granted: World, allocation: center_grpc.AllocationAsyncStub
) -> None:
    request = center_pb.ReturnRequest(agent=identity(), counters=counters(granted=150, returned=150))

    async with unchanged(granted):
        await rejected(allocation.Return(request, timeout=5), INVALID, "150", "100")


async def test_an_incarnation_dated_within_the_skew_allowed_is_taken_and_outranks_the_older_one(
    granted: World, allocation: center_grpc.AllocationAsyncStub
) -> None:
    ahead = identity(incarnation=issued_incarnation(time.time_ns() + (MAX_AHEAD_S - 60) * 10**9))

    await allocation.Renew(center_pb.RenewRequest(agent=ahead, counters=[counters(granted=0)]), timeout=5)

    with pytest.raises(grpc.aio.AioRpcError) as superseded:
        await allocation.Renew(center_pb.RenewRequest(agent=identity(), counters=[counters()]), timeout=5)
    assert superseded.value.code() == grpc.StatusCode.FAILED_PRECONDITION


# Join


@pytest.mark.parametrize(("replaces", "fragment"), [BAD_IDS[1]])
async def test_join_rejects_a_bad_replaced_life(
    granted: World, allocation: center_grpc.AllocationAsyncStub, replaces: str, fragment: str
) -> None:
    async with unchanged(granted):
        await rejected(
            allocation.Join(center_pb.JoinRequest(region="eu", replaces=replaces), timeout=5),
            INVALID,
            "replaces",
            fragment,
        )


async def test_join_of_a_region_another_life_renews_is_refused_and_writes_nothing_off(
    granted: World, allocation: center_grpc.AllocationAsyncStub
) -> None:
    """A stray agent of eu on another ledger: its life would retire the one that holds eu's quota."""
    async with unchanged(granted):
        error = await rejected(
            allocation.Join(center_pb.JoinRequest(region="eu"), timeout=5),
            FAILED,
            "region eu is served by another agent",
        )
    held_ms = dict(error.trailing_metadata() or ())["quota-region-held-ms"]
    assert 0 < int(str(held_ms)) <= 10_000
