"""Bad input: every RPC answers a precise status and a message naming what is wrong, and changes nothing.

Each case calls the real servers in this process, checks the status code and that the message names the
offending field or figure, and re-reads the state afterwards (the center's promotions and usage, the agent's
balances) to show that nothing was applied, not even in part.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeAlias

import grpc
import pytest

from quota_center.testing import ServedAgent
from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from region_agent.v1 import region_agent_pb2 as agent_pb
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc
from tests.support import HOUR_MS, now_ms, order, promotion, reject_reason

MAX_AMOUNT = 2**53 - 1
TOO_BIG = 2**53
ID_128 = "k" * 128
ID_129 = "k" * 129
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FAILED = grpc.StatusCode.FAILED_PRECONDITION

BAD_AMOUNTS = [pytest.param(0, id="zero"), pytest.param(-1, id="negative"), pytest.param(TOO_BIG, id="2**53")]
BAD_IDS = [pytest.param("", "is required", id="empty"), pytest.param(ID_129, "129 bytes", id="129-bytes")]

Balances = list[tuple[str, int, int, int, int, int, bool]]
Snapshot = tuple[list[center_pb.Promotion], list[center_pb.Usage], Balances | None]


# Helpers


async def rejected(call: Awaitable[object], code: grpc.StatusCode, *fragments: str) -> grpc.aio.AioRpcError:
    """Awaits a call that must fail with `code` and a message containing every fragment."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    details = error.details() or ""
    assert error.code() == code, details
    for fragment in fragments:
        assert fragment in details, f"{fragment!r} missing from {details!r}"
    return error


async def balances(orders: agent_grpc.RegionAgentAsyncStub) -> Balances:
    """The agent's balances and counters (without the lease countdown, which moves on its own)."""
    status = await orders.GetStatus(agent_pb.GetStatusRequest(), timeout=5)
    return [
        (b.promotion_id, b.available, b.granted, b.returned, b.deducted, b.refunded, b.frozen) for b in status.balances
    ]


async def settle(agent: ServedAgent, orders: agent_grpc.RegionAgentAsyncStub) -> None:
    """Waits out the background refill a deduction may start, then reports the counters to the center,
    so that the state only changes again if a call changes it."""
    loop = asyncio.get_running_loop()
    last, since = await balances(orders), loop.time()
    while loop.time() - since < 0.2:
        await asyncio.sleep(0.02)
        current = await balances(orders)
        if current != last:
            last, since = current, loop.time()
    await agent.agent.renew_once()


@dataclass(frozen=True)
class World:
    admin: center_grpc.PromotionAdminAsyncStub
    orders: agent_grpc.RegionAgentAsyncStub | None = None

    async def snapshot(self) -> Snapshot:
        listed = await self.admin.ListPromotions(center_pb.ListPromotionsRequest(), timeout=5)
        promotions = list(listed.promotions)
        usages = [
            await self.admin.GetUsage(center_pb.GetUsageRequest(promotion_id=p.id), timeout=5) for p in promotions
        ]
        return promotions, usages, None if self.orders is None else await balances(self.orders)


@asynccontextmanager
async def unchanged(world: World) -> AsyncIterator[None]:
    """Asserts that the block leaves the center (and the agent, if any) exactly as it found them."""
    before = await world.snapshot()
    yield
    if world.orders is not None:
        await asyncio.sleep(0.05)  # a refill started by mistake would land by now
    assert await world.snapshot() == before


async def create(admin: center_grpc.PromotionAdminAsyncStub, message: center_pb.Promotion) -> center_pb.Promotion:
    return await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=message), timeout=5)


def identity(region: str = "eu", incarnation: str = "inc-1") -> center_pb.AgentIdentity:
    return center_pb.AgentIdentity(region=region, incarnation=incarnation)


def acquire(
    promotion_id: str = "promo",
    amount: int = 100,
    request_id: str = "req-1",
    agent: center_pb.AgentIdentity | None = None,
    demand: int = 0,
) -> center_pb.AcquireRequest:
    return center_pb.AcquireRequest(
        agent=agent or identity(),
        promotion_id=promotion_id,
        amount=amount,
        request_id=request_id,
        demand_per_minute=demand,
    )


