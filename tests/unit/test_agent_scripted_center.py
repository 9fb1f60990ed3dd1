"""The agent against a scripted center on the fake clock: what it does with each answer the center can
give (a refused report, an emergency switch in a renewal, an unknown promotion, an outage)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace

import pytest

from quota_common.clock import FakeClock
from quota_common.errors import NotFound, QuotaError, Rejected, RejectReason, Unavailable
from quota_common.incarnation import new_incarnation
from quota_common.model import EmergencyFreeze, Kind, Promotion, Report
from quota_common.validation import MAX_RENEWAL
from quota_testing.support import eventually
from region_agent.agent import Agent, AgentSettings
from region_agent.cache import CatalogSnapshot
from region_agent.center_port import GrantAnswer, OpeningAnswer, Page, RegionLease, RenewalDirective, RenewAnswer
from region_agent.ledger.base import Joined, Line
from region_agent.ledger.memory import InProcessLedger
from region_agent.lookups import LOOKUP_BURST, LOOKUPS_PER_S
from region_agent.supply_core import UNKNOWN_TTL_S

HOUR_MS = 3_600_000
LEASE_TTL_S = 10.0
QUIET = AgentSettings("eu", renew_interval_s=3_600, pull_interval_s=3_600, push=False, opening_lookahead_s=0)
"""No loop runs by itself during a test: the test renews when it means to."""


class ScriptedCenter:
    """A CenterPort that answers as the test sets it up; counts what it is asked."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self.calls = 0
        self.fetches = 0
        self.promotions: dict[str, Promotion] = {}
        self.refusals: dict[str, str] = {}
        """Per promotion, the refusal its report gets at renewal (with a grant the agent must not apply)."""
        self.emergency = EmergencyFreeze()
        self.catalog_down = False
        self.renewals_failing = 0
        self.renewals = 0
        self.renewal_seconds = 0.0
        """How long each renewal takes on the fake clock."""
        self.renewals_sent: list[tuple[float, list[str]]] = []
        """Each renewal: when it was sent (monotonic) and the promotions it reported."""
        self.granted = 0
        """What acquires were granted in all; a grant counts once made, whether or not its answer arrives."""
        self.answers_held: asyncio.Event | None = None
        """While set up and not yet set, acquires are granted but their answers wait (a slow link)."""
        self.answers_waiting = 0
        self.reports: dict[str, Report] = {}
        """Per promotion, the counters of the last renewal that reported it."""
        self.fetches_failing = False
        """GetPromotion fails (the center went down right after answering a renewal)."""
        self.region_lease = False
        """Renewals answer as a center with region leases does, rather than renewing only what was reported."""

    def create(self, promotion_id: str, max_per_order: int = 0, budget: int = 10**9) -> None:
        now = self._clock.wall_ms()
        self.promotions[promotion_id] = Promotion(
            promotion_id,
            Kind.COUNT,
            "",
            budget,
            now - HOUR_MS,
            now + HOUR_MS,
            ("eu",),
            revision=1,
            max_per_order=max_per_order,
        )

    async def list_changes(self, since_revision: int) -> Page:
        self.calls += 1
        if self.catalog_down:
            raise Unavailable("the catalog page is larger than the message limit")
        return Page(CatalogSnapshot(list(self.promotions.values()), self.emergency, 1), more=False)

    async def promotion(self, promotion_id: str) -> Promotion:
        self.calls += 1
        self.fetches += 1
        if self.fetches_failing:
            raise Unavailable("failed to connect to all addresses")
        if promotion_id not in self.promotions:
            raise NotFound(f"no promotion {promotion_id}")
        return self.promotions[promotion_id]

    async def join(self, replaces: str) -> Joined:
        self.calls += 1
        return Joined(new_incarnation(self._clock.wall_ms() * 1_000_000))

    async def acquire(
        self, incarnation: str, promotion_id: str, amount: int, request_id: str, demand_per_minute: int
    ) -> GrantAnswer:
        self.calls += 1
        self.granted += amount
        if self.answers_held is not None:
            self.answers_waiting += 1
            await self.answers_held.wait()
        return GrantAnswer(uuid.uuid4().hex, amount, LEASE_TTL_S, 10**9)

    async def acquire_openings(
        self, incarnation: str, requests: Sequence[tuple[str, int, str]]
    ) -> tuple[list[OpeningAnswer], float]:
        raise Unavailable("the scripted center grants no openings: its agents look ahead 0 s")

    def watch(self, since_revision: int, idle_timeout_s: float) -> AsyncIterator[Page]:
        raise Unavailable("the scripted center has no catalog stream: its agents do not follow one")

    async def return_quota(self, incarnation: str, promotion_id: str, counters: Report) -> int:
        self.calls += 1
        return 10**9

    async def renew(
        self, incarnation: str, reports: Mapping[str, Report], region_lease: RegionLease | None = None
    ) -> RenewAnswer:
        """Answers as a center older than the region lease: it renews only the promotions reported."""
        self.calls += 1
        self.renewals += 1
        self.renewals_sent.append((self._clock.monotonic(), list(reports)))
        self.reports.update(reports)
        self._clock.advance(self.renewal_seconds)
        if self.renewals_failing:
            self.renewals_failing -= 1
            raise Unavailable("failed to connect to all addresses")
        directives = [self._directive(promotion_id) for promotion_id in reports]
        if not self.region_lease:
            return RenewAnswer(LEASE_TTL_S, directives, self.emergency)
        # As a current center: one lease for the region, and a notice of each promotion changed since the first
        # revision that the renewal did not report.
        changed = [pid for pid, promotion in self.promotions.items() if pid not in reports and promotion.revision > 1]
        notices = [self._directive(promotion_id) for promotion_id in changed]
        return RenewAnswer(LEASE_TTL_S, directives, self.emergency, region_lease=True, notices=notices)

    def _directive(self, promotion_id: str) -> RenewalDirective:
        refusal = self.refusals.get(promotion_id, "")
        if not refusal:
            known = self.promotions.get(promotion_id)
            return RenewalDirective(promotion_id, revision=known.revision if known else 1)
        return RenewalDirective(promotion_id, refusal, revision=1, unapplied_grants=(("never-to-apply", 1_000),))

    async def close(self) -> None:
        pass


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def center(clock: FakeClock) -> ScriptedCenter:
    return ScriptedCenter(clock)


