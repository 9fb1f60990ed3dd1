"""What each kind of fault did to the load, for a run's summary: `fault_summary(history, verdict)` and
`figures(history)`, pure (a history and its verdict in, plain numbers out, ready for JSON).

A fault is a window [start, end], or [start, +inf) when it was never healed in the run. A budget lowered is a
moment [start, start], counted only after the load began: the runner records one budget event per promotion as it
creates it, and those are set-up, not faults.

Per kind of fault:
- injected: how many windows;
- in_flight: operations whose [invoked, completed] overlaps a window;
- violations: violations with at least one operation in flight during a window;
- serve_again_s: per healed window, from its end until a fresh deduct or reserve invoked at or after the end, that
  the fault bore on (`NemesisEvent.covers`: in the region cut off or switched, through the agent killed, of the
  promotion frozen; any, after a fault of the center or etcd), was answered: ok, or after a broken part also
  refused for the promotion's own reason (sold out, a user's limit), since a sold-out promotion is served by that;
- propagation_s, for the switches ("freeze", "emergency") only: per window, how late after the switch an agent
  still took quota it covers (the latest invocation answered ok while the switch held), 0.0 when none did.

Times are reported as {"max", "median", "count"} in seconds, rounded to the millisecond, or None when no window
had one.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from statistics import median

from loadtest.chaos.books import Verdict
from loadtest.chaos.history import History, Kind, NemesisEvent, Operation, Status

NOT_SERVING = {"REJECT_REASON_LEASE_EXPIRED", "REJECT_REASON_FROZEN"}
"""Refusals that say the region cannot spend now, not that the order may not have it."""
SWITCHES = ("freeze", "emergency")
"""Kinds that stop agents from handing out quota while they hold, so how fast they took effect is measured."""


def fault_summary(history: History, verdict: Verdict) -> dict[str, dict[str, object]]:
    """By kind of fault (only the kinds the run injected), in name order."""
    operations = history.operations
    summary: dict[str, dict[str, object]] = {}
    for kind, windows in sorted(_windows(history).items()):
        in_flight = {op.id for op in operations if any(_during(op, window) for window in windows)}
        entry: dict[str, object] = {
            "injected": len(windows),
            "in_flight": len(in_flight),
            "violations": sum(1 for violation in verdict.violations if in_flight.intersection(violation.operations)),
            "serve_again_s": _stats(_serve_again(operations, window) for window in windows),
        }
        if kind in SWITCHES:
            entry["propagation_s"] = _stats(_propagation(operations, window) for window in windows)
        summary[kind] = entry
    return summary


def figures(history: History) -> dict[str, object]:
    """The run's overall numbers: operations by status (every status, zeros included) and fault windows."""
    statuses = Counter(op.outcome.status for op in history.operations)
    return {
        "operations": {status.value: statuses[status] for status in Status},
        "windows": sum(len(windows) for windows in _windows(history).values()),
    }


def _windows(history: History) -> dict[str, list[NemesisEvent]]:
    began = min((op.invoked for op in history.operations), default=math.inf)
    windows: dict[str, list[NemesisEvent]] = defaultdict(list)
    for event in history.events:
        if event.kind == "budget" and event.start <= began:
            continue
        windows[event.kind].append(event)
    return windows


def _end(window: NemesisEvent) -> float:
    """A budget change is a moment, not a window; any other fault never healed lasts to the end of the run."""
    if window.kind == "budget":
        return window.start
    return math.inf if window.end is None else window.end


def _during(op: Operation, window: NemesisEvent) -> bool:
    return op.invoked <= _end(window) and op.completed >= window.start


def _serve_again(operations: Sequence[Operation], window: NemesisEvent) -> float | None:
    """Measured to the answer, not the invocation: a call sent at the heal that hangs has not been served yet."""
    if window.end is None:
        return None
    end = window.end
    answered = [op.completed for op in operations if op.invoked >= end and window.covers(op) and _served(op, window)]
    return min(answered) - end if answered else None


def _served(op: Operation, window: NemesisEvent) -> bool:
    """After a switch, quota handed out again. After a broken part, a new order answered for what it is: ok, or
    refused for a reason of the promotion's own (sold out, a user's limit), not because the region cannot spend."""
    if window.kind in SWITCHES or op.outcome.status is Status.OK:
        return op.fresh_take
    refused = op.outcome.status is Status.REFUSED and op.outcome.reason not in NOT_SERVING
    return refused and op.kind in (Kind.DEDUCT, Kind.RESERVE)


def _propagation(operations: Sequence[Operation], window: NemesisEvent) -> float:
    # Only answers that certainly came while the switch held: after its end an agent may rightly serve again.
    late = [
        op.invoked - window.start
        for op in operations
        if op.fresh_take and window.covers(op) and op.invoked >= window.start and op.completed < _end(window)
    ]
    return max(late, default=0.0)


def _stats(values: Iterable[float | None]) -> dict[str, float | int] | None:
    present = [value for value in values if value is not None]
    if not present:
        return None
    return {"max": round(max(present), 3), "median": round(median(present), 3), "count": len(present)}