def counters(
    promotion_id: str = "promo", granted: int = 100, returned: int = 0, deducted: int = 0, refunded: int = 0
) -> center_pb.Counters:
    return center_pb.Counters(
        promotion_id=promotion_id, granted=granted, returned=returned, deducted=deducted, refunded=refunded
    )


def deduct(order_key: str = "o-2", region: str = "eu", *lines: agent_pb.Line) -> agent_pb.DeductRequest:
    return agent_pb.DeductRequest(order_key=order_key, region=region, lines=list(lines))


def line(promotion_id: str = "promo", amount: int = 1, user_id: str = "user-1") -> agent_pb.Line:
    return agent_pb.Line(promotion_id=promotion_id, amount=amount, user_id=user_id)


def refund(order_key: str = "o-1", refund_id: str = "", *lines: tuple[str, int]) -> agent_pb.RefundRequest:
    return agent_pb.RefundRequest(
        order_key=order_key,
        refund_id=refund_id,
        lines=[agent_pb.RefundLine(promotion_id=p, amount=a) for p, a in lines],
    )


# Fixtures


@pytest.fixture
async def center_world(admin: center_grpc.PromotionAdminAsyncStub) -> World:
    """A center holding one promotion, "existing", so that "nothing changed" is not about an empty list."""
    await create(admin, promotion("existing", budget=500))
    return World(admin)


@pytest.fixture
async def granted(center_world: World, allocation: center_grpc.AllocationAsyncStub) -> World:
    """Promotion "promo" (budget 1000, eu only) of which region eu (incarnation inc-1) was granted 100."""
    await create(center_world.admin, promotion("promo", budget=1_000, regions=("eu",)))
    answer = await allocation.Acquire(acquire(amount=100), timeout=5)
    assert answer.grant.amount == 100
    return center_world


@pytest.fixture
async def spent(
    admin: center_grpc.PromotionAdminAsyncStub, orders_eu: agent_grpc.RegionAgentAsyncStub, agent_eu: ServedAgent
) -> World:
    """Promotions "promo" and "other" (budget 1000 each); order "o-1" deducted 2 of each in region eu."""
    await create(admin, promotion("promo", budget=1_000))
    await create(admin, promotion("other", budget=1_000))
    await orders_eu.Deduct(order("o-1", "eu", ("promo", 2), ("other", 2)), timeout=5)
    await settle(agent_eu, orders_eu)
    return World(admin, orders_eu)


@pytest.fixture
async def fresh_agent(admin: center_grpc.PromotionAdminAsyncStub, orders_eu: agent_grpc.RegionAgentAsyncStub) -> World:
    """An agent that has spent nothing yet, and an empty center."""
    return World(admin, orders_eu)


# CreatePromotion


def _without_start() -> center_pb.Promotion:
    message = promotion()
    message.ClearField("start_time")
    return message


def _without_end() -> center_pb.Promotion:
    message = promotion()
    message.ClearField("end_time")
    return message


_START = now_ms()
AMOUNT = center_pb.PROMOTION_KIND_AMOUNT

