"""The book of alerts: what the center raised, what it did, and how a person answered. Pure: the alert engine
keeps it in one store document and writes it, with the audit record of each acknowledgement.

    Alert     one alert: A-1, A-2, ... (the webhooks' deduplication key too)
    Book      raise (one open alert per rule, promotion and region), acknowledge, record a delivery, list
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, replace
from typing import Any

from quota_common.errors import FailedPrecondition, InvalidArgument, NotFound

DOCUMENT = "alerts"
"""The store document holding the book."""
MAX_OPEN = 1000
"""Alerts that may wait for an answer at once: the book is one store document (etcd takes values up to
1.5 MiB), so past this a new alert is not booked (the engine logs it, and still acts on a freeze rule)."""
KEEP = 1000
"""Acknowledged alerts kept for the listing; the oldest go first."""


class Cause(enum.Enum):
    """A person's answer, as the proto's AlertCause numbers it."""

    FALSE_ALARM = 1
    REAL_FIXED = 2
    REAL_ACCEPTED = 3


@dataclass(frozen=True)
class Alert:
    id: str
    rule: str
    """Its kind: burn_rate, budget_low, concentration, below_floor, reconcile."""
    name: str
    """The rule that raised it; with the promotion and region, what keeps one alert open at a time."""
    promotion_id: str
    region: str
    message: str
    raised_at_ms: int
    action: str = ""
    cause: int = 0
    """A Cause's value once acknowledged; 0 while open."""
    note: str = ""
    acknowledged_by: str = ""
    acknowledged_at_ms: int = 0
    deliveries: int = 0
    """Webhook posts answered 2xx."""
    delivered_at_ms: int = 0
    """When the last one was."""

    @property
    def acknowledged(self) -> bool:
        return self.cause != 0

    @property
    def key(self) -> tuple[str, str, str]:
        return self.name, self.promotion_id, self.region


@dataclass
class Book:
    alerts: dict[str, Alert]
    next_number: int = 1

    @classmethod
    def from_document(cls, document: dict[str, Any] | None) -> Book:
        if document is None:
            return cls({})
        return cls({alert["id"]: Alert(**alert) for alert in document["alerts"]}, int(document["next_number"]))

    def to_document(self) -> dict[str, Any]:
        return {"next_number": self.next_number, "alerts": [asdict(alert) for alert in self.alerts.values()]}

    @property
    def raised(self) -> int:
        """Every alert ever booked, acknowledged and trimmed ones included."""
        return self.next_number - 1

    def open_alert(self, name: str, promotion_id: str, region: str) -> Alert | None:
        key = (name, promotion_id, region)
        return next((alert for alert in self.alerts.values() if not alert.acknowledged and alert.key == key), None)

    def raised_one(self, alert: Alert) -> tuple[Book, Alert] | None:
        """A copy with `alert` added under the next id, and the alert as added; None when an alert of its rule,
        promotion and region is open already, or the book holds MAX_OPEN open alerts."""
        if self.open_alert(*alert.key) is not None or len(self.unanswered()) >= MAX_OPEN:
            return None
        book = Book(dict(self.alerts), self.next_number + 1)
        added = replace(alert, id=f"A-{self.next_number}")
        book.alerts[added.id] = added
        book._trim()
        return book, added

    def acknowledged(self, alert_id: str, cause: Cause, note: str, by: str, now_ms: int) -> tuple[Book, Alert]:
        """A copy with the alert answered; the same answer again is the alert unchanged (a retry)."""
        alert = self.find(alert_id)
        if alert.acknowledged:
            if alert.cause != cause.value:
                raise FailedPrecondition(
                    f"alert {alert_id} was acknowledged as {Cause(alert.cause).name.lower().replace('_', '-')} by "
                    f"{alert.acknowledged_by}; an answer once given is not changed"
                )
            return self, alert
        answered = replace(alert, cause=cause.value, note=note, acknowledged_by=by, acknowledged_at_ms=now_ms)
        return self._with(answered), answered

    def delivered(self, alert_id: str, now_ms: int) -> Book | None:
        """A copy counting one more delivery of the alert; None when the book no longer keeps it."""
        alert = self.alerts.get(alert_id)
        if alert is None:
            return None
        return self._with(replace(alert, deliveries=alert.deliveries + 1, delivered_at_ms=now_ms))

    def find(self, alert_id: str) -> Alert:
        alert = self.alerts.get(alert_id)
        if alert is None:
            raise NotFound(
                f"no alert {alert_id!r}; `quota alerts --all` lists them (the oldest acknowledged ones are dropped)"
            )
        return alert

    def unanswered(self) -> list[Alert]:
        return [alert for alert in self.alerts.values() if not alert.acknowledged]

    def listing(self, include_acknowledged: bool, promotion_id: str) -> list[Alert]:
        """Newest first."""
        return [
            alert
            for alert in sorted(self.alerts.values(), key=lambda alert: int(alert.id[2:]), reverse=True)
            if (include_acknowledged or not alert.acknowledged)
            and (not promotion_id or alert.promotion_id == promotion_id)
        ]

    def _with(self, alert: Alert) -> Book:
        book = Book(dict(self.alerts), self.next_number)
        book.alerts[alert.id] = alert
        return book

    def _trim(self) -> None:
        answered = [key for key, alert in self.alerts.items() if alert.acknowledged]
        for key in answered[: max(0, len(answered) - KEEP)]:
            del self.alerts[key]


def cause_from_wire(value: int) -> Cause:
    try:
        return Cause(value)
    except ValueError:
        raise InvalidArgument(
            "cause is required: false-alarm (1), real-fixed (2) or real-accepted (3); say what the alert was"
        ) from None
