"""The center's answers to agents: the catalog their caches follow, incarnations, grants and openings
(renewals and returns are `center_renewals`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Sequence
from dataclasses import dataclass

from quota_center import allocation, ledger
from quota_center.center_core import CommitConflict
from quota_center.center_renewals import CenterRenewals
from quota_center.ledger import GrantRecord, PromotionState
from quota_center.store.base import MAX_BATCH, MAX_BATCH_BYTES, batches
from quota_common.errors import (
    Exhausted,
    FailedPrecondition,
    InvalidArgument,
    QuotaError,
    RegionHeld,
    Superseded,
)
from quota_common.model import EmergencyFreeze, Promotion

HEARTBEAT_S = 5.0
"""An idle watch sends the current revision this often, so agents can tell a live stream from a dead one."""


@dataclass(frozen=True)
class AcquireResult:
    grant: GrantRecord
    unallocated: int


@dataclass(frozen=True)
class Opening:
    promotion_id: str
    amount: int
    request_id: str


@dataclass(frozen=True)
class CatalogPage:
    promotions: list[Promotion]
    """Changed after the caller's revision, oldest change first."""
    emergency: EmergencyFreeze
    revision: int
    """Everything up to here is in this page or was before the caller's revision."""
    more: bool


def _replayed(grant: GrantRecord, incarnation: str) -> GrantRecord:
    """The grant a retried acquire gets back; only the incarnation that asked may have it."""
    if grant.incarnation != incarnation:
        raise InvalidArgument(f"request id {grant.request_id!r} was used by another incarnation")
    return grant


def _check_same_ask(grant: GrantRecord, amount: int) -> None:
    """A retry repeats its acquire; one asking another amount is a new acquire under a used id."""
    if grant.asked and grant.asked != amount:
        raise FailedPrecondition(
            f"request id {grant.request_id!r} was used for an acquire of {grant.asked} (granted {grant.amount}), "
            f"not {amount}: give a new acquire a new request id"
        )


