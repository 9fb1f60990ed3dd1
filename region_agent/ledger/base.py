"""The regional ledger's contract, shared by the in-process and the Redis implementations.

A region's ledger holds, per promotion, the quota the center granted it and what orders
spent of it. Every method is atomic: it applies completely or not at all, also when
several agent processes share one ledger. Across all of them:

- available = granted - returned - deducted + refunded - held, and it never goes below zero;
- `deduct` takes every line of an order or none; an order key is deducted at most once,
  and a retry with the same lines returns the first answer with `replayed=True`. A line is all of
  its fields, prices included: a retry that states other prices is a different order under a used
  key (FailedPrecondition), as one for other amounts is, so an order has one price to judge it by;
- a reservation (`deduct` with `hold_ms`) holds its lines until it is confirmed (they
  become deducted), cancelled, or expires at its deadline (they become available again);
  each of those happens at most once per order key, whichever comes first;
- a refund id is applied at most once (a retry with other lines is refused), and an order
  never gets back more than it spent;
- a user never holds more of a promotion than its per-user limits allow;
- an order belongs to its placer, the identity that placed it (`placer`: its SPIFFE URI, or "" for a
  caller without one, on a plaintext agent), recorded with the order in the same atomic step and kept as
  long as the order is (at least as long as any refund of it). Only the same placer, exactly, may retry
  it, confirm, cancel or refund it: anyone else gets PermissionDenied (`not_the_placer`), which changes
  nothing and tells nothing of the order but that its key is taken. An order placed without an identity
  is therefore not anyone's once identities are on: only a plaintext call may touch it;
- a grant id is applied at most once, whichever agent process receives it;
- counters (granted, returned, deducted, refunded) only ever grow; `held` is a gauge;
- a counter at COUNTER_CEILING (quota_common.validation) or above takes nothing more: the call that would add to it is
  refused (FailedPrecondition) and changes nothing, so counters stay exact int64s.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from quota_common.clock import iso
from quota_common.errors import (
    FailedPrecondition,
    OrderKeyReused,
    OrderUnknown,
    PermissionDenied,
    Rejected,
    RejectReason,
)
from quota_common.validation import COUNTER_CEILING


@dataclass(frozen=True)
class Line:
    promotion_id: str
    amount: int
    user_id: str = ""
    unit_price: int = 0
    """What one unit of the goods costs before the promotion, minor units; 0: not stated."""
    discount: int = 0
    """What the promotion takes off one unit, minor units, at most `unit_price`; 0 with no unit price."""


@dataclass(frozen=True)
class UserLimit:
    """What one user may take of one promotion in this region; 0 is no limit."""

    units: int = 0
    orders: int = 0


NO_LIMITS: dict[str, UserLimit] = {}
UNLIMITED = UserLimit()


@dataclass(frozen=True)
class Joined:
    """A new life for the region's ledger, as the center's Join issued it."""

    incarnation: str
    after_earlier_life: bool = False
    """The region had an earlier life at the center (one that held quota), which this one replaces: an order
    placed in it is not in a ledger that did not keep it. False: no order was placed before this life."""


Issuer = Callable[[str], Awaitable[Joined]]
"""Answers a new life for the region's ledger: the center's Join, given the life the ledger held before it
lost its data ("" for a ledger that never had one)."""


@dataclass(frozen=True)
class Balance:
    granted: int = 0
    returned: int = 0
    deducted: int = 0
    refunded: int = 0
    held: int = 0
    """Held by reservations not yet confirmed, cancelled or expired."""
    kept: int | None = field(default=None, compare=False)
    """What the ledger itself keeps as available, where it keeps a figure of its own (the Redis ledger
    decides on it); None: derived from the counters. Reconciliation compares the two, so it is no part
    of a balance's equality: two balances with the same counters are the same balance."""

    @property
    def available(self) -> int:
        """What may be spent, as the ledger decides it."""
        return self.derived_available if self.kept is None else self.kept

    @property
    def derived_available(self) -> int:
        return self.granted - self.returned - self.deducted + self.refunded - self.held


@dataclass(frozen=True)
class DeductOutcome:
    """Either the order was deducted, or nothing changed and `over_limit` names the promotions
    whose per-user limit the line's user would break, or else `short` those whose allotment
    could not cover their line."""

    lines: tuple[Line, ...]
    replayed: bool = False
    short: tuple[str, ...] = ()
    over_limit: tuple[str, ...] = ()
    """Promotions whose per-user limit this order would break (checked before `short`)."""
    available_after: tuple[int, ...] = ()
    """Per line, what its promotion has left after this deduction (empty on a replay)."""
    expires_at_ms: int = 0
    """For a reservation, the wall-clock deadline (Unix ms) after which it lapses by itself."""

    @property
    def accepted(self) -> bool:
        return not (self.short or self.over_limit)


@dataclass(frozen=True)
class RefundOutcome:
    lines: tuple[Line, ...]
    replayed: bool = False