@pytest.fixture
async def agent(center: ScriptedCenter, clock: FakeClock) -> AsyncIterator[Agent]:
    agent = Agent(QUIET, InProcessLedger(clock), center, clock)
    await agent.start()
    yield agent
    await agent.stop()


async def _deduct(agent: Agent, order_key: str, *promotion_ids: str) -> None:
    await agent.deduct(order_key, "eu", tuple(Line(promotion_id, 1, "user") for promotion_id in promotion_ids))


async def test_a_refused_report_lapses_only_its_promotion_and_is_logged_once(
    agent: Agent, center: ScriptedCenter, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    center.create("refused")
    center.create("fine")
    await _deduct(agent, "o-1", "refused", "fine")
    granted = {status.promotion_id: status.balance.granted for status in await agent.status()}
    center.refusals["refused"] = "counters.deducted 9 is above granted 5 less returned 0"

    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            clock.advance(LEASE_TTL_S / 2)
            await agent.renew_once()

    refusals = [r for r in caplog.records if "refused the report of refused" in r.getMessage()]
    assert len(refusals) == 1
    with pytest.raises(Rejected) as lapsed:
        await _deduct(agent, "o-2", "refused")
    assert lapsed.value.reason is RejectReason.LEASE_EXPIRED
    await _deduct(agent, "o-3", "fine")
    after = {status.promotion_id: status.balance.granted for status in await agent.status()}
    assert after["refused"] == granted["refused"]  # the refused directive's grant was not applied


async def test_an_agent_whose_catalog_never_loads_takes_the_emergency_switch_from_its_renewal(
    clock: FakeClock, center: ScriptedCenter
) -> None:
    center.create("promo")
    center.catalog_down = True
    agent = Agent(QUIET, InProcessLedger(clock), center, clock)
    await agent.start()
    try:
        await _deduct(agent, "o-1", "promo")

        center.emergency = EmergencyFreeze(everywhere=True, revision=7)
        await agent.renew_once()

        with pytest.raises(Rejected) as frozen:
            await _deduct(agent, "o-2", "promo")
        assert frozen.value.reason is RejectReason.FROZEN
    finally:
        await agent.stop()


async def test_an_order_naming_unknown_promotions_costs_the_center_one_call_per_ttl(
    agent: Agent, center: ScriptedCenter, clock: FakeClock
) -> None:
    unknown = [f"nobody-knows-{n}" for n in range(64)]
    before = center.calls

    for attempt in range(5):
        with pytest.raises(NotFound):
            await _deduct(agent, f"o-{attempt}", *unknown)
        clock.advance(UNKNOWN_TTL_S / 10)
    assert center.calls - before <= 2

    center.create(unknown[0])
    clock.advance(UNKNOWN_TTL_S)
    await _deduct(agent, "o-created", unknown[0])


async def _outcomes(agent: Agent, promotion_ids: Sequence[str]) -> list[str]:
    """What one order per promotion was answered: "ok", or its error's class name."""
    answers = []
    for promotion_id in promotion_ids:
        try:
            await _deduct(agent, uuid.uuid4().hex, promotion_id)
        except QuotaError as error:
            answers.append(type(error).__name__)
        else:
            answers.append("ok")
    return answers


async def test_orders_naming_ever_new_unknown_promotions_cost_the_center_a_bounded_rate_of_lookups(
    agent: Agent, center: ScriptedCenter, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Random ids would otherwise cost the center one call per order: a hostile order service's amplifier."""
    center.create("promo")
    await _deduct(agent, "o-known", "promo")
    clock.advance(1)  # the lookup of "promo" is made good: a whole burst is there
    before = center.calls

    flood = await _outcomes(agent, [f"random-{n}" for n in range(LOOKUP_BURST + 50)])
    known = await _outcomes(agent, ["promo"])
    clock.advance(1)
    later = await _outcomes(agent, [f"later-{n}" for n in range(int(LOOKUPS_PER_S) + 5)])

    assert flood == ["PromotionUnknown"] * LOOKUP_BURST + ["LookupsSpent"] * 50
    assert known == ["ok"]  # a promotion the agent knows costs no lookup
    assert later == ["PromotionUnknown"] * int(LOOKUPS_PER_S) + ["LookupsSpent"] * 5
    assert center.calls - before == LOOKUP_BURST + LOOKUPS_PER_S
    assert len([r for r in caplog.records if "has not heard of" in r.getMessage()]) == 1  # once a minute


async def test_a_batch_of_promotions_created_before_the_catalog_brought_them_is_served_whole(
    agent: Agent, center: ScriptedCenter
) -> None:
    """Lookups that find their promotion are given back: the budget is spent by ids nobody knows."""
    created = [f"new-{n}" for n in range(2 * LOOKUP_BURST)]
    for promotion_id in created:
        center.create(promotion_id)

    assert await _outcomes(agent, created) == ["ok"] * len(created)


async def test_the_renew_loop_retries_at_once_while_the_center_is_away_and_says_when_it_is_back(
    clock: FakeClock, center: ScriptedCenter, caplog: pytest.LogCaptureFixture
) -> None:
    center.create("promo")
    agent = Agent(replace(QUIET, renew_interval_s=2.0), InProcessLedger(clock), center, clock)
    await agent.start()
    try:
        await _deduct(agent, "o-1", "promo")
        center.renewals_failing, before = 4, center.renewals

        async def back() -> bool:
            return center.renewals - before > 4

        with caplog.at_level(logging.INFO):
            # Every 2 s, that is 10 s; retried at once, the outage's four failures take a second.
            await eventually(back, timeout_s=8)
    finally:
        await agent.stop()

    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([line for line in lines if line.startswith("lost the center at ")]) == 1
    assert len([line for line in lines if line.startswith("the center is back after ")]) == 1
    assert not [line for line in lines if "renewal failed" in line]


async def test_a_renewal_of_more_promotions_than_one_call_takes_goes_in_chunks_each_leased_from_its_sending(
    clock: FakeClock, center: ScriptedCenter
) -> None:
    promotion_ids = [f"p-{n:05d}" for n in range(2 * MAX_RENEWAL + 500)]
    for promotion_id in promotion_ids:
        center.create(promotion_id)
    ledger = InProcessLedger(clock)
    agent = Agent(QUIET, ledger, center, clock)
    await agent.start()
    try:
        life = await ledger.incarnation()
        for promotion_id in promotion_ids:
            await ledger.apply_grant(f"g-{promotion_id}", promotion_id, 10, life)
        center.renewals_sent.clear()
        center.renewal_seconds = 1.0

        await agent.renew_once()

        sent = center.renewals_sent
        assert [len(ids) for _, ids in sent] == [MAX_RENEWAL, MAX_RENEWAL, 500]
        assert [pid for _, ids in sent for pid in ids] == promotion_ids
        remaining = {status.promotion_id: status.lease_remaining_s for status in await agent.status()}
        for (sent_at, ids), in_flight in zip(sent, (3.0, 2.0, 1.0), strict=True):
            assert sent_at == clock.monotonic() - in_flight
            assert {remaining[pid] for pid in ids} == {LEASE_TTL_S - in_flight}, "leased from its own sending"
    finally:
        await agent.stop()


async def test_a_graceful_stop_waits_for_a_grant_on_its_way_and_gives_it_back(
    clock: FakeClock, center: ScriptedCenter
) -> None:
    center.create("promo")
    ledger = InProcessLedger(clock)
    agent = Agent(QUIET, ledger, center, clock)
    await agent.start()
    await _deduct(agent, "o-1", "promo")
    center.answers_held = asyncio.Event()
    short = asyncio.create_task(
        agent.deduct("o-2", "eu", (Line("promo", 10**7, "user"),)), name="an order waiting for a refill"
    )

    async def refill_on_its_way() -> bool:
        return center.answers_waiting == 1

    await eventually(refill_on_its_way)
    stopping = asyncio.create_task(agent.stop())
    for _ in range(1_000):  # turns of the event loop, not time: a stop that does not wait is over within them
        if stopping.done():
            break
        await asyncio.sleep(0)
    center.answers_held.set()
    await stopping
    await asyncio.gather(short, return_exceptions=True)

    # Every grant the center made reached the ledger, and a stopped in-process agent holds nothing.
    balance = (await ledger.balances())["promo"]
    assert balance.granted == center.granted
    assert balance.available == 0


@pytest.mark.parametrize(
    ("limits", "amount", "said"),
    [
        pytest.param({"max_per_order": 2}, 3, "at most 2 in one order", id="order-limit"),
        pytest.param({"budget": 100}, 101, "more than its whole budget (100)", id="whole-budget"),
        pytest.param({"budget": 100}, 2**53 - 1, "more than its whole budget (100)", id="far-above-the-budget"),
    ],
)
async def test_a_line_above_the_promotions_order_limit_or_budget_is_refused_locally_and_changes_nothing(
    clock: FakeClock, center: ScriptedCenter, limits: dict[str, int], amount: int, said: str
) -> None:
    """Asking the center for a line above the whole budget would pull into this region all that the other
    regions have not taken, for an order refused all the same."""
    center.create("limited", **limits)
    agent = Agent(QUIET, InProcessLedger(clock), center, clock)
    await agent.start()
    try:
        await agent.deduct("o-1", "eu", (Line("limited", 2, "user"),))
        before = [status.balance for status in await agent.status()]
        center.catalog_down = True  # the check needs no center
        calls, granted = center.calls, center.granted

        with pytest.raises(Rejected) as refused:
            await agent.deduct("o-2", "eu", (Line("limited", amount, "user"),))

        assert refused.value.reason is RejectReason.OVER_ORDER_LIMIT
        assert said in refused.value.message
        assert [status.balance for status in await agent.status()] == before
        assert (center.calls, center.granted) == (calls, granted)
        replayed = await agent.deduct("o-1", "eu", (Line("limited", 2, "user"),))
        assert replayed.replayed
    finally:
        await agent.stop()


@pytest.mark.parametrize("region_lease", [False, True], ids=["promotion-leases", "region-lease"])
async def test_a_renewal_naming_a_change_the_agent_could_not_fetch_renews_no_lease(
    clock: FakeClock, center: ScriptedCenter, region_lease: bool
) -> None:
    """The center answered a renewal after a freeze and went down before the agent fetched the change: the
    region must not sell on a lease renewed after the freeze, only on the one it had before it."""
    center.region_lease = region_lease
    center.create("promo")
    agent = Agent(QUIET, InProcessLedger(clock), center, clock)
    await agent.start()
    try:
        await agent.deduct("o-1", "eu", (Line("promo", 1, "user"),))
        clock.advance(LEASE_TTL_S - 2)
        center.promotions["promo"] = replace(center.promotions["promo"], frozen=True, revision=2)
        center.fetches_failing = True
        await agent.renew_once()
        clock.advance(3)  # past the lease the agent had before the freeze, within one renewed now

        with pytest.raises(Rejected) as refused:
            await agent.deduct("o-2", "eu", (Line("promo", 1, "user"),))
        center.fetches_failing = False
        await agent.renew_once()
        with pytest.raises(Rejected) as frozen:
            await agent.deduct("o-3", "eu", (Line("promo", 1, "user"),))
    finally:
        await agent.stop()

    assert refused.value.reason is RejectReason.LEASE_EXPIRED
    assert frozen.value.reason is RejectReason.FROZEN