BAD_PROMOTIONS = [
    pytest.param(promotion(budget=0), ["budget", "0"], id="budget-zero"),
    pytest.param(promotion(budget=-5), ["budget", "-5"], id="budget-negative"),
    pytest.param(promotion(budget=TOO_BIG), ["budget", str(TOO_BIG)], id="budget-2**53"),
    pytest.param(promotion(""), ["promotion.id", "required"], id="id-empty"),
    pytest.param(promotion(ID_129), ["promotion.id", "129 bytes"], id="id-129-bytes"),
    pytest.param(promotion("é" * 65), ["promotion.id", "130 bytes"], id="id-65-chars-130-bytes"),
    pytest.param(promotion(kind=center_pb.PROMOTION_KIND_UNSPECIFIED), ["kind"], id="kind-unspecified"),
    pytest.param(promotion(kind=7), ["kind"], id="kind-unknown"),
    pytest.param(_without_start(), ["start_time"], id="no-start"),
    pytest.param(_without_end(), ["end_time"], id="no-end"),
    pytest.param(promotion(start_ms=_START, end_ms=_START - 1), ["end_time", "start_time"], id="end-before-start"),
    pytest.param(promotion(start_ms=_START, end_ms=_START), ["end_time", "start_time"], id="end-equals-start"),
    pytest.param(promotion(regions=()), ["regions"], id="no-regions"),
    pytest.param(promotion(regions=("eu", "us", "eu")), ["regions", "twice", "eu"], id="duplicate-region"),
    pytest.param(promotion(regions=("eu", "")), ["region", "required"], id="region-empty"),
    pytest.param(promotion(regions=("eu", ID_129)), ["region", "129 bytes"], id="region-129-bytes"),
    pytest.param(promotion(currency="EUR"), ["COUNT", "currency", "EUR"], id="count-with-currency"),
    pytest.param(promotion(kind=AMOUNT), ["currency", "ISO 4217"], id="amount-without-currency"),
    pytest.param(promotion(kind=AMOUNT, currency="eur"), ["currency", "'eur'"], id="amount-lower-case"),
    pytest.param(promotion(kind=AMOUNT, currency="EURO"), ["currency", "'EURO'"], id="amount-four-letters"),
    pytest.param(promotion(kind=AMOUNT, currency="EU"), ["currency", "'EU'"], id="amount-two-letters"),
    pytest.param(promotion(kind=AMOUNT, currency="ÉUR"), ["currency", "'ÉUR'"], id="amount-not-ascii"),
    pytest.param(promotion(kind=AMOUNT, currency="123"), ["currency", "'123'"], id="amount-digits"),
    pytest.param(
        promotion(kind=AMOUNT, currency="E1R"),
        ["currency", "'E1R'"],
        id="amount-letter-digit-letter",
    ),
    pytest.param(promotion(kind=AMOUNT, currency="EUR "), ["currency", "'EUR '"], id="amount-padded"),
    pytest.param(promotion(per_user_limit=-1), ["per_user_limit", "-1"], id="negative-per-user-limit"),
    pytest.param(promotion(per_user_orders=-2), ["per_user_orders", "-2"], id="negative-per-user-orders"),
]


@pytest.mark.parametrize(("message", "fragments"), BAD_PROMOTIONS)
async def test_create_promotion_rejects_a_bad_field(
    center_world: World, message: center_pb.Promotion, fragments: list[str]
) -> None:
    async with unchanged(center_world):
        await rejected(create(center_world.admin, message), INVALID, *fragments)


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(promotion(ID_128), id="id-128-bytes"),
        pytest.param(promotion("é" * 64), id="id-64-chars-128-bytes"),
        pytest.param(promotion(budget=MAX_AMOUNT), id="budget-2**53-1"),
        pytest.param(promotion(budget=1), id="budget-1"),
        pytest.param(promotion(regions=(ID_128,)), id="region-128-bytes"),
        pytest.param(promotion(start_ms=_START, end_ms=_START + 1), id="window-1ms"),
        pytest.param(promotion(kind=AMOUNT, currency="EUR"), id="amount-EUR"),
    ],
)
async def test_create_promotion_accepts_the_boundaries(
    admin: center_grpc.PromotionAdminAsyncStub, message: center_pb.Promotion
) -> None:
    created = await create(admin, message)

    assert created.id == message.id
    assert created.budget == message.budget
    assert list(created.regions) == list(message.regions)
    assert await admin.GetPromotion(center_pb.GetPromotionRequest(promotion_id=message.id), timeout=5) == created


async def test_creating_an_existing_id_fails_and_keeps_the_original(center_world: World) -> None:
    imposter = promotion("existing", budget=7, regions=("us",), kind=AMOUNT, currency="USD")

    async with unchanged(center_world):
        await rejected(create(center_world.admin, imposter), grpc.StatusCode.ALREADY_EXISTS, "existing")

    kept = await center_world.admin.GetPromotion(center_pb.GetPromotionRequest(promotion_id="existing"), timeout=5)
    assert (kept.budget, list(kept.regions), kept.kind, kept.currency) == (
        500,
        ["eu", "us"],
        center_pb.PROMOTION_KIND_COUNT,
        "",
    )