class Settle(enum.Enum):
    """What can end a reservation."""

    CONFIRM = "confirm"
    CANCEL = "cancel"


@dataclass(frozen=True)
class SettleOutcome:
    lines: tuple[Line, ...]
    replayed: bool = False
    expired: bool = False
    """A cancel found the reservation already expired: its quota went back at the deadline."""


@dataclass(frozen=True)
class OrderView:
    """An order as its ledger holds it, read without changing anything."""

    state: str
    """DEDUCTED, RESERVED, CONFIRMED, CANCELLED or EXPIRED: a reservation past its deadline reads EXPIRED
    even before the sweep released it (settling it would)."""
    lines: tuple[Line, ...]
    """As placed."""
    expires_at_ms: int = 0
    """A reservation's deadline (Unix ms, by the ledger's clock); 0 for a deduction."""
    refunded: tuple[Line, ...] = ()
    """Given back so far, one line per promotion refunded (user and prices not stated)."""


RETENTION_S = 7 * 86_400
"""How long a ledger remembers orders and refunds by default, so their retries replay: above any caller's retry
window."""


class Ledger(Protocol):
    outlives_agent: bool
    """Whether what it holds outlives the agent's process: a shared Redis ledger does (the region's other agents
    spend from it, a restarted agent takes it up); an in-process one dies with its agent, which therefore gives
    back its unspent quota when it stops."""

    async def aclose(self) -> None:
        """Releases what the ledger itself opened; it is not used afterwards."""
        ...

    async def incarnation(self, issue: Issuer | None = None) -> str:
        """Identifies this ledger's life; called before anything else. A ledger that has none yet (a new
        one, or one whose store lost its data: it raises LedgerLost from its writes) takes the one
        `issue()` answers (the center's Join), or without `issue` makes an unsigned one (benchmarks and
        tests that run a ledger without a center; a center refuses it)."""
        ...

    async def find_order(
        self, order_key: str, lines: tuple[Line, ...], reserve: bool = False, placer: str = ""
    ) -> DeductOutcome | None:
        """The first answer for an order key already deducted (or, with `reserve`, reserved),
        else None. Raises PermissionDenied when another placer made it, FailedPrecondition when
        the key was used for different lines or for the other kind of call."""
        ...

    async def get_order(self, order_key: str, placer: str = "") -> OrderView | None:
        """What became of an order, or None when this ledger life holds no order with that key (never placed
        in it, or forgotten after the retention period). Changes nothing: a reservation is neither extended
        nor released by it. Raises PermissionDenied when another placer made the order."""
        ...

    async def life_lost(self) -> bool:
        """Whether the ledger's current life began after an earlier one of the region was lost (its orders gone
        with it), as far as the ledger can tell."""
        ...

    async def deduct(
        self,
        order_key: str,
        lines: tuple[Line, ...],
        limits: Mapping[str, UserLimit] = NO_LIMITS,
        hold_ms: int = 0,
        placer: str = "",
    ) -> DeductOutcome:
        """`limits` maps a promotion to its per-user limit; a refund gives the units back, and
        the order stops counting once its line of that promotion is fully refunded. With
        `hold_ms` > 0 the order is a reservation that lapses `hold_ms` after it was made.
        A new order is recorded as `placer`'s; a retry from another placer raises PermissionDenied."""
        ...

    async def settle(self, order_key: str, how: Settle, placer: str = "") -> SettleOutcome:
        """Confirms or cancels a reservation. NotFound for an unknown order key; PermissionDenied
        when `placer` did not place it; FailedPrecondition for an order that is no reservation, a
        confirm after a cancel or the deadline (reason RESERVATION_EXPIRED), or a cancel after a
        confirm (refund it instead)."""
        ...

    async def expire_reservations(self) -> int:
        """Releases reservations past their deadline; returns how many. Settling one also checks
        its deadline, so this only decides how soon expired quota is available again."""
        ...

    async def refund(self, order_key: str, refund_id: str, lines: tuple[Line, ...], placer: str = "") -> RefundOutcome:
        """Empty `lines` refunds whatever the order has left. NotFound for an unknown
        order, PermissionDenied when `placer` did not place it (a retry of a refund too),
        InvalidArgument for a promotion not in it, FailedPrecondition above what it has
        left or for a reservation not confirmed. A refund keeps the order's record (and so
        its placer) for the retention period from then."""
        ...

    async def apply_grant(self, grant_id: str, promotion_id: str, amount: int, incarnation: str) -> bool:
        """Adds a grant the center made to `incarnation`; False when this grant id was applied
        before. Raises LedgerLost when the ledger is no longer that incarnation: a grant to an
        old life must never be spent by a new one (the center writes it off with the old)."""
        ...

    async def return_quota(self, promotion_id: str, amount: int) -> int:
        """Removes up to `amount` of available quota to return it to the center, counting it
        as returned before the center hears of it. Returns how much was removed."""
        ...

    async def claim_refill(self, promotion_id: str, holder: str, ttl_s: float) -> bool:
        """Claims, for at most `ttl_s`, the right to acquire quota for this promotion, so the
        region's agents send one acquire at a time; False while another holder has it. Only an
        optimisation: grants apply once by id, so a claim that lapses early costs a second
        acquire, never correctness (which is why the claim needs no fencing token)."""
        ...

    async def release_refill(self, promotion_id: str, holder: str) -> None:
        """Releases the claim if `holder` still has it."""
        ...

    async def balance(self, promotion_id: str) -> Balance: ...

    async def balances(self) -> dict[str, Balance]: ...


