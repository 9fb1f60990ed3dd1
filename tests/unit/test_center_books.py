"""The center's books under arbitrary calls from agents: honest, contradicting and forged reports,
acquires, returns, replayed requests, and incarnations old, current and new. The real `Center` runs
over an in-memory store, and after every step the books must hold:

- nothing negative in any account;
- sum(granted - returned) + unallocated = budget, against the grants the test itself saw made;
- nothing granted beyond the budget, and no more consumed than the budget;
- consumption is never forgotten: every cumulative counter only grows (net consumption falls
  only by a refund, and refunds are counted too);
- a refused call (or a promotion's refused report) changed nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import astuple, dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quota_center.center import Center
from quota_center.ledger import GrantRecord, RegionAccount
from quota_common.clock import FakeClock
from quota_common.errors import QuotaError
from quota_common.model import Kind, Promotion, Report
from quota_common.validation import MAX_AMOUNT
from quota_testing.memory_store import MemoryStore

PROMO = "p"
REGIONS = ("eu", "us")
LIVES = 3
"""Incarnations per region; a call may come from any of them, so from superseded ones too."""


@dataclass
class Seen:
    """What the test saw happen, to hold the center's books against."""

    budget: int
    granted: int = 0
    first_grants: dict[tuple[str, str], GrantRecord] = field(default_factory=dict)
    counted: dict[str, RegionAccount] = field(default_factory=lambda: {region: RegionAccount() for region in REGIONS})


def counters(budget: int) -> st.SearchStrategy[int]:
    return st.integers(min_value=0, max_value=budget + 2)


async def acquire(center: Center, seen: Seen, data: st.DataObject, region: str, incarnation: str) -> None:
    request_id = data.draw(st.sampled_from(["r1", "r2", "r3"]), "request id")
    amount = data.draw(st.integers(min_value=1, max_value=seen.budget + 2), "amount")
    demand = data.draw(st.sampled_from([0, 60, MAX_AMOUNT]), "demand")
    first = seen.first_grants.get((region, request_id))
    result = await center.acquire(region, incarnation, PROMO, amount, request_id, demand)
    if first is None:
        assert 0 < result.grant.amount <= amount
        seen.granted += result.grant.amount
        seen.first_grants[(region, request_id)] = result.grant
    else:
        assert result.grant == first, "a replayed acquire must answer the grant already made"


def report(data: st.DataObject, account: RegionAccount, incarnation: str, budget: int) -> Report:
    """Counters as an agent might send them: consistent alone with what the center granted it
    (which two such reports together need not be), or anything at all."""
    demand = data.draw(st.sampled_from([0, 60]), "demand")
    if not data.draw(st.booleans(), "consistent alone"):
        granted, returned, deducted, refunded = (data.draw(counters(budget)) for _ in range(4))
        return Report(granted, returned, deducted, refunded, demand)
    granted = account.granted if account.incarnation == incarnation else 0
    returned = data.draw(st.integers(min_value=0, max_value=granted), "returned")
    consumed = data.draw(st.integers(min_value=0, max_value=granted - returned), "consumed")
    refunded = data.draw(counters(budget), "refunded")
    return Report(granted, returned, consumed + refunded, refunded, demand)


async def renew(center: Center, data: st.DataObject, region: str, incarnation: str, sent: Report) -> None:
    reports = {PROMO: sent}
    if data.draw(st.booleans(), "names an unknown promotion too"):
        reports["ghost"] = sent
    answers = await center.renew(region, incarnation, reports)
    if isinstance(answers[0], QuotaError):
        raise answers[0]


def counted_on(then: RegionAccount, now: RegionAccount) -> bool:
    """Whether `now` counts everything `then` did: the totals only grow, and so do the current
    incarnation's counters until it retires, when what it consumed moves to the retired sum."""
    pairs = [
        (then.total_granted, now.total_granted),
        (then.total_returned, now.total_returned),
        (then.written_off, now.written_off),
        (then.retired_consumed, now.retired_consumed),
    ]
    if then.incarnation == now.incarnation:
        pairs += [(then.deducted, now.deducted), (then.refunded, now.refunded)]
    else:
        pairs.append((then.consumed, now.retired_consumed))
    return all(before <= after for before, after in pairs)


def check_books(center: Center, seen: Seen) -> None:
    usage = center.usage(PROMO)
    accounts = {view.region: view.account for view in usage.regions}
    for region, account in accounts.items():
        numbers = (*astuple(account)[1:9], account.held, account.consumed, account.outstanding)
        assert min(numbers) >= 0, f"{region}: {account}"
        assert counted_on(seen.counted[region], account), f"{region} forgot: {seen.counted[region]} became {account}"
        seen.counted[region] = account
    returned = sum(account.total_returned for account in accounts.values())
    assert sum(account.total_granted for account in accounts.values()) == seen.granted
    assert seen.granted - returned + usage.unallocated == seen.budget
    assert usage.unallocated >= 0, "granted beyond the budget"
    assert sum(account.consumed for account in accounts.values()) <= seen.budget, "consumed beyond the budget"
    assert len(center._locks) == 0, "a lock outlived its call"


async def run(data: st.DataObject) -> None:
    seen = Seen(budget=data.draw(st.integers(min_value=1, max_value=20), "budget"))
    store = MemoryStore()
    center = Center(store, FakeClock())
    await center.start()
    await center.create_promotion(Promotion(PROMO, Kind.COUNT, "", seen.budget, 0, 10**13, REGIONS))
    for _ in range(data.draw(st.integers(min_value=1, max_value=30), "steps")):
        region = data.draw(st.sampled_from(REGIONS), "region")
        current = center.usage(PROMO).regions[REGIONS.index(region)].account.incarnation or f"{region}-0"
        lives = [f"{region}-{life}" for life in range(LIVES)]
        incarnation = data.draw(st.one_of(st.just(current), st.sampled_from(lives)), "incarnation")
        step = data.draw(st.sampled_from(["acquire", "renew", "give back"]), "step")
        before = store.promotions[PROMO]
        try:
            if step == "acquire":
                await acquire(center, seen, data, region, incarnation)
            else:
                account = center.usage(PROMO).regions[REGIONS.index(region)].account
                sent = report(data, account, incarnation, seen.budget)
                if step == "renew":
                    await renew(center, data, region, incarnation, sent)
                else:
                    await center.return_quota(region, incarnation, PROMO, sent)
        except QuotaError:
            assert store.promotions[PROMO] == before, f"a refused {step} changed the books"
        check_books(center, seen)


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_books_balance_after_any_sequence_of_agent_calls(data: st.DataObject) -> None:
    asyncio.run(run(data))