# Reads and admin calls by promotion id

AdminCall: TypeAlias = "Callable[[center_grpc.PromotionAdminAsyncStub, str], Awaitable[object]]"

ADMIN_CALLS: list[tuple[str, AdminCall]] = [
    ("GetPromotion", lambda a, p: a.GetPromotion(center_pb.GetPromotionRequest(promotion_id=p), timeout=5)),
    ("GetUsage", lambda a, p: a.GetUsage(center_pb.GetUsageRequest(promotion_id=p), timeout=5)),
    (
        "SetBudget",
        lambda a, p: a.SetBudget(center_pb.SetBudgetRequest(promotion_id=p, budget=10, expected_revision=1), timeout=5),
    ),
    ("SetFrozen", lambda a, p: a.SetFrozen(center_pb.SetFrozenRequest(promotion_id=p, frozen=True), timeout=5)),
]


@pytest.mark.parametrize("call", [pytest.param(c, id=name) for name, c in ADMIN_CALLS])
async def test_admin_calls_on_an_unknown_promotion_are_not_found(center_world: World, call: AdminCall) -> None:
    async with unchanged(center_world):
        await rejected(call(center_world.admin, "ghost"), NOT_FOUND, "'ghost'")


@pytest.mark.parametrize(("promotion_id", "fragment"), BAD_IDS)
@pytest.mark.parametrize("call", [pytest.param(c, id=name) for name, c in ADMIN_CALLS])
async def test_admin_calls_reject_a_bad_promotion_id(
    center_world: World, call: AdminCall, promotion_id: str, fragment: str
) -> None:
    async with unchanged(center_world):
        await rejected(call(center_world.admin, promotion_id), INVALID, "promotion_id", fragment)


# SetBudget


def set_budget(budget: int, expected_revision: int, promotion_id: str = "promo") -> center_pb.SetBudgetRequest:
    return center_pb.SetBudgetRequest(promotion_id=promotion_id, budget=budget, expected_revision=expected_revision)


@pytest.mark.parametrize("budget", BAD_AMOUNTS)
async def test_set_budget_rejects_a_bad_amount(granted: World, budget: int) -> None:
    async with unchanged(granted):
        await rejected(granted.admin.SetBudget(set_budget(budget, 1), timeout=5), INVALID, "budget", str(budget))


async def test_set_budget_below_what_regions_hold_names_the_figures(granted: World) -> None:
    async with unchanged(granted):
        await rejected(granted.admin.SetBudget(set_budget(99, 1), timeout=5), FAILED, "99", "100")

    lowest = await granted.admin.SetBudget(set_budget(100, 1), timeout=5)
    assert (lowest.budget, lowest.revision) == (100, 2)


async def test_set_budget_with_a_stale_revision_fails(granted: World) -> None:
    await granted.admin.SetBudget(set_budget(2_000, 1), timeout=5)

    async with unchanged(granted):
        await rejected(granted.admin.SetBudget(set_budget(3_000, 1), timeout=5), FAILED, "revision 2", "not 1")

    current = await granted.admin.GetPromotion(center_pb.GetPromotionRequest(promotion_id="promo"), timeout=5)
    assert (current.budget, current.revision) == (2_000, 2)


async def test_set_budget_with_a_future_revision_fails(granted: World) -> None:
    async with unchanged(granted):
        await rejected(granted.admin.SetBudget(set_budget(3_000, 5), timeout=5), FAILED, "revision 1", "5")


@pytest.mark.parametrize("expected_revision", [0, -1])
async def test_set_budget_requires_the_revision_read(granted: World, expected_revision: int) -> None:
    async with unchanged(granted):
        await rejected(
            granted.admin.SetBudget(set_budget(3_000, expected_revision), timeout=5), INVALID, "expected_revision"
        )


