"""Faults on a seeded schedule, decided up front (so it can be printed, saved and replayed), on two tracks (the
stack's faults, and the budget owner's actions beside them), one at a time on each, each healed before the next.

Process faults belong to the stack (`Breakable`): kill -9 and restart, SIGSTOP past a lease and SIGCONT, a
partition. The budget owner's actions are the same on every stack and done here through the center's admin API:
a freeze of one promotion, the emergency switch (one region or everywhere), a budget lowered mid-load.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from loadtest.chaos.admin import CenterAdmin
from loadtest.chaos.history import NemesisEvent

HOLD_S = {
    "kill-leader": (0.5, 3.0),
    "stop-leader": (2.0, 4.0),
    "kill-agent": (0.5, 2.0),
    "kill-redis": (0.5, 2.0),
    "stop-redis": (0.5, 2.5),
    "kill-etcd": (1.0, 3.0),
    "partition": (1.0, 4.0),
    "freeze": (2.0, 4.0),
    "emergency": (1.0, 3.0),
    "budget": (0.0, 0.0),
}
"""How long each fault lasts, from injected to healed."""
ADMIN_FAULTS = ("freeze", "emergency", "budget")
EVERYWHERE = ""
"""The emergency switch's target when it stops every region."""
FIRST_AT_S = 2.0
GAP_S = (1.0, 2.0)
ADMIN_GAP_S = (2.0, 6.0)
"""Wider than between breaks: a promotion frozen most of the time would leave little load to break."""
LEADER_POLL_S = 0.1


@dataclass(frozen=True)
class Fault:
    at_s: float
    """From the start of the load."""
    kind: str
    hold_s: float
    target: str


class Breakable(Protocol):
    """A stack's own faults: what it can break (kind -> possible targets), and how."""

    def faults(self) -> Mapping[str, Sequence[str]]: ...

    async def inject(self, fault: Fault) -> str:
        """Breaks it and returns what was hit (e.g. which replica led when the leader was killed)."""
        ...

    async def repair(self, fault: Fault) -> None: ...


def schedule(seed: int, seconds: float, faults: Mapping[str, Sequence[str]]) -> list[Fault]:
    """Two tracks, each one fault at a time: the stack's faults, and the budget owner's actions beside them (so a
    freeze can land while a region is cut off or the leader is down). On each track every kind comes once first
    (in a seeded order, even if that runs past `seconds`), then more while they fit. `faults` maps each kind to
    its possible targets."""
    breaks = {kind: targets for kind, targets in faults.items() if kind not in ADMIN_FAULTS}
    actions = {kind: targets for kind, targets in faults.items() if kind in ADMIN_FAULTS}
    tracks = _track(f"nemesis-{seed}", seconds, breaks, GAP_S) + _track(f"owner-{seed}", seconds, actions, ADMIN_GAP_S)
    return sorted(tracks, key=lambda fault: fault.at_s)


def _track(seed: str, seconds: float, faults: Mapping[str, Sequence[str]], gap_s: tuple[float, float]) -> list[Fault]:
    rng = random.Random(seed)
    kinds = sorted(faults)
    first = list(kinds)
    rng.shuffle(first)
    scheduled: list[Fault] = []
    at = FIRST_AT_S
    while kinds:
        kind = first.pop(0) if first else rng.choice(kinds)
        hold = round(rng.uniform(*HOLD_S[kind]), 2)
        if len(scheduled) >= len(kinds) and at + hold > seconds:
            break
        scheduled.append(Fault(round(at, 2), kind, hold, rng.choice(sorted(faults[kind]))))
        at += hold + rng.uniform(*gap_s)
    return scheduled


def load_schedule(path: Path) -> list[Fault]:
    """A schedule as a run printed it: the "schedule" list of its --json summary, or the whole summary."""
    data: Any = json.loads(path.read_text())
    rows = data["schedule"] if isinstance(data, dict) else data
    return [Fault(float(r["at_s"]), str(r["kind"]), float(r["hold_s"]), str(r["target"])) for r in rows]


def recorded_settings(path: Path) -> dict[str, Any]:
    """What else a saved summary says about its run (stack, seconds, seed, clients), to replay it exactly; nothing
    for a bare schedule list."""
    data: Any = json.loads(path.read_text())
    if not isinstance(data, dict):
        return {}
    kinds = {"stack": str, "seconds": float, "seed": int, "clients": int}
    return {name: kind(data[name]) for name, kind in kinds.items() if name in data}


def schedule_rows(faults: Sequence[Fault]) -> list[dict[str, Any]]:
    return [asdict(fault) for fault in faults]


@dataclass
class Nemesis:
    stack: Breakable
    admin: CenterAdmin
    faults: Sequence[Fault]
    events: list[NemesisEvent] = field(default_factory=list)
    injected: Counter[str] = field(default_factory=Counter)
    failover_s: list[float] = field(default_factory=list)
    """Per leader fault on a stack of several replicas: from the fault to a replica answering as leader."""

    async def run(self, started: float) -> None:
        actions = [fault for fault in self.faults if fault.kind in ADMIN_FAULTS]
        breaks = [fault for fault in self.faults if fault.kind not in ADMIN_FAULTS]
        await asyncio.gather(self._run_track(started, actions), self._run_track(started, breaks))

    async def _run_track(self, started: float, faults: Sequence[Fault]) -> None:
        for fault in faults:
            await asyncio.sleep(max(0.0, started + fault.at_s - time.monotonic()))
            await (self._act(fault) if fault.kind in ADMIN_FAULTS else self._break(fault))
            self.injected[fault.kind] += 1

    async def _break(self, fault: Fault) -> None:
        hit = await self.stack.inject(fault)
        start = time.monotonic()
        watch = asyncio.create_task(self._watch_failover(start)) if fault.kind.endswith("-leader") else None
        await asyncio.sleep(fault.hold_s)
        if watch is not None:
            watch.cancel()
        await self.stack.repair(fault)
        self.events.append(NemesisEvent(fault.kind, hit, start, time.monotonic()))

    async def _watch_failover(self, start: float) -> None:
        """Only a stack with a standby can fail over; on one replica nothing leads until the repair."""
        while True:
            if await self.admin.leader() is not None:
                break
            await asyncio.sleep(LEADER_POLL_S)
        self.failover_s.append(round(time.monotonic() - start, 3))

    async def _act(self, fault: Fault) -> None:
        if fault.kind == "budget":
            budget = await self.admin.lower_budget(fault.target)
            self.events.append(NemesisEvent("budget", fault.target, time.monotonic(), None, budget))
            return
        switch = self._switch(fault)
        # In effect from when the center's answer came back: an agent may serve until the change reaches it.
        await switch(True)
        start = time.monotonic()
        await asyncio.sleep(fault.hold_s)
        # Ends when the switch-off is sent: an agent may serve again as soon as the center has it.
        end = time.monotonic()
        await switch(False)
        self.events.append(NemesisEvent(fault.kind, fault.target, start, end))

    def _switch(self, fault: Fault) -> Callable[[bool], Awaitable[None]]:
        if fault.kind == "freeze":
            return lambda on: self.admin.set_frozen(fault.target, on)
        return lambda on: self.admin.set_emergency(fault.target, on)
