"""The center's core: every promotion's state over a store, with per-promotion locks, and what the
calls of agents (`center_agents`) and of people (`center`) share.

Every change is computed on a copy of the promotion's state and committed to the store
(compare-and-swap on its version) before anyone hears of it; only then does the copy
become the live state. Nothing that matters lives only in memory: `start` rebuilds it all
from the store. Lease expiries are the exception: they are soft, and a fresh center gives
every region a full TTL rather than guess when it last heard from them. So are the other
things the center learns from renewals (demand, which promotions are contested, which
regions reported in full): a new leader asks every region for a full report.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from quota_center import settlement
from quota_center.alert_engine import AlertSettings
from quota_center.audit import AuditRecord
from quota_center.catalog import RevisionIndex
from quota_center.gate import DEFAULT_PENDING_TTL_S
from quota_center.history_book import DEFAULT_INTERVAL_S
from quota_center.issuer import IncarnationIssuer
from quota_center.leadership import Leadership, SingleNode
from quota_center.ledger import GrantRecord, PromotionState, RegionAccount
from quota_center.locks import NamedLocks
from quota_center.reconciliation import Discrepancies
from quota_center.shard_move import Phase, SlotMove, check
from quota_center.store.base import MAX_BATCH_BYTES, MAX_REPORT_BATCH, Store, batches
from quota_center.trail import AuditTrail
from quota_common.clock import Clock
from quota_common.errors import (
    Conflict,
    NotFound,
    NotLeader,
    Unavailable,
)
from quota_common.model import (
    EMERGENCY_DOCUMENT,
    EmergencyFreeze,
    Promotion,
)
from quota_common.shards import DEFAULT_GROUP, ShardMap
from quota_common.validation import require_known_case

T = TypeVar("T")


class CommitConflict(Unavailable):
    """A commit found a promotion moved past the version read, or a grant's request id taken; the center
    reloaded the promotions, so the caller may book again from the store's truth."""


def _outcome_read(task: asyncio.Future[Any]) -> None:
    """Reads a shielded call's outcome, so a failure after its caller gave up (a NotLeader from a store that
    lost leadership meanwhile) is not logged as "Task exception was never retrieved": the caller's retry, or
    the election, deals with it."""
    if not task.cancelled():
        task.exception()


@dataclass(frozen=True)
class CenterSettings:
    lease_ttl_s: float = 10.0
    """How long a region may spend its allotment without renewing."""
    horizon_s: float = 2.0
    """Seconds of demand the policy sizes grants and reclaims for."""
    pending_ttl_s: float = DEFAULT_PENDING_TTL_S
    """How long a change held by a guard rule waits for approval before it expires."""
    alerts: AlertSettings = field(default_factory=AlertSettings)
    """How often alert rules are evaluated, and where alerts are posted."""
    history_interval_s: float = DEFAULT_INTERVAL_S
    """How often the leading center samples every promotion's usage by region into its history."""
    settle_grace_s: float = settlement.DEFAULT_GRACE_S
    """How long after its end a promotion is settled (its statement final): refunds are honoured until then."""
    group: str = DEFAULT_GROUP
    """The center group this center belongs to: it serves the promotions of the slots the shard map gives it."""


@dataclass(frozen=True)
class RegionView:
    region: str
    account: RegionAccount
    lease_active: bool | None
    """None when the region never held quota."""
    lease_age_s: float | None = None
    """Seconds since the region last renewed its lease (or since this leader took over)."""
    demand_per_minute: int = 0
    """The burn rate the region last reported."""
    below_floor: int = 0
    """Order lines below the price floor the region last reported (its ledger life's count)."""


@dataclass(frozen=True)
class UsageView:
    promotion: Promotion
    unallocated: int
    regions: list[RegionView] = field(default_factory=list)


