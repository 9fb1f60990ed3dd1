"""A region run as two cells (eu.1, eu.2), each an agent with its own ledger, served in process with a
center: a promotion allowed in eu is spent in both, each user's orders go to one cell so the user's limit
holds exactly, and calls that carry only an order key find its cell."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_client import AsyncCellsClient, Line, OrderStatus, RegionNotAllowed, UserLimit
from quota_testing.inprocess import running_agent, running_center
from quota_testing.support import promotion

USERS, TRIES, LIMIT = 20, 4, 2


@pytest.fixture
async def cells(tmp_path: Path) -> AsyncIterator[tuple[str, AsyncCellsClient]]:
    async with (
        running_center(tmp_path) as center,
        running_agent("eu.1", center.address) as one,
        running_agent("eu.2", center.address) as two,
        AsyncCellsClient({"eu.1": one.address, "eu.2": two.address}) as client,
    ):
        yield center.address, client


async def create(center: str, sale: center_pb.Promotion) -> None:
    async with grpc.aio.insecure_channel(center) as channel:
        admin = center_grpc.PromotionAdminStub(channel)
        await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=sale), timeout=5)


async def test_each_users_orders_go_to_one_cell_so_the_users_limit_is_exact(
    cells: tuple[str, AsyncCellsClient],
) -> None:
    center, quota = cells
    await create(center, promotion("sale", budget=10_000, regions=("eu",), per_user_orders=LIMIT))

    async def shopper(user: str) -> int:
        accepted = 0
        for attempt in range(TRIES):
            try:
                await quota.deduct(f"{user}-order-{attempt}", [Line("sale", 1, user)])
                accepted += 1
            except UserLimit:
                pass
        return accepted

    accepted = await asyncio.gather(*(shopper(f"user-{n}") for n in range(USERS)))
    statuses = await quota.status()

    assert accepted == [LIMIT] * USERS
    by_cell = {name: sum(b.deducted for b in status.balances) for name, status in statuses.items()}
    assert sum(by_cell.values()) == USERS * LIMIT
    assert all(by_cell.values()), f"users spread over both cells: {by_cell}"
    for n in range(USERS):
        user = f"user-{n}"
        assert (await quota.get_order(f"{user}-order-0", user=user)).status is OrderStatus.DEDUCTED


async def test_calls_with_only_an_order_key_find_its_cell(cells: tuple[str, AsyncCellsClient]) -> None:
    center, quota = cells
    await create(center, promotion("sale", budget=100, regions=("eu",)))
    # Users of each cell, so that both a first and a second cell in turn hold an order.
    users = {quota.cell_of(f"u{n}"): f"u{n}" for n in range(50)}
    for cell, user in users.items():
        await quota.deduct(f"paid-{cell}", [Line("sale", 3, user)])
        await quota.reserve(f"held-{cell}", [Line("sale", 1, user)], ttl_s=60)

    for cell in users:
        assert (await quota.get_order(f"paid-{cell}")).status is OrderStatus.DEDUCTED
        assert (await quota.refund(f"paid-{cell}")).lines[0].amount == 3
        assert (await quota.confirm(f"held-{cell}")).lines[0].amount == 1
    assert (await quota.get_order("never-placed")).status is OrderStatus.UNKNOWN
    assert set(users) == {"eu.1", "eu.2"}


async def test_a_cell_spends_only_promotions_of_its_region(cells: tuple[str, AsyncCellsClient]) -> None:
    center, quota = cells
    await create(center, promotion("elsewhere", budget=100, regions=("us", "eu.9")))

    with pytest.raises(RegionNotAllowed):
        await quota.deduct("o-1", [Line("elsewhere", 1, "user-1")])


@pytest.mark.parametrize("name", ["eu.", ".1", "eu.1.2"])
async def test_a_malformed_cell_name_is_refused_where_a_region_is_named(tmp_path: Path, name: str) -> None:
    async with running_center(tmp_path) as center:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await create(center.address, promotion("bad", regions=(name,)))

    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "<region>.<cell>" in (refused.value.details() or "")
