"""The bugs `sitecustomize` plants, by name. Each replaces one method of the code under test, in this process only,
with a version that has the bug; every server a chaos run starts gets the same plant (each class is only used by the
server it belongs to).

- ack-before-write (the agent): a deduction is answered ok as soon as its promotion may be spent, and the ledger
  write runs afterwards with nobody looking at its outcome, so a deduction the ledger refuses (the region's
  allotment is spent, the budget sold out) stays acknowledged.
- double-grant (the center): every third grant it commits loses its answer (UNAVAILABLE, as a dropped connection
  would), so the agent retries the acquire with the same request id; the retry is granted again, under a new grant
  id, instead of being answered with the grant already made. The region receives the first grant as well, since
  its next renewal resends a grant the region has not applied; the retry's answer waits (a little) for that
  renewal, so the double delivery does not hang on a race. The region then holds the grant twice, the books once.
  (A second grant booked as well would do no visible harm: the renewal would deliver both, and the books would
  still count all the region holds. A grant delivered twice and counted once is what the grant id guards against.)
- forget-refund (the ledger): the first refund it would apply is answered ok and remembered (a retry replays that
  answer) but never applied: the order's units stay deducted.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import logging
import uuid
from collections.abc import Callable
from dataclasses import replace

LOSE_EVERY = 3
"""double-grant: the answer to every this many-th grant the center commits is lost."""
RESEND_WAIT_S = 1.2
"""double-grant: how long a retry's answer waits for the renewal that resends the first grant; under the agent's
call timeout (2 s), several of its renew intervals in a chaos run (0.5 s)."""

log = logging.getLogger("planted")


def install(name: str) -> None:
    plants: dict[str, Callable[[], None]] = {
        "ack-before-write": _ack_before_write,
        "double-grant": _double_grant,
        "forget-refund": _forget_refund,
    }
    if name not in plants:
        raise ValueError(f"no plant named {name!r}; the plants are {', '.join(sorted(plants))}")
    plants[name]()


def _ack_before_write() -> None:
    from region_agent.agent import Agent
    from region_agent.ledger.base import DeductOutcome, Line

    deduct = Agent.deduct
    writes: set[asyncio.Task[DeductOutcome]] = set()

    def written(write: asyncio.Task[DeductOutcome]) -> None:
        writes.discard(write)
        if not write.cancelled():
            write.exception()  # looked at by nobody: that is the bug

    async def acknowledged_first(
        self: Agent,
        order_key: str,
        region: str,
        lines: tuple[Line, ...],
        time_remaining_s: float | None = None,
        hold_ms: int = 0,
        placer: str = "",
    ) -> DeductOutcome:
        if hold_ms or region != self.settings.region:
            return await deduct(self, order_key, region, lines, time_remaining_s, hold_ms, placer)
        previous = await self._ledger.find_order(order_key, lines, placer=placer)
        if previous is not None:
            return previous
        for item in await self._supply.track([line.promotion_id for line in lines]):
            self._check_spendable_now(item)
        write = asyncio.create_task(deduct(self, order_key, region, lines, time_remaining_s, hold_ms, placer))
        writes.add(write)
        write.add_done_callback(written)
        return DeductOutcome(lines)

    Agent.deduct = acknowledged_first  # type: ignore[method-assign]


def _double_grant() -> None:
    from quota_center.center_agents import AcquireResult, CenterForAgents
    from quota_center.center_renewals import CenterRenewals, Directive
    from quota_common.errors import QuotaError, Unavailable
    from quota_common.model import Report

    acquire, renew = CenterForAgents.acquire, CenterForAgents.renew
    committed = itertools.count(1)
    lost: dict[str, tuple[str, asyncio.Event]] = {}
    """By request id: the grant whose answer was lost, and an event set once a renewal resent it."""

    async def grants_again(
        self: CenterForAgents,
        region: str,
        incarnation: str,
        promotion_id: str,
        amount: int,
        request_id: str,
        demand: int,
    ) -> AcquireResult:
        result = await acquire(self, region, incarnation, promotion_id, amount, request_id, demand)
        if request_id in lost:
            # The retry: `result` is the grant already made (the real center's answer); grant it again instead.
            first, resent = lost[request_id]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(resent.wait(), RESEND_WAIT_S)
            again = uuid.uuid4().hex
            log.warning(
                "planted: %s of %s granted again as %s (first resent: %s)", first, promotion_id, again, resent.is_set()
            )
            return replace(result, grant=replace(result.grant, grant_id=again))
        if next(committed) % LOSE_EVERY == 0:
            lost[request_id] = (result.grant.grant_id, asyncio.Event())
            log.warning(
                "planted: the answer to grant %s of %s to %s is lost", result.grant.grant_id, promotion_id, region
            )
            raise Unavailable("planted: the answer to this acquire was lost after its grant was committed")
        return result

    async def renew_noting_resends(
        self: CenterRenewals, region: str, incarnation: str, reports: dict[str, Report]
    ) -> list[Directive | QuotaError]:
        answers = await renew(self, region, incarnation, reports)
        resent = {grant_id for a in answers if isinstance(a, Directive) for grant_id, _ in a.unapplied_grants}
        for grant_id, event in lost.values():
            if grant_id in resent:
                event.set()
        return answers

    CenterForAgents.acquire = grants_again  # type: ignore[method-assign]
    CenterForAgents.renew = renew_noting_resends  # type: ignore[method-assign]


def _forget_refund() -> None:
    from region_agent.ledger.base import Line, RefundOutcome
    from region_agent.ledger.memory import InProcessLedger

    refund = InProcessLedger.refund
    forgotten: list[tuple[str, str]] = []

    async def forgets_the_first(
        self: InProcessLedger, order_key: str, refund_id: str, lines: tuple[Line, ...], placer: str = ""
    ) -> RefundOutcome:
        if forgotten:
            return await refund(self, order_key, refund_id, lines, placer)
        # The ledger's own answer (a refusal raises as it would), worked out on a copy that is dropped.
        answer = copy.deepcopy(self._ledger).refund(order_key, refund_id, lines, self._clock.wall_ms(), placer)
        if not answer.replayed:
            log.warning("planted: refund %s of order %s answered ok and not applied", refund_id, order_key)
            forgotten.append((order_key, refund_id))
            self._ledger._refunds[(order_key, refund_id)] = (lines, answer)
        return answer

    InProcessLedger.refund = forgets_the_first  # type: ignore[method-assign]