async def test_set_budget_accepts_the_maximum(granted: World) -> None:
    answer = await granted.admin.SetBudget(set_budget(MAX_AMOUNT, 1), timeout=5)

    assert (answer.budget, answer.revision) == (MAX_AMOUNT, 2)


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
    request = acquire(request_id="req-us", agent=identity("us", "inc-us"))

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
    region, incarnation, request_id = "r" * 128, "i" * 128, "q" * 128
    await create(admin, promotion(ID_128, budget=MAX_AMOUNT, regions=("eu", region)))

    answer = await allocation.Acquire(acquire(ID_128, MAX_AMOUNT, request_id, identity(region, incarnation)), timeout=5)

    assert (answer.grant.promotion_id, answer.grant.region, answer.grant.amount) == (ID_128, region, MAX_AMOUNT)
    assert answer.unallocated == 0


async def test_renew_claiming_more_granted_than_the_center_granted_is_rejected(
    granted: World, allocation: center_grpc.AllocationAsyncStub
) -> None:
    request = center_pb.RenewRequest(agent=identity(), counters=[counters(granted=101, deducted=50)])

    async with unchanged(granted):
        await rejected(allocation.Renew(request, timeout=5), INVALID, "101", "100")


async def test_renew_naming_a_promotion_twice_is_rejected(
    granted: World, allocation: center_grpc.AllocationAsyncStub
) -> None:
    request = center_pb.RenewRequest(agent=identity(), counters=[counters(deducted=10), counters(deducted=20)])

    async with unchanged(granted):
        await rejected(allocation.Renew(request, timeout=5), INVALID, "'promo'", "twice")


@pytest.mark.parametrize(
    ("report", "fragments"),
    [
        pytest.param(counters(deducted=-1), ["counters.deducted", "-1"], id="negative-deducted"),
        pytest.param(counters(granted=TOO_BIG), ["counters.granted", str(TOO_BIG)], id="granted-2**53"),
        pytest.param(counters(deducted=5, refunded=6), ["inconsistent"], id="refunded-above-deducted"),
        pytest.param(counters(returned=60, deducted=50), ["inconsistent"], id="spent-more-than-held"),
        pytest.param(counters(promotion_id=""), ["counters.promotion_id", "is required"], id="promotion-id-empty"),
    ],
)
async def test_renew_rejects_impossible_counters(
    granted: World, allocation: center_grpc.AllocationAsyncStub, report: center_pb.Counters, fragments: list[str]
) -> None:
    request = center_pb.RenewRequest(agent=identity(), counters=[report])

    async with unchanged(granted):
        await rejected(allocation.Renew(request, timeout=5), INVALID, *fragments)


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
    ("setup", "code", "fragments"),
    [
        pytest.param(_unknown, NOT_FOUND, ["'second'"], id="second-unknown"),
        pytest.param(_us_only_granted, grpc.StatusCode.PERMISSION_DENIED, ["'eu'", "second"], id="second-not-allowed"),
        pytest.param(
            _granted_100,
            INVALID,
            ["101", "second"],
            id="second-claims-more-granted",
        ),
    ],
)
async def test_renew_with_one_bad_report_applies_none(
    granted: World,
    allocation: center_grpc.AllocationAsyncStub,
    setup: RenewSetup,
    code: grpc.StatusCode,
    fragments: list[str],
) -> None:
    await setup(granted.admin, allocation)
    request = center_pb.RenewRequest(
        agent=identity(), counters=[counters(deducted=40), counters("second", granted=101)]
    )

    async with unchanged(granted):
        await rejected(allocation.Renew(request, timeout=5), code, *fragments)


async def test_return_claiming_more_granted_than_the_center_granted_is_rejected(
    granted: World, allocation: center_grpc.AllocationAsyncStub
) -> None:
    request = center_pb.ReturnRequest(agent=identity(), counters=counters(granted=150, returned=150))

    async with unchanged(granted):
        await rejected(allocation.Return(request, timeout=5), INVALID, "150", "100")


# Deduct: the request itself


def _lines(count: int) -> list[agent_pb.Line]:
    return [line(f"p-{i}") for i in range(count)]


