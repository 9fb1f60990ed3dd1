"""The center's Store contract (quota_center/store/base.py), run against every implementation:
the embedded SQLite file, a real single-member etcd and a 3-member etcd cluster, all on
free loopback ports.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest

from quota_center.audit import verify
from quota_center.ledger import GrantRecord, PromotionState, RegionAccount
from quota_center.store.base import MAX_BATCH, MAX_BATCH_BYTES, MAX_REPORT_BATCH, Commit, batches
from quota_common.errors import AlreadyExists, Conflict
from quota_common.model import Kind, Promotion
from quota_common.policy import Pacing
from quota_testing.support import next_audit
from tests.contract.conftest import StoreFactory


def _state(promotion_id: str = "p1", budget: int = 100) -> PromotionState:
    promotion = Promotion(promotion_id, Kind.AMOUNT, "EUR", budget, 0, 10_000, ("eu", "us"))
    return PromotionState(promotion, {"eu": RegionAccount(incarnation="i-1")})


def _grant(request_id: str, amount: int = 10) -> GrantRecord:
    return GrantRecord(f"g-{request_id}", request_id, "p1", "eu", "i-1", amount)


async def test_created_promotions_load_back_equal(open_store: StoreFactory) -> None:
    store = await open_store()
    await store.create(_state("p1"), await next_audit(store))
    await store.create(_state("p2", budget=7), await next_audit(store))

    assert await store.load_all() == [_state("p1"), _state("p2", budget=7)]
    assert await store.load("p2") == _state("p2", budget=7)
    assert await store.load("missing") is None


async def test_a_paced_promotion_loads_back_with_its_pacing(open_store: StoreFactory) -> None:
    store = await open_store()
    paced = _state("p1")
    paced.promotion = replace(paced.promotion, pacing=Pacing.HOURLY_CAP, hourly_cap=40)
    await store.create(paced, await next_audit(store))

    assert await store.load("p1") == paced


async def test_creating_a_taken_id_fails_and_keeps_the_original(open_store: StoreFactory) -> None:
    store = await open_store()
    await store.create(_state(budget=100), await next_audit(store))

    with pytest.raises(AlreadyExists):
        await store.create(_state(budget=5), await next_audit(store))
    assert await store.load("p1") == _state(budget=100)


async def test_commit_writes_the_document_and_its_grant_together(open_store: StoreFactory) -> None:
    store = await open_store()
    await store.create(_state(), await next_audit(store))
    changed = _state()
    changed.accounts["eu"].granted = 10
    changed.version = 2

    await store.commit_many([(changed, 1, _grant("r-1"))])

    assert await store.load("p1") == changed
    assert await store.find_grant("p1", "eu", "r-1") == _grant("r-1")
    assert await store.find_grant("p1", "us", "r-1") is None


async def test_a_grant_keeps_what_its_acquire_asked_for(open_store: StoreFactory) -> None:
    store = await open_store()
    await store.create(_state(), await next_audit(store))
    changed = _state()
    changed.accounts["eu"].granted, changed.version = 10, 2
    asked_more = replace(_grant("r-1"), asked=25)

    await store.commit_many([(changed, 1, asked_more)])

    assert await store.find_grant("p1", "eu", "r-1") == asked_more


async def test_a_stale_commit_conflicts_and_writes_nothing(open_store: StoreFactory) -> None:
    store = await open_store()
    await store.create(_state(), await next_audit(store))
    winner, loser = _state(), _state()
    winner.accounts["eu"].granted, winner.version = 10, 2
    loser.accounts["eu"].granted, loser.version = 20, 2
    await store.commit_many([(winner, 1, _grant("r-1"))])

    with pytest.raises(Conflict):
        await store.commit_many([(loser, 1, _grant("r-2", amount=20))])

    assert await store.load("p1") == winner
    assert await store.find_grant("p1", "eu", "r-2") is None


async def test_a_grant_whose_request_id_is_taken_conflicts_and_writes_nothing(open_store: StoreFactory) -> None:
    store = await open_store()
    await store.create(_state(), await next_audit(store))
    first = _state()
    first.accounts["eu"].granted, first.version = 10, 2
    await store.commit_many([(first, 1, _grant("r-1"))])
    again = _state()
    again.accounts["eu"].granted, again.version = 30, 3

    with pytest.raises(Conflict):
        await store.commit_many([(again, 2, replace(_grant("r-1", amount=20), grant_id="g-other"))])

    assert await store.load("p1") == first
    assert await store.find_grant("p1", "eu", "r-1") == _grant("r-1")


async def test_the_largest_batches_commit_in_one_write(open_store: StoreFactory) -> None:
    """MAX_BATCH promotions with grants, and MAX_REPORT_BATCH without, in one write: within etcd's default
    128 operations per transaction (compares and writes apiece, the fence beside them)."""
    store = await open_store()
    ids = [f"p{n:03d}" for n in range(MAX_REPORT_BATCH)]
    for promotion_id in ids:
        await store.create(_state(promotion_id), await next_audit(store))

    granted = [replace(_state(i), version=2) for i in ids[:MAX_BATCH]]
    await store.commit_many([(s, 1, replace(_grant(s.promotion.id), promotion_id=s.promotion.id)) for s in granted])
    reported = [replace(_state(i), version=3 if i in ids[:MAX_BATCH] else 2) for i in ids]
    await store.commit_many([(state, state.version - 1, None) for state in reported])

    assert [state.version for state in await store.load_all()] == [state.version for state in reported]


async def test_heavy_documents_commit_in_the_writes_batches_cuts(open_store: StoreFactory) -> None:
    """Documents of many regions, cut into writes of MAX_BATCH_BYTES: each within etcd's default request size
    (1.5 MiB), which all of them together pass."""
    store = await open_store()
    wide = {f"region-{n:04d}": RegionAccount(incarnation="i-1", granted=n) for n in range(400)}
    states = [PromotionState(_state(f"p{n:02d}").promotion, dict(wide)) for n in range(40)]
    for state in states:
        await store.create(state, await next_audit(store))
    changed = [replace(state, version=2) for state in states]

    runs = batches(changed, lambda state: len(json.dumps(state.to_document())), MAX_BATCH, MAX_BATCH_BYTES)
    for run in runs:
        await store.commit_many(
            [(state, 1, replace(_grant(state.promotion.id), promotion_id=state.promotion.id)) for state in run]
        )

    assert len(runs) > 1, "the documents weigh more than one write may carry"
    assert [state.version for state in await store.load_all()] == [2] * len(states)


async def test_writes_of_different_promotions_in_flight_together_all_land(open_store: StoreFactory) -> None:
    """The center sends the batches of one renewal, or of one opening call, side by side: each write holds
    other promotions, and every one commits with its grants."""
    store = await open_store()
    ids = [f"p{n:03d}" for n in range(30)]
    for promotion_id in ids:
        await store.create(_state(promotion_id), await next_audit(store))

    def commit(run: list[str]) -> list[Commit]:
        return [(replace(_state(i), version=2), 1, replace(_grant(i), promotion_id=i)) for i in run]

    await asyncio.gather(*(store.commit_many(commit(ids[n : n + 10])) for n in range(0, len(ids), 10)))

    assert [state.version for state in await store.load_all()] == [2] * len(ids)
    assert all([await store.find_grant(i, "eu", i) is not None for i in ids])


async def test_concurrent_writers_on_one_version_have_exactly_one_winner(open_store: StoreFactory) -> None:
    first, second = await open_store(), await open_store()
    await first.create(_state(), await next_audit(first))
    candidates = []
    for n, store in enumerate((first, second, first, second)):
        state = _state()
        state.accounts["eu"].granted, state.version = n + 1, 2
        candidates.append(store.commit_many([(state, 1, _grant(f"r-{n}", n + 1))]))

    outcomes = await asyncio.gather(*candidates, return_exceptions=True)

    assert sum(outcome is None for outcome in outcomes) == 1
    assert all(isinstance(outcome, Conflict) for outcome in outcomes if outcome is not None)
    stored = await first.load("p1")
    assert stored is not None
    winner = stored.accounts["eu"].granted
    assert [await first.find_grant("p1", "eu", f"r-{n}") is not None for n in range(4)] == [
        n + 1 == winner for n in range(4)
    ]


async def test_what_was_committed_is_there_after_reopening(open_store: StoreFactory) -> None:
    store = await open_store()
    await store.create(_state(), await next_audit(store))
    changed = _state()
    changed.accounts["eu"].granted, changed.version = 10, 2
    await store.commit_many([(changed, 1, _grant("r-1"))])
    await store.close()

    reopened = await open_store()

    assert await reopened.load_all() == [changed]
    assert await reopened.find_grant("p1", "eu", "r-1") == _grant("r-1")


async def test_load_all_returns_every_promotion_however_many(open_store: StoreFactory) -> None:
    store = await open_store()
    ids = [f"p{n:04d}" for n in range(450)]
    for promotion_id in ids:
        await store.create(_state(promotion_id), await next_audit(store))

    assert [state.promotion.id for state in await store.load_all()] == ids


async def test_admin_writes_append_their_audit_records_in_order_and_keep_them(open_store: StoreFactory) -> None:
    store = await open_store()
    created = await next_audit(store, "p1")
    await store.create(_state(), created)
    changed = _state(budget=50)
    changed.version = 2
    budget_cut = await next_audit(store, "p1")
    await store.commit_many([(changed, 1, None)], budget_cut)
    switch = await next_audit(store)
    await store.save_document("switch", {"everywhere": True}, switch)
    await store.close()

    reopened = await open_store()

    assert await reopened.audit_records() == [created, budget_cut, switch]
    assert await reopened.audit_records(after_seq=1, limit=1) == [budget_cut]
    assert await reopened.audit_head() == switch
    assert verify(await reopened.audit_records()) == []


async def test_a_write_whose_audit_record_is_taken_writes_nothing(open_store: StoreFactory) -> None:
    store = await open_store()
    await store.create(_state(), await next_audit(store))
    stale = await next_audit(store)
    await store.save_document("switch", {"everywhere": True}, await next_audit(store))
    changed = _state(budget=50)
    changed.version = 2

    with pytest.raises(Conflict):
        await store.commit_many([(changed, 1, None)], stale)
    with pytest.raises(Conflict):
        await store.create(_state("p2"), stale)
    with pytest.raises(Conflict):
        await store.save_document("switch", {"everywhere": False}, stale)

    assert await store.load("p1") == _state()
    assert await store.load("p2") is None
    assert await store.load_document("switch") == {"everywhere": True}
    assert [record.seq for record in await store.audit_records()] == [1, 2]


async def test_a_refused_create_leaves_no_audit_record(open_store: StoreFactory) -> None:
    store = await open_store()
    await store.create(_state(), await next_audit(store))

    with pytest.raises(AlreadyExists):
        await store.create(_state(budget=5), await next_audit(store))

    assert len(await store.audit_records()) == 1
