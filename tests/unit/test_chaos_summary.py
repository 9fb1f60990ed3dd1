"""The fault summary on hand-built histories: which faults count, what was in flight, how long until the load
was served again, and how late a switch still let quota out."""

from __future__ import annotations

from loadtest.chaos.books import Verdict, Violation, ViolationKind
from loadtest.chaos.history import History, Kind, NemesisEvent, Operation, Outcome
from loadtest.chaos.summary import fault_summary, figures
from region_agent.ledger.base import Line

REFUSED = Outcome.refused("REJECT_REASON_FROZEN")


def take(
    op_id: int,
    invoked: float,
    completed: float,
    *,
    region: str = "r1",
    promotion: str = "p",
    outcome: Outcome | None = None,
    kind: Kind = Kind.DEDUCT,
) -> Operation:
    lines = (Line(promotion, 1, "u1"),)
    answer = Outcome.ok(lines) if outcome is None else outcome
    return Operation(op_id, "c1", kind, f"o{op_id}", region, f"{region}-a", lines, invoked, completed, answer)


def violation(*op_ids: int) -> Violation:
    return Violation(ViolationKind.PHANTOM_CONSUMPTION, op_ids, "")


def test_budgets_set_before_the_load_are_not_faults_and_a_change_during_it_is() -> None:
    events = (NemesisEvent("budget", "p", 0.5, value=100), NemesisEvent("budget", "p", 5.0, value=50))
    history = History((take(1, 1.0, 1.5), take(2, 4.8, 5.2), take(3, 6.0, 6.5)), events)

    summary = fault_summary(history, Verdict())

    assert summary == {"budget": {"injected": 1, "in_flight": 1, "violations": 0, "serve_again_s": None}}
    assert figures(history) == {"operations": {"ok": 3, "refused": 0, "failed": 0, "unknown": 0}, "windows": 1}


def test_operations_overlapping_a_window_are_in_flight_and_so_are_their_violations() -> None:
    ops = (take(1, 5.0, 6.0), take(2, 9.0, 10.5), take(3, 15.0, 15.5), take(4, 21.0, 21.5), take(5, 31.0, 32.0))
    events = (NemesisEvent("partition", "r1", 10.0, 20.0), NemesisEvent("partition", "r1", 30.0))
    verdict = Verdict((violation(1, 3), violation(4), violation(1)))

    partition = fault_summary(History(ops, events), verdict)["partition"]

    assert (partition["injected"], partition["in_flight"], partition["violations"]) == (2, 3, 1)


def test_serving_again_counts_from_the_heal_to_the_first_fresh_answer_the_fault_bore_on() -> None:
    events = (
        NemesisEvent("partition", "r1", 10.0, 20.0),
        NemesisEvent("partition", "r1", 30.0, 32.0),
        NemesisEvent("kill-agent", "r2-a", 50.0, 51.0),
        NemesisEvent("kill-leader", "center-0", 70.0, 71.0),
    )
    ops = (
        take(1, 20.1, 20.2, region="r2"),  # another region was never cut off
        take(2, 20.2, 20.3, outcome=REFUSED),
        take(3, 20.3, 20.4, outcome=Outcome.ok((), replayed=True)),
        take(4, 19.9, 20.6),  # sent before the heal
        take(5, 20.5, 21.5, kind=Kind.RESERVE),
        take(6, 21.0, 21.6),
        take(7, 32.0, 32.25),
        take(8, 51.0, 51.1),  # through another agent
        take(9, 51.5, 52.0, region="r2"),
        take(10, 71.1, 71.2, outcome=Outcome.refused("REJECT_REASON_LEASE_EXPIRED")),  # not spending yet
        take(11, 71.2, 71.4, outcome=Outcome.refused("REJECT_REASON_EXHAUSTED")),  # served: it is sold out
    )

    summary = fault_summary(History(ops, events), Verdict())

    assert summary["partition"]["serve_again_s"] == {"max": 1.5, "median": 0.875, "count": 2}
    assert summary["kill-agent"]["serve_again_s"] == {"max": 1.0, "median": 1.0, "count": 1}
    assert summary["kill-leader"]["serve_again_s"] == {"max": 0.4, "median": 0.4, "count": 1}


def test_a_switch_reports_how_late_it_still_let_quota_out() -> None:
    events = (
        NemesisEvent("freeze", "p", 10.0, 20.0),
        NemesisEvent("freeze", "p", 30.0, 35.0),
        NemesisEvent("emergency", "r2", 50.0, 55.0),
        NemesisEvent("emergency", "", 60.0),
    )
    ops = (
        take(1, 10.4, 10.6),
        take(2, 15.0, 15.5, promotion="q"),  # not frozen
        take(3, 19.8, 20.2),  # answered after the unfreeze was sent
        take(4, 51.0, 51.1),  # r1: not switched
        take(5, 50.7, 50.8, region="r2"),
        take(6, 60.2, 60.3, region="r2"),
        take(7, 60.3, 60.4),
    )

    summary = fault_summary(History(ops, events), Verdict())

    assert summary["freeze"]["propagation_s"] == {"max": 0.4, "median": 0.2, "count": 2}
    assert summary["emergency"]["propagation_s"] == {"max": 0.7, "median": 0.5, "count": 2}
    # r2 was next answered at 60.3 (r1's answer at 51.1 tells nothing of r2); the switch for all never ended.
    assert summary["emergency"]["serve_again_s"] == {"max": 5.3, "median": 5.3, "count": 1}
    assert figures(History(ops, events))["windows"] == 4
