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

    @property
    def fresh_take(self) -> bool:
        """An ok, non-replayed deduct or reserve: quota the agent handed out at that moment, not a replay."""
        ok = self.outcome.status is Status.OK and not self.outcome.replayed
        return ok and self.kind in (Kind.DEDUCT, Kind.RESERVE)


@dataclass(frozen=True)
class NemesisEvent:
    """A fault or an operator action. `start` is when it took effect; `end` when it was healed (None: never, in
    this run). The target says what was hit:

    - a center replica or etcd member ("kill-leader", "stop-leader", "kill-etcd"): the whole system;
    - an agent ("kill-agent"): the operations sent through it;
    - a region ("partition", "kill-redis", "stop-redis"; "emergency", "" being every region);
    - a promotion ("freeze"; "budget", whose budget became `value` when the center answered, at `start`, with no
      `end`: the runner records one as it creates each promotion, so later ones are changes mid-load).
    """

    kind: str
    target: str
    start: float
    end: float | None = None
    value: int | None = None
    """The new budget of a "budget" event (money in minor units or a count); None for every other kind."""

    def covers(self, op: Operation) -> bool:
        """Whether the event bears on the operation, by what its target names (see above)."""
        if self.kind in _BY_PROMOTION:
            return any(line.promotion_id == self.target for line in op.lines)
        if self.kind in _BY_REGION:
            return self.target in ("", op.region)
        if self.kind in _BY_AGENT:
            return self.target == op.agent
        return True


_BY_PROMOTION = ("freeze", "budget")
_BY_REGION = ("partition", "emergency", "kill-redis", "stop-redis")
_BY_AGENT = ("kill-agent",)


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
                events.append(_event(row["nemesis"]))
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
    return {"kind": event.kind, "target": event.target, "start": event.start, "end": event.end, "value": event.value}


def _event(row: dict[str, Any]) -> NemesisEvent:
    # Histories kept before budget events have no "value": read as None, so they can still be re-judged.
    end, value = row.get("end"), row.get("value")
    return NemesisEvent(
        kind=str(row["kind"]),
        target=str(row["target"]),
        start=float(row["start"]),
        end=None if end is None else float(end),
        value=None if value is None else int(value),
    )