class CenterForAgents(CenterRenewals):
    def catalog_page(self, region: str, after: int, page_size: int) -> CatalogPage:
        """The changes after revision `after` that matter to `region`, at most `page_size` of them."""
        self._require_leader()
        promotions: list[Promotion] = []
        for promotion_id in self._revisions.changed_after(after):
            if not self.serves(promotion_id):  # before the lookup: a slot handed away is forgotten here
                continue
            state = self._states[promotion_id]
            # A region removed from the promotion keeps an account, so it hears that it may no longer spend it.
            if not state.promotion.allows(region) and region not in state.accounts:
                continue
            promotion = state.promotion
            if len(promotions) == page_size:
                return CatalogPage(promotions, self._emergency, promotions[-1].revision, more=True)
            promotions.append(promotion)
        return CatalogPage(promotions, self._emergency, max(after, self._catalog_revision), more=False)

    @property
    def emergency(self) -> EmergencyFreeze:
        """The emergency switch as it stands."""
        self._require_leader()
        return self._emergency

    async def catalog_change(self, after: int, timeout_s: float) -> None:
        """Returns once the catalog moves past revision `after`, or after `timeout_s`."""
        changed = self._catalog_changed
        if self._catalog_revision <= after:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout_s)

    def join(self, region: str, replaces: str = "") -> str:
        """A new ledger life for `region`: newer than every one the region had here, and one only this
        deployment's centers can make. Refused (RegionHeld) while another life of the region holds a live
        lease, unless `replaces` names it (the caller's ledger held that life and lost its data) or names the
        life the Join that issued it replaced (another agent of the region saw the same loss). The new life
        holds the region from now on, so that of two processes started at once on other ledgers, one joins."""
        self._require_leader()
        now = self._clock.monotonic()
        holder = self._holder.get(region)
        left = holder[1] - now if holder else 0.0
        if holder is not None and left > 0 and replaces not in (holder[0], self._replaced.get(region, holder[0])):
            renewed = self.settings.lease_ttl_s - left
            raise RegionHeld(
                f"region {region} is served by another agent, as ledger incarnation {holder[0]} (its lease, "
                f"renewed {renewed:.1f} s ago, runs {left:.1f} s more): a process on another ledger would write off "
                "what it holds; run one agent per region on the in-process ledger, or give this one the region's "
                "--ledger",
                left,
            )
        # Newer than the holder too: a life issued and renewed but never admitted is not among the newest.
        known = [life for life in (self._newest_life.get(region), holder[0] if holder else None) if life]
        life = self._issuer.issue(region, known)
        self._holder[region] = (life, now + self.settings.lease_ttl_s)
        if replaces:
            self._replaced[region] = replaces
        return life

    def had_life(self, region: str) -> bool:
        """Whether a ledger life of `region` held quota here: the one a Join issues replaces it, and orders
        placed in it are gone with a ledger that did not keep them. None did: no order was ever placed."""
        self._require_leader()
        return region in self._newest_life

    def require_issued(self, region: str, incarnation: str) -> str:
        """`incarnation` if a center of this deployment issued it to `region`; InvalidArgument otherwise."""
        self._require_leader()
        return self._issuer.require(region, incarnation)

    async def acquire(
        self, region: str, incarnation: str, promotion_id: str, amount: int, request_id: str, demand: int
    ) -> AcquireResult:
        self._require_leader()
        self._refuse_if_emergency(region)

        async def work(from_store: bool) -> AcquireResult:
            demands = self._demands(promotion_id, region, demand)
            try:
                state, record = await self._book(
                    region, incarnation, promotion_id, amount, request_id, demands, from_store
                )
            except Exhausted:
                # A region refused for lack of quota still counts when idle regions are asked to return theirs.
                self._note_demands(promotion_id, demands)
                raise
            if state is None:
                _check_same_ask(record, amount)
                state = self._state(promotion_id)
            else:
                await self._commit([(state, record)])
                self._note_demands(promotion_id, demands)
            self._renew_lease(promotion_id, region, incarnation)
            return AcquireResult(record, state.unallocated)

        try:
            return await self._exclusively([promotion_id], functools.partial(work, False))
        except CommitConflict:
            # The request id has a grant memory no longer recalls (or a writer moved the promotion): book
            # again from the store, which answers a retry with its grant.
            return await self._exclusively([promotion_id], functools.partial(work, True))

    async def acquire_openings(
        self, region: str, incarnation: str, openings: Sequence[Opening]
    ) -> list[GrantRecord | QuotaError]:
        """Opening allotments for many promotions, committed MAX_BATCH at a time (and fewer when their
        documents weigh more than MAX_BATCH_BYTES), the writes at once; each is answered on its own (a grant,
        or the error an acquire of it alone would raise)."""
        self._require_leader()
        self._refuse_if_emergency(region)

        def weigh(opening: Opening) -> int:
            return self._document_bytes(opening.promotion_id)

        async def open_batch(batch: list[Opening]) -> list[GrantRecord | QuotaError]:
            ids = [o.promotion_id for o in batch]
            try:
                return await self._exclusively(ids, functools.partial(self._open, region, incarnation, batch))
            except CommitConflict:
                opening = functools.partial(self._open, region, incarnation, batch, from_store=True)
                return await self._exclusively(ids, opening)

        # Side by side, as a renewal's writes: a call of MAX_OPENINGS lasts a few store round trips, not twenty.
        opened = await asyncio.gather(*(open_batch(b) for b in batches(openings, weigh, MAX_BATCH, MAX_BATCH_BYTES)))
        return [answer for answers in opened for answer in answers]

    async def _open(
        self, region: str, incarnation: str, batch: Sequence[Opening], from_store: bool = False
    ) -> list[GrantRecord | QuotaError]:
        answers: list[GrantRecord | QuotaError] = []
        commits: list[tuple[PromotionState, GrantRecord | None]] = []
        for opening in batch:
            demands = self._demands(opening.promotion_id, region, 0)
            try:
                state, record = await self._book(
                    region,
                    incarnation,
                    opening.promotion_id,
                    opening.amount,
                    opening.request_id,
                    demands,
                    from_store,
                    recall=True,
                )
            except Superseded:
                raise
            except QuotaError as error:
                answers.append(error)
                continue
            # A replayed opening is not held to the amount it first asked, unlike an acquire: an agent
            # keeps one opening request id per promotion and sizes it from the budget, which may change.
            if state is not None:
                commits.append((state, record))
            answers.append(record)
        await self._commit(commits)
        for state, _ in commits:
            self._renew_lease(state.promotion.id, region, incarnation)
        return answers

    async def _book(
        self,
        region: str,
        incarnation: str,
        promotion_id: str,
        amount: int,
        request_id: str,
        demands: dict[str, int],
        from_store: bool,
        recall: bool = False,
    ) -> tuple[PromotionState | None, GrantRecord]:
        """The grant answering this request: the one booked before (with no state to commit), or
        a new one booked on a copy of the promotion's state, which the caller commits.

        A grant's id derives from its request id, so a retry of a recent grant is known from memory.
        Otherwise the store is read only `from_store`: a first try books at once, and a request id that
        already has a grant makes its commit fail (CommitConflict), after which the caller asks again
        from the store. With `recall` (openings, not held to the amount first asked) a remembered grant
        answers as it is; an acquire's retry reads its grant to check it asks the same amount."""
        state = self._state(promotion_id)
        grant_id = ledger.grant_id_for(promotion_id, region, request_id)
        remembered = ledger.remembered_grant(state, region, incarnation, grant_id)
        if remembered is not None and recall:
            return None, GrantRecord(grant_id, request_id, promotion_id, region, incarnation, remembered)
        if from_store or remembered is not None:
            previous = await self._store.find_grant(promotion_id, region, request_id)
            if previous is not None:
                return None, _replayed(previous, incarnation)
        self._check_shard(promotion_id, granting=True)
        state = state.copy()
        ids = (grant_id, request_id)
        record = allocation.grant(
            state, region, incarnation, amount, ids, demands, self.settings.horizon_s, self._clock.wall_ms()
        )
        return state, record

    def _refuse_if_emergency(self, region: str) -> None:
        if self._emergency.covers(region):
            raise FailedPrecondition(
                f"the emergency freeze covers {self._emergency.describe()}: no quota is granted until it is lifted"
            )
