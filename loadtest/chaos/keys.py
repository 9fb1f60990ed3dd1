"""Attempts grouped by idempotency key, and what each key's attempts say together.

A key is (order key, kind, refund id): deduct, reserve, confirm and cancel each carry the order key, and a
refund carries its refund id (empty means the order key, as the agent's API says), so partial refunds of one
order are separate keys and a retried refund id is the same key.

A key is applied when any attempt answered ok: an ok is never taken back, and the workload retries every
unknown key after healing, so the retry's answer (replayed or not) tells whether the unknown attempt applied.
A key with no ok whose last attempt is still unknown is unresolved: it may or may not have applied.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from loadtest.chaos.books import Violation, ViolationKind
from loadtest.chaos.history import Kind, Operation, Status
from region_agent.ledger.base import Line

Key = tuple[str, Kind, str]

_DECIDED_NO = (Status.REFUSED, Status.FAILED)


@dataclass(frozen=True)
class Attempts:
    key: Key
    operations: tuple[Operation, ...]
    """In the order they were invoked."""

    @property
    def first_ok(self) -> Operation | None:
        return next((op for op in self.operations if op.outcome.status is Status.OK), None)

    @property
    def applied_lines(self) -> tuple[Line, ...]:
        """What the first ok answer said was applied; a replay repeats the first answer, so any ok would do."""
        first = self.first_ok
        return first.outcome.applied if first else ()

    @property
    def unresolved(self) -> bool:
        return self.first_ok is None and self.operations[-1].outcome.status is Status.UNKNOWN


def key_of(op: Operation) -> Key:
    """What a retry must repeat: the order and kind, and for a refund its refund id (the order key if none)."""
    refund_id = (op.refund_id or op.order_key) if op.kind is Kind.REFUND else ""
    return op.order_key, op.kind, refund_id


def group(operations: Iterable[Operation]) -> dict[Key, Attempts]:
    by_key: dict[Key, list[Operation]] = defaultdict(list)
    for op in operations:
        by_key[key_of(op)].append(op)
    return {key: Attempts(key, tuple(sorted(ops, key=lambda op: op.invoked))) for key, ops in by_key.items()}


def key_violations(attempts: Attempts) -> list[Violation]:
    ops = attempts.operations
    order, kind, refund_id = attempts.key
    name = f"{kind} {order}" + (f" refund {refund_id}" if kind is Kind.REFUND and refund_id != order else "")
    found: list[Violation] = []
    fresh = [op for op in ops if op.outcome.status is Status.OK and not op.outcome.replayed]
    if len(fresh) > 1:
        found.append(
            Violation(
                ViolationKind.APPLIED_TWICE,
                tuple(op.id for op in fresh),
                f"{name} was answered ok without replayed {len(fresh)} times: the agent applied one key more than "
                "once; look for a lost or unshared idempotency record (agent restart, the region's other agent).",
            )
        )
    contradicting = sorted({(first.id, later.id) for first in ops for later in ops if _contradicts(first, later)})
    if contradicting:
        found.append(
            Violation(
                ViolationKind.TWO_ANSWERS,
                tuple(sorted({op_id for pair in contradicting for op_id in pair})),
                f"{name} got an ok and then a different answer for the same request "
                f"({', '.join(f'{a}->{b}' for a, b in contradicting)}): a retry must return the first answer.",
            )
        )
    if attempts.unresolved:
        found.append(
            Violation(
                ViolationKind.UNRESOLVED_UNKNOWN,
                tuple(op.id for op in ops if op.outcome.status is Status.UNKNOWN),
                f"{name} ended unknown (last: {ops[-1].outcome.reason}) and was never retried to an answer: "
                "the workload must retry every unknown key after healing.",
            )
        )
    return found


def _contradicts(first: Operation, later: Operation) -> bool:
    """Only an ok that finished before the other attempt began is a first answer: a refusal decided while the
    ok was still in flight may legitimately have come first. A retry with other lines may be refused."""
    if first.outcome.status is not Status.OK or later.invoked <= first.completed or later.lines != first.lines:
        return False
    if later.outcome.status in _DECIDED_NO:
        return True
    return later.outcome.status is Status.OK and later.outcome.applied != first.outcome.applied