BAD_ORDERS = [
    pytest.param(deduct("", "eu", line()), ["order_key", "is required"], id="order-key-empty"),
    pytest.param(deduct(ID_129, "eu", line()), ["order_key", "129 bytes"], id="order-key-129-bytes"),
    pytest.param(deduct("o-2", "", line()), ["region", "is required"], id="region-empty"),
    pytest.param(deduct("o-2", "us", line()), ["'us'", "'eu'"], id="region-of-another-agent"),
    pytest.param(deduct("o-2", "eu"), ["at least one line"], id="no-lines"),
    pytest.param(deduct("o-2", "eu", *_lines(65)), ["64", "65"], id="65-lines"),
    pytest.param(deduct("o-2", "eu", line(), line("other"), line()), ["'promo'", "twice"], id="promotion-twice"),
    pytest.param(deduct("o-2", "eu", line(""), line()), ["lines.promotion_id", "is required"], id="promo-id-empty"),
    pytest.param(deduct("o-2", "eu", line(ID_129)), ["lines.promotion_id", "129 bytes"], id="promo-id-129-bytes"),
    pytest.param(deduct("o-2", "eu", line(user_id="")), ["lines.user_id", "is required"], id="user-id-empty"),
    pytest.param(deduct("o-2", "eu", line(user_id=ID_129)), ["lines.user_id", "129 bytes"], id="user-id-129-bytes"),
    pytest.param(deduct("o-2", "eu", line(amount=0)), ["lines.amount", "0"], id="amount-zero"),
    pytest.param(deduct("o-2", "eu", line(amount=-3)), ["lines.amount", "-3"], id="amount-negative"),
    pytest.param(deduct("o-2", "eu", line(amount=TOO_BIG)), ["lines.amount", str(TOO_BIG)], id="amount-2**53"),
    pytest.param(
        deduct("o-2", "eu", line(amount=2**52), line("other", 2**52)),
        ["lines.amount", str(2**53), str(MAX_AMOUNT)],
        id="total-2**53",
    ),
    pytest.param(
        deduct("o-2", "eu", line(amount=MAX_AMOUNT), line("other", 1)),
        ["lines.amount", str(MAX_AMOUNT)],
        id="total-max-plus-1",
    ),
    pytest.param(
        deduct("o-2", "eu", line(amount=1), line("other", 0)), ["lines.amount", "0"], id="second-line-amount-zero"
    ),
]


@pytest.mark.parametrize(("request_", "fragments"), BAD_ORDERS)
async def test_deduct_rejects_a_bad_order(spent: World, request_: agent_pb.DeductRequest, fragments: list[str]) -> None:
    assert spent.orders is not None
    async with unchanged(spent):
        await rejected(spent.orders.Deduct(request_, timeout=5), INVALID, *fragments)


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(deduct("o-2", "eu", line("ghost")), id="alone"),
        pytest.param(deduct("o-2", "eu", line(), line("ghost")), id="after-a-known-one"),
    ],
)
async def test_deduct_of_an_unknown_promotion_is_not_found(spent: World, request_: agent_pb.DeductRequest) -> None:
    assert spent.orders is not None
    async with unchanged(spent):
        await rejected(spent.orders.Deduct(request_, timeout=5), NOT_FOUND, "'ghost'")


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(order("o-1", "eu", ("promo", 3), ("other", 2)), id="other-amount"),
        pytest.param(order("o-1", "eu", ("promo", 2)), id="fewer-lines"),
        pytest.param(order("o-1", "eu", ("promo", 2), ("other", 2), user_id="user-2"), id="other-user"),
    ],
)
async def test_deduct_reusing_an_order_key_with_other_lines_fails(
    spent: World, request_: agent_pb.DeductRequest
) -> None:
    assert spent.orders is not None
    async with unchanged(spent):
        await rejected(spent.orders.Deduct(request_, timeout=5), FAILED, "'o-1'", "different lines")

    replay = await spent.orders.Deduct(order("o-1", "eu", ("promo", 2), ("other", 2)), timeout=5)
    assert replay.replayed
    assert [(x.promotion_id, x.amount) for x in replay.lines] == [("promo", 2), ("other", 2)]


