"""The asyncio client of a region run as several cells (quota_common.cells), each with its own agents:

    cells = {"eu.1": ["10.0.1.5:7443", "10.0.1.6:7443"], "eu.2": ["10.0.2.5:7443"]}
    async with AsyncCellsClient(cells, tls=Tls(cert, key, ca)) as quota:
        deducted = await quota.deduct("order-1", [Line("coupon-10", 1, "user-7")])

An order goes to the cell of its user (`cell_for`, the same for every order service of the region), so
that user's per-user limits are counted in one ledger, exactly; an order naming no user goes by its order
key. Confirm, cancel, refund and get_order carry only the order key: with `user=` they go straight to its
cell, without it they ask the cells in turn until one knows the order.

What cells cost: an order key is unique within its cell only (the same key for another user's order in
another cell is a second order), and each cell holds its own allotment, so when the budget sells out up to
one refill's worth per cell may sit in cells whose users stopped buying until their renewals give it back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import TypeVar

from quota_client import model
from quota_client.aio import AsyncQuotaClient
from quota_client.connection import Tls
from quota_client.errors import InvalidRequest, LedgerLifeLost, OrderUnknown
from quota_client.model import Line, OrderStatus
from quota_client.retry import RetryPolicy
from quota_common.cells import cell_for, region_of, require_cells
from quota_common.clock import Clock
from quota_common.errors import InvalidArgument

R = TypeVar("R")


def routing_key(order_key: str, lines: Sequence[Line]) -> str:
    """What picks an order's cell: the one user its lines name, else (no user) its order key.
    InvalidRequest for lines of several users, whose limits would then be counted in one user's cell."""
    users = sorted({line.user_id for line in lines if line.user_id})
    if len(users) > 1:
        raise InvalidRequest(
            f"order {order_key!r} names users {', '.join(users)}; in a region with cells an order is one user's, "
            "so that user's limits are counted in one cell: split it into one order per user"
        )
    return users[0] if users else order_key


class AsyncCellsClient:
    """Calls the cells of one region; `cells` maps each cell's name (`eu.1`) to its agents' addresses. Each
    cell's calls retry and fail over among its own agents as AsyncQuotaClient's do."""

    def __init__(
        self,
        cells: Mapping[str, str | Sequence[str]],
        *,
        tls: Tls | None = None,
        policy: RetryPolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        try:
            names = require_cells("cells", sorted(cells))
        except InvalidArgument as error:
            raise ValueError(error.message) from None
        self.region = region_of(names[0])
        self.cells = {name: AsyncQuotaClient(cells[name], name, tls=tls, policy=policy, clock=clock) for name in names}

    async def __aenter__(self) -> AsyncCellsClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        for cell in self.cells.values():
            await cell.close()

    def cell_of(self, user_id: str) -> str:
        """The cell that serves `user_id`'s orders."""
        return cell_for(user_id, tuple(self.cells))

    async def deduct(self, order_key: str, lines: Sequence[Line], *, deadline_s: float | None = None) -> model.Deducted:
        cell = self.cells[self.cell_of(routing_key(order_key, lines))]
        return await cell.deduct(order_key, lines, deadline_s=deadline_s)

    async def reserve(
        self, order_key: str, lines: Sequence[Line], ttl_s: float = 0, *, deadline_s: float | None = None
    ) -> model.Reserved:
        cell = self.cells[self.cell_of(routing_key(order_key, lines))]
        return await cell.reserve(order_key, lines, ttl_s, deadline_s=deadline_s)

    async def confirm(
        self, order_key: str, *, user: str | None = None, deadline_s: float | None = None
    ) -> model.Confirmed:
        return await self._placed(user, lambda cell: cell.confirm(order_key, deadline_s=deadline_s))

    async def cancel(
        self, order_key: str, *, user: str | None = None, deadline_s: float | None = None
    ) -> model.Cancelled:
        return await self._placed(user, lambda cell: cell.cancel(order_key, deadline_s=deadline_s))

    async def refund(
        self,
        order_key: str,
        refund_id: str | None = None,
        lines: Sequence[model.RefundLine] | None = None,
        *,
        user: str | None = None,
        deadline_s: float | None = None,
    ) -> model.Refunded:
        return await self._placed(user, lambda cell: cell.refund(order_key, refund_id, lines, deadline_s=deadline_s))

    async def get_order(
        self, order_key: str, *, user: str | None = None, deadline_s: float | None = None
    ) -> model.OrderState:
        """What became of an order in its cell (`user`'s; without it every cell is asked, and the one that
        knows the order answers; UNKNOWN if none does)."""
        if user is not None:
            return await self.cells[self.cell_of(user)].get_order(order_key, deadline_s=deadline_s)
        unknown = [await cell.get_order(order_key, deadline_s=deadline_s) for cell in self.cells.values()]
        known = [state for state in unknown if state.status is not OrderStatus.UNKNOWN]
        # Unknown everywhere: the answer of a cell that lost a ledger life, where the order may have been.
        return (known or sorted(unknown, key=lambda state: not state.ledger_life_lost))[0]

    async def status(self, *, deadline_s: float | None = None) -> dict[str, model.RegionStatus]:
        """Every cell's status, by cell."""
        return {name: await cell.status(deadline_s=deadline_s) for name, cell in self.cells.items()}

    async def _placed(self, user: str | None, call: Callable[[AsyncQuotaClient], Awaitable[R]]) -> R:
        """`call` on `user`'s cell, or on each cell in turn until one knows the order: a cell that does not
        answers OrderUnknown (or LedgerLifeLost) and changes nothing. Raises what the last cell did, a lost
        ledger life before an unknown order."""
        if user is not None:
            return await call(self.cells[self.cell_of(user)])
        unknown: OrderUnknown | None = None
        lost: LedgerLifeLost | None = None
        for cell in self.cells.values():
            try:
                return await call(cell)
            except LedgerLifeLost as error:
                lost = error
            except OrderUnknown as error:
                unknown = error
        raise lost or unknown or AssertionError("a client has at least one cell")
