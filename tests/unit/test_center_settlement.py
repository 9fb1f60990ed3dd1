"""Settlement in the real `Center` on a SQLite store, on a fake clock: regions give everything back once a
promotion ended, it settles once the grace has passed (not before), its statement is stored and stays the
same after a late refund and a restart of the center, and only a settled promotion is archived."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from quota_center.center import Center
from quota_center.center_core import CenterSettings
from quota_center.center_renewals import Directive
from quota_center.settlement import ENDED, OPEN, SETTLED
from quota_center.store.sqlite import SqliteStore
from quota_center.trail import By
from quota_common.clock import FakeClock
from quota_common.errors import FailedPrecondition, PermissionDenied, QuotaError
from quota_common.identity import Role, center, person
from quota_common.model import Kind, Promotion, Report

ALICE = By(person("quota", Role.OWNER, "alice"))
MALLORY = By(person("quota", Role.OWNER, "mallory"))
ITSELF = By(center("quota"))
HOUR_S = 3600.0
GRACE_S = 2 * HOUR_S


class Books:
    """A center on a SQLite file that the test can restart."""

    def __init__(self, path: Path, clock: FakeClock) -> None:
        self.path, self.clock = path, clock
        self.store, self.center = self._open()

    def _open(self) -> tuple[SqliteStore, Center]:
        store = SqliteStore(self.path)
        return store, Center(store, self.clock, CenterSettings(settle_grace_s=GRACE_S))

    async def restart(self) -> None:
        await self.store.close()
        self.store, self.center = self._open()
        await self.center.start()


@pytest.fixture
async def books(tmp_path: Path) -> AsyncIterator[Books]:
    books = Books(tmp_path / "center.db", FakeClock())
    await books.center.start()
    yield books
    await books.store.close()


async def sold(books: Books) -> str:
    """A promotion of 100 ending in an hour; region eu took 40 and spent 30 (5 of it refunded)."""
    now = books.clock.wall_ms()
    promotion = Promotion("sale", Kind.COUNT, "", 100, now, now + round(HOUR_S * 1000), ("eu", "us"))
    await books.center.create_promotion(promotion, ALICE)
    life = books.center.join("eu")
    grant = await books.center.acquire("eu", life, "sale", 40, "r1", 60)
    assert grant.grant.amount == 40
    await books.center.renew("eu", life, {"sale": Report(40, 0, 30, 5)})
    return life


def directive(answers: list[Directive | QuotaError]) -> Directive:
    (answer,) = answers
    assert isinstance(answer, Directive), answer
    return answer


async def test_it_settles_after_the_grace_and_the_statement_stays_after_a_late_refund_and_a_restart(
    books: Books,
) -> None:
    life = await sold(books)
    assert books.center.statement("sale").state == OPEN

    books.clock.advance(HOUR_S)  # the promotion ends: eu is asked for everything it holds, and gives it back
    assert directive(await books.center.renew("eu", life, {"sale": Report(40, 0, 30, 5)})).reclaim == 15
    await books.center.return_quota("eu", life, "sale", Report(40, 15, 30, 5))
    ended = books.center.statement("sale")
    assert (ended.state, ended.stranded, ended.unspent) == (ENDED, 0, 75)
    books.clock.advance(GRACE_S - 1)
    assert await books.center.settle_due(ITSELF) == []

    books.clock.advance(1)
    assert await books.center.settle_due(ITSELF) == ["sale"]
    final = books.center.statement("sale")
    assert (final.state, final.settled_at_ms, final.budget) == (SETTLED, books.clock.wall_ms(), 100)
    assert (final.issued, final.refunded, final.written_off, final.stranded, final.unspent) == (30, 5, 0, 0, 75)
    assert await books.center.settle_due(ITSELF) == []

    books.clock.advance(HOUR_S)  # a refund after settlement is honoured: the books show it, the statement not
    await books.center.renew("eu", life, {"sale": Report(40, 15, 30, 12)})
    eu = next(view for view in books.center.usage("sale").regions if view.region == "eu")
    assert (eu.account.refunded, eu.account.held) == (12, 7)
    assert books.center.statement("sale") == final

    await books.restart()
    assert books.center.statement("sale") == final
    records = await books.center.audit_records(0, 100)
    settling = [r.fields() for r in records if r.fields()["call"] == "SettlePromotion"]
    assert [(r["actor"], r["promotion_id"], r["after"]["state"]) for r in settling] == [(ITSELF.actor, "sale", SETTLED)]


async def test_a_region_still_holding_quota_at_settlement_is_stranded(books: Books) -> None:
    await sold(books)
    books.clock.advance(HOUR_S + GRACE_S)  # eu never gave back what it held

    await books.center.settle_due(ITSELF)

    final = books.center.statement("sale")
    eu = next(region for region in final.regions if region.region == "eu")
    assert (eu.granted, eu.returned, eu.issued, eu.refunded, eu.stranded) == (40, 0, 30, 5, 15)
    assert (final.stranded, final.unspent) == (15, 60)


async def test_no_quota_is_granted_once_a_promotion_ended(books: Books) -> None:
    life = await sold(books)
    books.clock.advance(HOUR_S)

    with pytest.raises(FailedPrecondition, match=r"sale ended at .*no quota is granted"):
        await books.center.acquire("eu", life, "sale", 10, "r2", 60)


async def test_only_a_settled_promotion_is_archived_by_its_owner_once(books: Books) -> None:
    await sold(books)
    with pytest.raises(FailedPrecondition, match=r"not settled.*settles once its grace has passed, at"):
        await books.center.archive("sale", ALICE)
    books.clock.advance(HOUR_S + GRACE_S)
    await books.center.settle_due(ITSELF)
    with pytest.raises(PermissionDenied, match="belongs to"):
        await books.center.archive("sale", MALLORY)
    before = books.center.promotion("sale")

    archived = await books.center.archive("sale", ALICE)
    again = await books.center.archive("sale", ALICE)

    assert (archived.archived, archived.revision) == (True, before.revision + 1)
    assert again == archived
    calls = [record.fields()["call"] for record in await books.center.audit_records(0, 100)]
    assert calls.count("ArchivePromotion") == 1
    assert books.center.statement("sale").state == SETTLED
    assert books.center.usage("sale").promotion.archived
    page = books.center.catalog_page("eu", before.revision, 10)
    assert [promotion.archived for promotion in page.promotions] == [True]  # agents hear of it, and drop it


async def test_a_settled_promotion_takes_no_other_change(books: Books) -> None:
    await sold(books)
    books.clock.advance(HOUR_S + GRACE_S)
    await books.center.settle_due(ITSELF)
    revision = books.center.promotion("sale").revision

    with pytest.raises(FailedPrecondition, match=r"sale is settled .*SetBudget would change what it was settled on"):
        await books.center.set_budget("sale", 200, revision, ALICE)
    with pytest.raises(FailedPrecondition, match="SetFrozen would change"):
        await books.center.set_frozen("sale", True, ALICE)
    assert books.center.promotion("sale").revision == revision