async def test_deduct_accepts_128_byte_ids(spent: World) -> None:
    assert spent.orders is not None
    await create(spent.admin, promotion(ID_128, budget=1_000))

    answer = await spent.orders.Deduct(deduct(ID_128, "eu", line(ID_128, 1, "u" * 128)), timeout=5)

    assert (answer.order_key, answer.replayed) == (ID_128, False)
    assert [(x.promotion_id, x.amount, x.user_id) for x in answer.lines] == [(ID_128, 1, "u" * 128)]
    deducted = {b[0]: b[4] for b in await balances(spent.orders)}
    assert deducted[ID_128] == 1


async def test_deduct_accepts_64_lines(fresh_agent: World) -> None:
    assert fresh_agent.orders is not None
    for i in range(64):
        await create(fresh_agent.admin, promotion(f"p-{i}", budget=100))

    answer = await fresh_agent.orders.Deduct(deduct("o-64", "eu", *_lines(64)), timeout=5)

    assert len(answer.lines) == 64
    assert sum(b[4] for b in await balances(fresh_agent.orders)) == 64


# Deduct: a valid order the promotion refuses


async def _not_started(admin: center_grpc.PromotionAdminAsyncStub) -> None:
    await create(admin, promotion("refused", start_ms=now_ms() + HOUR_MS, end_ms=now_ms() + 2 * HOUR_MS))


async def _ended(admin: center_grpc.PromotionAdminAsyncStub) -> None:
    await create(admin, promotion("refused", start_ms=now_ms() - 2 * HOUR_MS, end_ms=now_ms() - HOUR_MS))


async def _us_only(admin: center_grpc.PromotionAdminAsyncStub) -> None:
    await create(admin, promotion("refused", regions=("us",)))


async def _frozen(admin: center_grpc.PromotionAdminAsyncStub) -> None:
    await create(admin, promotion("refused"))
    await admin.SetFrozen(center_pb.SetFrozenRequest(promotion_id="refused", frozen=True), timeout=5)


REFUSALS = [
    pytest.param(_not_started, "REJECT_REASON_NOT_ACTIVE", ["refused", "runs from"], id="not-started"),
    pytest.param(_ended, "REJECT_REASON_NOT_ACTIVE", ["refused", "runs from"], id="ended"),
    pytest.param(_us_only, "REJECT_REASON_REGION_NOT_ALLOWED", ["refused", "region eu", "us"], id="region"),
    pytest.param(_frozen, "REJECT_REASON_FROZEN", ["refused", "frozen"], id="frozen"),
]

Setup: TypeAlias = "Callable[[center_grpc.PromotionAdminAsyncStub], Awaitable[None]]"


@pytest.mark.parametrize(("setup", "reason", "fragments"), REFUSALS)
async def test_deduct_refused_by_the_promotion_grants_and_deducts_nothing(
    fresh_agent: World, setup: Setup, reason: str, fragments: list[str]
) -> None:
    assert fresh_agent.orders is not None
    await setup(fresh_agent.admin)

    async with unchanged(fresh_agent):
        error = await rejected(fresh_agent.orders.Deduct(order("o-1", "eu", ("refused", 1)), timeout=5), FAILED)

    assert reject_reason(error) == reason
    for fragment in fragments:
        assert fragment in (error.details() or "")
    usage = await fresh_agent.admin.GetUsage(center_pb.GetUsageRequest(promotion_id="refused"), timeout=5)
    assert (usage.unallocated, list(usage.regions)) == (1_000, [])
    assert await balances(fresh_agent.orders) == []


@pytest.mark.parametrize(("setup", "reason", "fragments"), REFUSALS)
async def test_deduct_refused_for_one_line_deducts_no_line(
    spent: World, setup: Setup, reason: str, fragments: list[str]
) -> None:
    assert spent.orders is not None
    await setup(spent.admin)

    async with unchanged(spent):
        error = await rejected(
            spent.orders.Deduct(order("o-2", "eu", ("promo", 1), ("refused", 1)), timeout=5), FAILED, *fragments
        )

    assert reject_reason(error) == reason


