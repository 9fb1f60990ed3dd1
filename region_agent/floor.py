"""The price floor, checked by the agent on every order line it deducts or reserves, with no center call.

A promotion may set the least the buyer pays for one unit after its discount: an absolute price
(`floor_price`, minor units), a share of the line's unit price (`floor_bps`), or both (the higher
wins). This catches a flash price typed one zero short where it is spent, also while the center is
unreachable. A line that states no unit price (0: callers from before prices) is not judged: nothing
says what it sold for. Integers only, so a price exactly at the floor is never refused by rounding.

With `block_below_floor` the order is refused (REJECT_REASON_BELOW_FLOOR); without it the order goes
through. Either way the lines are counted (`BelowFloorCount`), reported to the center with every
renewal as the evidence its alert reads.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from quota_common.errors import Rejected, RejectReason
from quota_common.model import Promotion
from region_agent.ledger.base import Line

BPS = 10_000


def paid_per_unit(line: Line) -> int:
    return line.unit_price - line.discount


def floor_of(promotion: Promotion, line: Line) -> int:
    """The least one unit of `line` may cost the buyer: the higher floor, a share rounded up to a whole minor unit."""
    return max(promotion.floor_price, -(-line.unit_price * promotion.floor_bps // BPS))


def is_below_floor(promotion: Promotion, line: Line) -> bool:
    if not line.unit_price:
        # Nothing says what an unpriced line sold for; but leaving the price out must not be a way round a
        # floor that refuses, so such a floor refuses unpriced lines too.
        return promotion.block_below_floor and (promotion.floor_price > 0 or promotion.floor_bps > 0)
    paid = paid_per_unit(line)
    return paid < promotion.floor_price or paid * BPS < line.unit_price * promotion.floor_bps


@dataclass(frozen=True)
class BelowFloor:
    """An order line below its promotion's floor."""

    promotion: Promotion
    line: Line

    def describe(self) -> str:
        if not self.line.unit_price:
            return f"promotion {self.promotion.id} sets a price floor, and the line states no unit_price"
        return (
            f"promotion {self.promotion.id} sells a unit at {paid_per_unit(self.line)} "
            f"({self.line.unit_price} less a discount of {self.line.discount}), below its floor of "
            f"{floor_of(self.promotion, self.line)}"
        )


def below_floor(promotions: list[Promotion], lines: tuple[Line, ...]) -> list[BelowFloor]:
    """The order's lines below their promotions' floors; `promotions` match `lines` one to one."""
    return [
        BelowFloor(promotion, line)
        for promotion, line in zip(promotions, lines, strict=True)
        if is_below_floor(promotion, line)
    ]


def refuse_if_blocked(below: list[BelowFloor]) -> None:
    """Refuses the order when a line below the floor belongs to a promotion that blocks such lines."""
    for item in below:
        if item.promotion.block_below_floor:
            raise Rejected(
                RejectReason.BELOW_FLOOR,
                f"{item.describe()}, and it refuses orders below the floor: check the line's unit_price and "
                "discount (a price typed a zero short?), or ask the budget owner to change the floor",
                item.promotion.id,
            )


class BelowFloorCount:
    """Per promotion, the order lines this agent process saw below the floor in one ledger life. Kept in
    memory: an alert's evidence, not money, so a restart that loses it loses no quota. Each of a region's
    agents counts the orders it served."""

    def __init__(self) -> None:
        self._life = ""
        self._lines: Counter[str] = Counter()

    def add(self, life: str, below: list[BelowFloor]) -> None:
        self._follow(life)
        self._lines.update(item.promotion.id for item in below)

    def of(self, life: str, promotion_id: str) -> int:
        return self._lines[promotion_id] if life == self._life else 0

    def _follow(self, life: str) -> None:
        # A new ledger life counts from zero, as its ledger's counters do; lines seen before the agent
        # first joined (life "") belong to the life it then joins.
        if life != self._life:
            if self._life:
                self._lines.clear()
            self._life = life