class CenterCore:
    def __init__(
        self, store: Store, clock: Clock, settings: CenterSettings | None = None, leadership: Leadership | None = None
    ) -> None:
        self._store = store
        self._clock = clock
        self.settings = settings or CenterSettings()
        self._leadership = leadership or SingleNode()
        self._serving = False
        self._states: dict[str, PromotionState] = {}
        self._locks = NamedLocks()
        self._lease_expiry: dict[tuple[str, str], float] = {}
        self._region_lease: dict[str, float] = {}
        """By region: when the lease over all of its promotions (Renew's region_lease) runs out."""
        self._holder: dict[str, tuple[str, float]] = {}
        """By region: the ledger life that last renewed a lease of the region (or that a Join just issued), and when
        that lease runs out. Until then a Join from another ledger is refused: it would write off what a live
        process holds."""
        self._replaced: dict[str, str] = {}
        """By region: the life the latest Join named as lost (`replaces`). The region's other agents that saw it
        end may name it too, though the hold passed to the life that Join issued."""
        self._newest_life: dict[str, str] = {}
        """By region: the newest ledger incarnation any promotion admitted (an older one is superseded)."""
        self._contested: set[str] = set()
        """Promotions whose regions' demand over a horizon exceeds what the center can grant: where an idle
        region may be asked to give back what it holds (renewal notices)."""
        self._fully_reported: dict[str, str] = {}
        """By region: the incarnation whose every promotion this leader has had a report of."""
        self._demand: dict[str, dict[str, int]] = {}
        self._below_floor: dict[tuple[str, str], tuple[str, int]] = {}
        """By promotion and region: the ledger life and the highest below-floor count its agents reported.
        Each of a region's agents counts the lines it served, so their reports alternate; the highest is the
        one that only grows within the life, and a lower one must not read as a new life to the alerts."""
        self._configuring = asyncio.Lock()
        """Held by every configuration change, so changes commit in catalog revision order."""
        self._revisions = RevisionIndex()
        self._catalog_revision = 0
        self._take_over_owed = False
        """Set when a take-over failed (`CenterShards.take_over`): some of the promotions it renumbered may be
        stored at revisions above `_catalog_revision` already, unserved, so no change may take a revision until
        a take-over completes (the shard follower retries it): an agent's cursor passing one of those revisions
        would skip that promotion once a later leader serves it."""
        self._emergency = EmergencyFreeze()
        self._catalog_changed = asyncio.Event()
        self._trail = AuditTrail(store, clock)
        self._issuer = IncarnationIssuer(store, clock)
        self._discrepancies = Discrepancies()
        self._shards = ShardMap.single(self.settings.group)
        self._moving: dict[int, SlotMove] = {}
        self._draining: set[str] = set()

    def serves(self, promotion_id: str) -> bool:
        """Whether this group serves the promotion by the shard map it holds."""
        return self._shards.owner_of(promotion_id) == self.settings.group

    def _check_shard(self, promotion_id: str, granting: bool) -> None:
        check(self.settings.group, self._shards, self._moving, promotion_id, granting)

    def _note_draining(self) -> None:
        """Promotions of slots this group is giving away: no grants, every region asked for what it holds."""
        leaving = {slot for slot, move in self._moving.items() if move.source == self.settings.group}
        leaving = {slot for slot in leaving if self._moving[slot].phase is not Phase.DONE}
        self._draining = set()
        if leaving:  # the shard follower sets the map every second, mostly with no slot leaving: no scan then
            self._draining = {pid for pid in self._states if self._shards.slot(pid) in leaving}

    async def _load_books(self) -> None:
        """The documents beside the promotions a leader needs before it answers (a subclass adds its own)."""
        await self._trail.load()
        await self._issuer.load()

    async def start(self) -> None:
        """Rebuilds every promotion from the store, then serves (on winning an election too)."""
        self.stop_serving()
        grace = self._clock.monotonic() + self.settings.lease_ttl_s
        stored = await self._store.load_all()
        # Only this group's promotions: the store may keep copies of slots it handed away.
        states = [state for state in stored if self.serves(state.promotion.id)]
        document = await self._store.load_document(EMERGENCY_DOCUMENT)
        await self._load_books()
        self._emergency = EmergencyFreeze.from_document(document) if document else EmergencyFreeze()
        # Those copies' revisions count too: an agent's cursor on this catalog may stand at one of them.
        self._catalog_revision = max([self._emergency.revision, *(s.promotion.revision for s in stored)])
        own = sorted((s for s in states if s.numbered_by is None), key=lambda s: s.promotion.revision)
        # Handed over to this group, whose leader then died before its take-over renumbered them all.
        renumbered = await self._renumbered([s for s in states if s.numbered_by is not None])
        for state in own + renumbered:
            self._states[state.promotion.id] = state
            self._revisions.record(state.promotion.id, state.promotion.revision)
            self._note_lives(state)
            for region in state.accounts:
                self._lease_expiry[(state.promotion.id, region)] = grace
        if renumbered:
            self._catalog_revision = renumbered[-1].promotion.revision  # in revision order, above the rest
        # As the leases above: the lives an earlier leader saw may still be serving on what they hold.
        self._holder = {region: (life, grace) for region, life in self._newest_life.items()}
        self._note_draining()
        self._serving = True

    def stop_serving(self) -> None:
        """Forgets everything: a standby answers NotLeader until it leads and rebuilds."""
        self._serving = False
        self._take_over_owed = False  # the next leader's `start` renumbers what a failed take-over left
        self._states.clear()
        self._lease_expiry.clear()
        self._region_lease.clear()
        self._holder.clear()
        self._replaced.clear()
        self._newest_life.clear()
        self._contested.clear()
        self._fully_reported.clear()
        self._demand.clear()
        self._below_floor.clear()
        self._revisions.clear()
        self._discrepancies.clear()
        self._publish()  # watchers wake up, find no leader, and end their streams

    @property
    def leading(self) -> bool:
        """Whether this replica answers now (it leads and has rebuilt its state)."""
        return self._serving and self._leadership.leading()

    def _require_leader(self) -> None:
        """Every answer, reads and lease renewals included, needs leadership that is still
        trustworthy now: a replica that lost it serves nothing from memory."""
        if not self.leading:
            raise NotLeader(self._leadership.leader_address())

    def _changed(self, promotion: Promotion) -> None:
        self._revisions.record(promotion.id, promotion.revision)
        self._catalog_revision = max(self._catalog_revision, promotion.revision)
        self._publish()

    def _next_revision(self) -> int:
        """The catalog revision the configuration change being made takes (call it under the configuration
        lock, before writing anything)."""
        if self._take_over_owed:
            raise Unavailable(
                f"center group {self.settings.group} has not finished taking over the slots handed to it (a store"
                " write failed; its shard follower retries it at each step): retry this change shortly, and check"
                " the store's health if it keeps failing"
            )
        return self._catalog_revision + 1

    def _publish(self) -> None:
        self._catalog_changed.set()
        self._catalog_changed = asyncio.Event()

    def promotion(self, promotion_id: str) -> Promotion:
        self._require_leader()
        return self._state(promotion_id).promotion

    def promotions(self) -> list[Promotion]:
        self._require_leader()
        served = [state for state in self._states.values() if self.serves(state.promotion.id)]
        return [state.promotion for state in sorted(served, key=lambda s: s.promotion.id)]

    def spent(self, promotion_id: str) -> int:
        """Net deductions every region reported for the promotion: `usage`'s sum, without its views."""
        self._require_leader()
        return sum(account.consumed for account in self._state(promotion_id).accounts.values())

    def usage(self, promotion_id: str) -> UsageView:
        self._require_leader()
        state = self._state(promotion_id)
        now = self._clock.monotonic()
        demands = self._demand.get(promotion_id, {})
        regions = []
        # A region the promotion allows shows from the start, at zero, so an owner sees who holds
        # nothing as well as who spent; one since removed from it shows while it still has an account.
        for region in sorted(set(state.accounts) | set(state.promotion.regions)):
            account = state.accounts.get(region, RegionAccount())
            expiry = self._lease_expiry.get((promotion_id, region))
            if expiry is not None:
                expiry = max(expiry, self._region_lease.get(region, expiry))
            lease_active = None if expiry is None else expiry > now
            age = None if expiry is None else max(0.0, now - (expiry - self.settings.lease_ttl_s))
            _, floor = self._below_floor.get((promotion_id, region), ("", 0))
            regions.append(RegionView(region, account, lease_active, age, demands.get(region, 0), floor))
        return UsageView(state.promotion, state.unallocated, regions)

    def _state(self, promotion_id: str) -> PromotionState:
        self._require_leader()  # a call in flight when leadership was lost must not read a cleared state
        self._check_shard(promotion_id, granting=False)
        state = self._states.get(promotion_id)
        if state is None:
            raise NotFound(f"no promotion with id {promotion_id!r}")
        return state

    async def _exclusively(self, promotion_ids: Sequence[str], work: Callable[[], Awaitable[T]]) -> T:
        """Runs `work` under the promotions' locks (taken in id order, so two callers never wait
        on each other), shielded: a caller that gives up (its RPC was cancelled) neither releases
        a lock early nor stops a commit halfway, so a retry never runs beside the call it retries
        and memory never falls behind the store."""

        async def locked() -> T:
            async with contextlib.AsyncExitStack() as stack:
                for promotion_id in sorted(set(promotion_ids)):
                    await stack.enter_async_context(self._locks.held(promotion_id))
                return await work()

        task = asyncio.ensure_future(locked())
        task.add_done_callback(_outcome_read)
        return await asyncio.shield(task)

    async def _change(
        self,
        promotion_id: str,
        mutate: Callable[[PromotionState], object],
        audit: Callable[[PromotionState], AuditRecord] | None = None,
    ) -> PromotionState:
        """Applies `mutate` to a copy and commits it, with the audit record `audit` makes of the changed
        state (an admin write); a mutation returning False changed nothing and is not recorded."""

        async def work() -> PromotionState:
            state = self._state(promotion_id).copy()
            if mutate(state) is False:
                return self._state(promotion_id)
            await self._commit([(state, None)], None if audit is None else audit(state))
            return state

        return await self._exclusively([promotion_id], work)

    async def _commit(
        self, changes: Sequence[tuple[PromotionState, GrantRecord | None]], audit: AuditRecord | None = None
    ) -> None:
        """Commits the states (with their grants) in one store write, then installs them; call it
        under the promotions' locks. A commit that failed in any way reloads the promotions, so
        the next attempt starts from the truth. Leadership is the election's business: a
        NotLeader from the store only answers this call."""
        if not changes:
            return
        commits = []
        for state, grant in changes:
            expected = self._state(state.promotion.id).version
            state.version = expected + 1
            commits.append((state, expected, grant))
        ids = [state.promotion.id for state, _ in changes]
        write = self._store.commit_many(commits, audit)
        try:
            await (write if audit is None else self._trail.written(write, audit))
        except Conflict:
            await self._reload(ids)
            raise CommitConflict(f"promotion(s) {', '.join(ids)} changed by another writer; retry the call") from None
        except BaseException:
            await self._reload(ids)
            raise
        for state, _ in changes:
            self._states[state.promotion.id] = state
            self._note_lives(state)
            if state.promotion.revision > self._catalog_revision:
                # A configuration change: indexed in the same step as installed, so no catalog page
                # ever shows a promotion's new revision at its old place in the revision order.
                self._changed(state.promotion)

    async def _renumbered(self, arrived: list[PromotionState]) -> list[PromotionState]:
        """Promotions handed to this group, each at a revision above this group's catalog (and its own), stored
        so, in revision order: they kept the source's revision, which an agent whose cursor on this group's
        catalog is past it would never be sent. Call it before serving them, with no configuration change
        running (so no other writer races these commits, and no revision is taken twice). Each commit compares
        the version read, fenced like every store write: of two leaders renumbering at once, one wins."""
        revision, renumbered = self._catalog_revision, []
        for state in sorted(arrived, key=lambda s: s.promotion.revision):
            revision = max(revision, state.promotion.revision) + 1
            fresh = state.copy()
            fresh.promotion, fresh.version = replace(state.promotion, revision=revision), state.version + 1
            fresh.numbered_by = None
            renumbered.append(fresh)
        for batch in batches(renumbered, lambda s: len(s.encoded()), MAX_REPORT_BATCH, MAX_BATCH_BYTES):
            await self._store.commit_many([(state, state.version - 1, None) for state in batch])
        return renumbered

    async def _adopt(self, promotion_id: str) -> None:
        """After a create that failed, what the store holds: a create whose answer was lost (etcd) did
        land, and the center must serve what is stored, or a retry would find it taken and the
        promotion would not exist here until the next election."""
        stored = await self._store.load(promotion_id)
        if stored is not None and promotion_id not in self._states:
            self._states[promotion_id] = stored
            self._note_lives(stored)
            self._changed(stored.promotion)

    async def _reload(self, promotion_ids: Sequence[str]) -> None:
        for promotion_id in promotion_ids:
            fresh = await self._store.load(promotion_id)
            if fresh is not None:
                self._states[promotion_id] = fresh
                self._note_lives(fresh)

    def _require_known_case(self, field: str, regions: Iterable[str]) -> None:
        """InvalidArgument for a region named as one that held quota here, but in another case (a typo)."""
        for region in regions:
            require_known_case(field, region, self._newest_life)

    def _note_lives(self, state: PromotionState) -> None:
        for region, account in state.accounts.items():
            if account.incarnation > self._newest_life.get(region, ""):
                self._newest_life[region] = account.incarnation