# Refund


BAD_REFUNDS = [
    pytest.param(refund("", "", ("promo", 1)), ["order_key", "is required"], id="order-key-empty"),
    pytest.param(refund(ID_129, "", ("promo", 1)), ["order_key", "129 bytes"], id="order-key-129-bytes"),
    pytest.param(refund("o-1", ID_129, ("promo", 1)), ["refund_id", "129 bytes"], id="refund-id-129-bytes"),
    pytest.param(refund("o-1", "r-1", ("promo", 0)), ["lines.amount", "0"], id="amount-zero"),
    pytest.param(refund("o-1", "r-1", ("promo", -1)), ["lines.amount", "-1"], id="amount-negative"),
    pytest.param(refund("o-1", "r-1", ("promo", TOO_BIG)), ["lines.amount", str(TOO_BIG)], id="amount-2**53"),
    pytest.param(refund("o-1", "r-1", ("", 1)), ["lines.promotion_id", "is required"], id="promo-id-empty"),
    pytest.param(refund("o-1", "r-1", (ID_129, 1)), ["lines.promotion_id", "129 bytes"], id="promo-id-129-bytes"),
    pytest.param(refund("o-1", "r-1", ("promo", 1), ("promo", 1)), ["'promo'", "twice"], id="promotion-twice"),
    pytest.param(refund("o-1", "r-1", *[(f"p-{i}", 1) for i in range(65)]), ["64", "65"], id="65-lines"),
    pytest.param(refund("o-1", "r-1", ("ghost", 1)), ["'o-1'", "'ghost'"], id="promotion-not-in-order"),
    pytest.param(
        refund("o-1", "r-1", ("promo", 1), ("ghost", 1)), ["'o-1'", "'ghost'"], id="one-promotion-not-in-order"
    ),
]


@pytest.mark.parametrize(("request_", "fragments"), BAD_REFUNDS)
async def test_refund_rejects_a_bad_request(
    spent: World, request_: agent_pb.RefundRequest, fragments: list[str]
) -> None:
    assert spent.orders is not None
    async with unchanged(spent):
        await rejected(spent.orders.Refund(request_, timeout=5), INVALID, *fragments)


async def test_refund_of_an_unknown_order_is_not_found(spent: World) -> None:
    assert spent.orders is not None
    async with unchanged(spent):
        await rejected(spent.orders.Refund(refund("nope", "", ("promo", 1)), timeout=5), NOT_FOUND, "'nope'")


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(refund("o-1", "r-1", ("promo", 3)), id="one-line"),
        pytest.param(refund("o-1", "r-1", ("other", 1), ("promo", 3)), id="after-a-good-line"),
    ],
)
async def test_refund_of_more_than_the_order_deducted_fails(spent: World, request_: agent_pb.RefundRequest) -> None:
    assert spent.orders is not None
    async with unchanged(spent):
        await rejected(spent.orders.Refund(request_, timeout=5), FAILED, "'promo'", "spent 2", "at most 2", "not 3")


async def test_refund_of_more_than_is_left_after_a_partial_refund_fails(spent: World) -> None:
    assert spent.orders is not None
    await spent.orders.Refund(refund("o-1", "r-1", ("promo", 1)), timeout=5)

    async with unchanged(spent):
        await rejected(
            spent.orders.Refund(refund("o-1", "r-2", ("promo", 2)), timeout=5),
            FAILED,
            "1 is already refunded",
            "at most 1",
        )


async def test_refund_accepts_a_128_byte_refund_id(spent: World) -> None:
    assert spent.orders is not None

    answer = await spent.orders.Refund(refund("o-1", ID_128, ("promo", 1)), timeout=5)

    assert [(x.promotion_id, x.amount) for x in answer.lines] == [("promo", 1)]
    refunded = {b[0]: b[5] for b in await balances(spent.orders)}
    assert refunded == {"promo": 1, "other": 0}
