"""What a chaos run saw: every client operation with its outcome, and every fault the nemesis injected.

Times are floats from the workload's own clock (seconds), the same clock for operations and faults, so
"invoked after the freeze took effect" is a comparison of two numbers. A history is kept as JSON lines
(one operation or nemesis event per line) and reads back to an equal `History`, so a run can be re-judged.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from region_agent.ledger.base import Line


class Kind(enum.StrEnum):
    DEDUCT = "deduct"
    REFUND = "refund"
    RESERVE = "reserve"
    CONFIRM = "confirm"
    CANCEL = "cancel"


class Status(enum.StrEnum):
    OK = "ok"
    REFUSED = "refused"
    """A typed rejection (`reason` is the RejectReason name) or another refusal (`reason` is the gRPC status)."""
    FAILED = "failed"
    """Definitely not applied: INVALID_ARGUMENT, NOT_FOUND and the like."""
    UNKNOWN = "unknown"
    """Timeout or UNAVAILABLE: it may or may not have applied."""


@dataclass(frozen=True)
class Outcome:
    status: Status
    replayed: bool = False
    applied: tuple[Line, ...] = ()
    """For ok: the lines the answer said were applied (for a refund, what it gave back)."""
    reason: str = ""
    expired: bool = False
    """For an ok cancel: the reservation had already lapsed at its deadline."""

    @classmethod
    def ok(cls, applied: tuple[Line, ...], replayed: bool = False, expired: bool = False) -> Outcome:
        return cls(Status.OK, replayed=replayed, applied=applied, expired=expired)

    @classmethod
    def refused(cls, reason: str) -> Outcome:
        return cls(Status.REFUSED, reason=reason)

    @classmethod
    def failed(cls, reason: str) -> Outcome:
        return cls(Status.FAILED, reason=reason)

    @classmethod
    def unknown(cls, reason: str = "DEADLINE_EXCEEDED") -> Outcome:
        return cls(Status.UNKNOWN, reason=reason)


@dataclass(frozen=True)
class Operation:
    """One attempt by one client; a retry of the same key is another Operation."""

    id: int
    client: str
    kind: Kind
    order_key: str
    region: str
    agent: str
    lines: tuple[Line, ...]
    """As requested; empty for confirm and cancel (they name only the order) and for a whole refund."""
    invoked: float
    completed: float
    outcome: Outcome
    refund_id: str = ""


@dataclass(frozen=True)
class NemesisEvent:
    """A fault or an operator action, e.g. kind "freeze" with the promotion as target, or "partition" with the
    region as target. `start` is when it took effect; `end` when it was healed (None: never, in this run)."""

    kind: str
    target: str
    start: float
    end: float | None = None


@dataclass(frozen=True)
class History:
    operations: tuple[Operation, ...] = ()
    events: tuple[NemesisEvent, ...] = ()

    def to_jsonl(self) -> str:
        rows = [{"op": _operation_row(op)} for op in self.operations]
        rows += [{"nemesis": _event_row(event)} for event in self.events]
        return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)

    @classmethod
    def from_jsonl(cls, text: str) -> History:
        operations: list[Operation] = []
        events: list[NemesisEvent] = []
        for line in text.splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            if "op" in row:
                operations.append(_operation(row["op"]))
            else:
                events.append(NemesisEvent(**row["nemesis"]))
        return cls(tuple(operations), tuple(events))


def _line_rows(lines: Iterable[Line]) -> list[list[Any]]:
    return [[line.promotion_id, line.amount, line.user_id] for line in lines]


def _lines(rows: Iterable[list[Any]]) -> tuple[Line, ...]:
    return tuple(Line(str(promotion), int(amount), str(user)) for promotion, amount, user in rows)


def _operation_row(op: Operation) -> dict[str, Any]:
    outcome = op.outcome
    return {
        "id": op.id,
        "client": op.client,
        "kind": op.kind.value,
        "order_key": op.order_key,
        "refund_id": op.refund_id,
        "region": op.region,
        "agent": op.agent,
        "lines": _line_rows(op.lines),
        "invoked": op.invoked,
        "completed": op.completed,
        "status": outcome.status.value,
        "replayed": outcome.replayed,
        "applied": _line_rows(outcome.applied),
        "reason": outcome.reason,
        "expired": outcome.expired,
    }


def _operation(row: dict[str, Any]) -> Operation:
    outcome = Outcome(
        Status(row["status"]), bool(row["replayed"]), _lines(row["applied"]), str(row["reason"]), bool(row["expired"])
    )
    return Operation(
        id=int(row["id"]),
        client=str(row["client"]),
        kind=Kind(row["kind"]),
        order_key=str(row["order_key"]),
        region=str(row["region"]),
        agent=str(row["agent"]),
        lines=_lines(row["lines"]),
        invoked=float(row["invoked"]),
        completed=float(row["completed"]),
        outcome=outcome,
        refund_id=str(row["refund_id"]),
    )


def _event_row(event: NemesisEvent) -> dict[str, Any]:
    return {"kind": event.kind, "target": event.target, "start": event.start, "end": event.end}