# The order states and the answers every ledger gives, so the in-process and the Redis ledger speak the same
# words (the Redis scripts store the same state names).

DEDUCTED, RESERVED, CONFIRMED, CANCELLED, EXPIRED = "deducted", "reserved", "confirmed", "cancelled", "expired"


def lines_match(recorded: Sequence[Line], given: Sequence[Line]) -> bool:
    """Whether a call's lines are those its order (or refund) was recorded with, in any order: each names a
    promotion once, so a retry that rebuilt its lines from a set or a dict is the same call. Told apart, its
    caller would hear "use a new key for a different order", and the same purchase would spend twice."""
    return tuple(recorded) == tuple(given) or sorted(recorded, key=_promotion) == sorted(given, key=_promotion)


def _promotion(line: Line) -> str:
    return line.promotion_id


def check_replay(order_key: str, same_lines: bool, was_reservation: bool, reserve: bool) -> None:
    """Raises unless a call for an existing order key is a retry of the call that made it."""
    if not same_lines:
        raise OrderKeyReused(
            f"order key {order_key!r} was already used with different lines; use a new order key for a different order"
        )
    if was_reservation and not reserve:
        raise OrderKeyReused(
            f"order key {order_key!r} was used for a reservation, which is confirmed or cancelled, not deducted "
            "(GetOrder tells whether it is still held); a new order needs a new key"
        )
    if reserve and not was_reservation:
        raise OrderKeyReused(f"order key {order_key!r} was deducted already; a reservation needs a new order key")


def settled_before(
    order_key: str, how: Settle, state: str, expires_at_ms: int, lines: tuple[Line, ...]
) -> SettleOutcome:
    """The answer to a settle of an order that is no longer (or never was) a pending reservation:
    a replay of the same settle, a cancel after expiry, or an error saying what to do instead."""
    done = {Settle.CONFIRM: CONFIRMED, Settle.CANCEL: CANCELLED}[how]
    if state == done:
        return SettleOutcome(lines, replayed=True)
    if how is Settle.CANCEL and state == EXPIRED:
        return SettleOutcome(lines, expired=True)
    if state == DEDUCTED:
        raise FailedPrecondition(
            f"order {order_key!r} was deducted, not reserved: there is nothing to {how.value}; refund it instead"
        )
    if state == EXPIRED:
        raise Rejected(
            RejectReason.RESERVATION_EXPIRED,
            f"the reservation {order_key!r} expired at {iso(expires_at_ms)} and its quota went back to the "
            "allotment; reserve again with a new order key",
        )
    if state == CANCELLED:
        raise FailedPrecondition(f"the reservation {order_key!r} was cancelled; reserve again with a new order key")
    raise FailedPrecondition(f"the reservation {order_key!r} is confirmed; refund it instead of cancelling it")


def not_the_placer(order_key: str, placer: str) -> PermissionDenied:
    """The refusal of a call on an order another identity placed: it names the caller, never the order's
    placer or contents."""
    who = placer or "a caller without an identity (a plaintext call)"
    return PermissionDenied(
        f"{who} may not use order key {order_key!r}: that order was placed by another identity, and only the "
        "identity that placed an order may read, retry, confirm, cancel or refund it; use a new order key for a new "
        "order"
    )


def refund_id_reused(order_key: str, refund_id: str) -> OrderKeyReused:
    return OrderKeyReused(
        f"refund {refund_id!r} of order {order_key!r} was already made with different lines; "
        "use a new refund id for another refund"
    )


def unknown_reservation(order_key: str) -> OrderUnknown:
    return OrderUnknown(f"no reservation with order key {order_key!r} in this region")


def unknown_deduction(order_key: str) -> OrderUnknown:
    return OrderUnknown(f"no deduction with order key {order_key!r} in this region; nothing to refund")


def at_ceiling(promotion_id: str, counter: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"this region's ledger has counted {COUNTER_CEILING} units or more as {counter} for promotion "
        f"{promotion_id!r}, its ceiling: nothing more can be {counter} in this incarnation. Start the region's "
        "ledger over as a new incarnation (restart an in-process agent; with Redis, delete the key "
        "{quota:<region>}:incarnation) and the center writes off what the old one holds"
    )


def unconfirmed_refund(order_key: str, state: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"order {order_key!r} is a reservation that is {state}, not confirmed; only deducted or confirmed orders "
        "can be refunded (cancel a pending reservation instead)"
    )
