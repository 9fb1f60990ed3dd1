"""The center's alert engine: evaluates the alert rules on what regions report, books what fires, freezes
what a rule says to, and hands each alert to the webhooks until a person acknowledges it.

    AlertEngine(store, clock, trail, rules, lock, usages, freeze, settings)
      .load()                                   the book, from the store (when this center leads)
      .evaluate()                               one evaluation: raise, act, (re)send what is due
      .run() / .stop()                          the loop every settings.interval_s, while this center leads
      .raise_alert(rule, promotion_id, region, message)   for the center's other jobs (reconciliation)
      .acknowledge(alert_id, cause, note, by)   a person's answer, with its audit record
      .listing(include_acknowledged, promotion_id)

Every write of the book happens under the center's configuration lock (`lock`), the lock its audit trail
and a freeze need too, so the book, the trail and the catalog move one write at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from quota_center.alert_book import DOCUMENT, Alert, Book, Cause
from quota_center.alerting import FREEZE, AlertRuleSet, Firing, Snapshot, Watch
from quota_center.jobs import in_slices
from quota_center.store.base import Store
from quota_center.trail import AuditTrail, By, landed
from quota_center.webhooks import Backoff, Webhooks
from quota_common.clock import Clock, iso
from quota_common.errors import QuotaError
from quota_common.model import Promotion

if TYPE_CHECKING:
    from quota_center.center_core import UsageView

log = logging.getLogger(__name__)

FROZE = "froze the promotion"
ENGINE = "quota-center alert engine"
"""The actor of the audit records of what the engine does on its own."""


@dataclass(frozen=True)
class AlertSettings:
    interval_s: float = 10.0
    """Seconds between evaluations on the leading center."""
    resend_s: float = 900.0
    """An alert not acknowledged is posted to the webhooks again this long after its last delivery."""
    webhooks: tuple[str, ...] = ()
    """URLs each alert is POSTed to as JSON."""
    backoff: Backoff = field(default_factory=Backoff)
    """How webhook posts are retried."""


class AlertEngine:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        trail: AuditTrail,
        rules: Callable[[], AlertRuleSet],
        lock: asyncio.Lock,
        usages: Callable[[], Iterable[UsageView]],
        freeze: Callable[[str, By], Awaitable[Promotion]],
        settings: AlertSettings,
    ) -> None:
        """`usages()`: every promotion's usage, each read as it is taken (the evaluation takes them in slices);
        `freeze(promotion_id, by)`: the center's freeze, called under `lock`."""
        self._store = store
        self._clock = clock
        self._trail = trail
        self._rules = rules
        self._lock = lock
        self._usages = usages
        self._freeze = freeze
        self.settings = settings
        self._book = Book({})
        self._watch = Watch()
        self._firing: dict[str, set[Key]] = {}
        """By source (the rules' evaluation, or a job's rule): the conditions that fired in its last round."""
        self.webhooks = Webhooks(settings.webhooks, self._delivered, settings.backoff)
        self._loop: asyncio.Task[None] | None = None

    async def load(self) -> None:
        self._book = Book.from_document(await self._store.load_document(DOCUMENT))
        self._watch = Watch()
        self._firing = {}

    @property
    def raised(self) -> int:
        return self._book.raised

    def listing(self, include_acknowledged: bool, promotion_id: str) -> list[Alert]:
        return self._book.listing(include_acknowledged, promotion_id)

    def find(self, alert_id: str) -> Alert:
        """NotFound when the book does not hold it."""
        return self._book.find(alert_id)

    async def evaluate(self) -> list[Alert]:
        """One evaluation: the alerts it raised (none for a condition whose alert is still open)."""
        rules, raised = self._rules(), []
        watched, firings = set(), []
        # In slices: the loop keeps answering calls (and the election's lease) during a sweep of every promotion.
        async for usage in in_slices(self._usages()):
            now = self._clock.wall_ms()
            if not usage.promotion.is_active(now):
                continue
            watched.add(usage.promotion.id)
            consumed = {view.region: view.account.consumed for view in usage.regions}
            floors = {view.region: view.below_floor for view in usage.regions if view.below_floor}
            snapshot = Snapshot(usage.promotion, now, consumed, floors)
            firings += [(firing, usage.promotion) for firing in self._watch.observe(rules, snapshot)]
        self._watch.forget(watched)
        continuing = self._continuing(RULES, {_key(firing) for firing, _ in firings})
        for firing, promotion in firings:
            if _key(firing) not in continuing and (alert := await self._fired(firing, promotion)) is not None:
                raised.append(alert)
        self._send_due()
        return raised

    async def raise_round(self, rule: str, found: list[tuple[str, str, str]]) -> None:
        """One round of another job of the center (reconciliation): an alert for each (promotion, region,
        message) found, unless the same one was found in the job's last round too."""
        continuing = self._continuing(rule, {(rule, promotion_id, region) for promotion_id, region, _ in found})
        for promotion_id, region, message in found:
            if (rule, promotion_id, region) not in continuing:
                await self.raise_alert(rule, promotion_id, region, message)

    def _continuing(self, source: str, now_firing: set[Key]) -> set[Key]:
        """Those of `now_firing` that fired in `source`'s last round too. Their alert is open (nothing to
        raise) or a person answered it while the condition held: an answer covers the condition until it
        clears, so "real and accepted" is not paged again every round. Soft state: a new leader may raise a
        condition that persists once more."""
        before, self._firing[source] = self._firing.get(source, set()), now_firing
        return now_firing & before

    async def raise_alert(self, rule: str, promotion_id: str, region: str, message: str) -> Alert | None:
        """An alert raised by another job of the center (`rule` names it, reconcile say); None when one of
        the same rule, promotion and region is open already."""
        async with self._lock:
            alert = await self._booked(Alert("", rule, rule, promotion_id, region, message, self._clock.wall_ms()))
        self._send_due()
        return alert

    async def acknowledge(self, alert_id: str, cause: Cause, note: str, by: By) -> Alert:
        """Call under the lock. The same answer again is the alert as it stands, written nothing."""
        book, answered = self._book.acknowledged(alert_id, cause, note, by.actor, self._clock.wall_ms())
        if book is self._book:
            return answered
        before = self._book.find(alert_id)
        record = self._trail.seal(
            replace(by, request_id=by.request_id or f"{alert_id}-ack"),
            "AcknowledgeAlert",
            answered.promotion_id,
            payload(before),
            payload(answered),
        )
        await self._write(book, self._trail.written(self._save(book, record), record))
        return answered

    def run(self) -> None:
        """Starts evaluating every settings.interval_s (on winning the election)."""
        if self._loop is None:
            self._loop = asyncio.create_task(self._every_interval(), name="alert evaluation")

    async def stop(self) -> None:
        """Stops evaluating and posting (on losing leadership, or stopping)."""
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        await self.webhooks.close()

    async def _every_interval(self) -> None:
        while True:
            try:
                await self.evaluate()
            except QuotaError as error:  # leadership lost mid-way, a store hiccup: the next round tries again
                log.warning("alert evaluation stopped early: %s", error.message)
            except Exception:
                log.exception("alert evaluation failed; the next round tries again")
            await asyncio.sleep(self.settings.interval_s)

    async def _fired(self, firing: Firing, promotion: Promotion) -> Alert | None:
        async with self._lock:
            if self._book.open_alert(firing.rule.name, firing.promotion_id, firing.region) is not None:
                return None
            alert = Alert(
                "",
                firing.rule.kind.value,
                firing.rule.name,
                firing.promotion_id,
                firing.region,
                firing.message,
                self._clock.wall_ms(),
            )
            if firing.rule.action == FREEZE and not promotion.frozen:
                # The id it will be booked under, so the freeze's audit record names the alert that caused it.
                alert_id = f"A-{self._book.next_number}"
                await self._freeze(promotion.id, By(request_id=alert_id, job=f"{ENGINE} (alert {alert_id})"))
                alert = replace(alert, action=FROZE)
            return await self._booked(alert)

    async def _booked(self, alert: Alert) -> Alert | None:
        raised = self._book.raised_one(alert)
        if raised is None:
            if self._book.open_alert(*alert.key) is None:
                log.error("alert book full, not booked: %s (%s)", alert.message, alert.action or "no action")
            return None
        book, added = raised
        await self._write(book, self._save(book))
        log.warning("alert %s raised: %s%s", added.id, added.message, f" ({added.action})" if added.action else "")
        return added

    def _send_due(self) -> None:
        if not self.webhooks.urls:
            return
        due_ms = self._clock.wall_ms() - round(self.settings.resend_s * 1000)
        for alert in self._book.unanswered():
            if not self.webhooks.in_flight(alert.id) and (alert.deliveries == 0 or alert.delivered_at_ms <= due_ms):
                self.webhooks.send(payload(alert))

    async def _delivered(self, alert_id: str) -> None:
        """Counted in memory and stored with the book's next write: a write per post would rewrite the whole
        book under the configuration lock a thousand times a resend round. A leader that took over without
        the count posts those alerts once more, which the id makes harmless (delivery is at least once)."""
        book = self._book.delivered(alert_id, self._clock.wall_ms())
        if book is not None:
            self._book = book

    def _save(self, book: Book, record: Any = None) -> Awaitable[None]:
        return self._store.save_document(DOCUMENT, book.to_document(), record)

    async def _write(self, book: Book, write: Awaitable[None]) -> None:
        await landed(write, self.load)
        self._book = book


RULES = "rules"
"""The source of the alert rules' own evaluation."""
Key = tuple[str, str, str]
"""A condition: rule name, promotion, region."""


def _key(firing: Firing) -> Key:
    return firing.rule.name, firing.promotion_id, firing.region


def payload(alert: Alert) -> dict[str, Any]:
    """The alert as webhooks receive it and the audit trail records it: every field of the API's Alert."""
    return {
        "id": alert.id,
        "rule": alert.rule,
        "rule_name": alert.name,
        "promotion_id": alert.promotion_id,
        "region": alert.region,
        "message": alert.message,
        "raised_at": iso(alert.raised_at_ms),
        "action": alert.action,
        "acknowledged": alert.acknowledged,
        "cause": Cause(alert.cause).name.lower().replace("_", "-") if alert.acknowledged else "",
        "note": alert.note,
        "acknowledged_by": alert.acknowledged_by,
        "acknowledged_at": iso(alert.acknowledged_at_ms) if alert.acknowledged else "",
        "deliveries": alert.deliveries,
    }
