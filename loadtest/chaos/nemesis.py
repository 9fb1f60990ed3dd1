"""Faults on a seeded schedule, decided up front (so it can be printed and rerun), one at a time, each healed by
the nemesis itself before the next: SIGKILL of the center and restart on its port and SQLite file, SIGSTOP of the
center past the agents' lease then SIGCONT, and a freeze of one promotion mid-load, unfrozen later.

Agents are not killed here: an in-process ledger forgets its order keys by design, so a retry that reaches a
restarted in-process agent is a new order (see the README). Killing agents belongs with the Redis stack, whose
ledger outlives the agent.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass

import grpc

from loadtest.chaos.embedded import EmbeddedStack
from loadtest.chaos.history import NemesisEvent
from quota_center.v1 import quota_center_pb2 as pb
from quota_center.v1 import quota_center_pb2_grpc as pb_grpc

FAULTS = ("kill", "stop", "freeze")
HOLD_S = {"kill": (0.5, 2.0), "stop": (1.0, 3.0), "freeze": (2.0, 4.0)}
"""How long each fault lasts: the center down, the center stopped, the promotion frozen."""
FIRST_AT_S = 2.0
GAP_S = (1.0, 2.0)
ADMIN_TIMEOUT_S = 2.0
ADMIN_PATIENCE_S = 30.0


@dataclass(frozen=True)
class Fault:
    at_s: float
    """From the start of the load."""
    kind: str
    hold_s: float
    target: str


def schedule(seed: int, seconds: float, promotions: tuple[str, ...]) -> list[Fault]:
    """Every kind once first (in a seeded order, even if that runs past `seconds`), then more while they fit."""
    rng = random.Random(f"nemesis-{seed}")
    first = list(FAULTS)
    rng.shuffle(first)
    faults: list[Fault] = []
    at = FIRST_AT_S
    while True:
        kind = first.pop(0) if first else rng.choice(FAULTS)
        hold = round(rng.uniform(*HOLD_S[kind]), 2)
        if len(faults) >= len(FAULTS) and at + hold > seconds:
            return faults
        target = rng.choice(promotions) if kind == "freeze" else "center"
        faults.append(Fault(round(at, 2), kind, hold, target))
        at += hold + rng.uniform(*GAP_S)


class Nemesis:
    def __init__(self, stack: EmbeddedStack, faults: list[Fault]) -> None:
        self._stack, self._faults = stack, faults
        self.events: list[NemesisEvent] = []
        self.injected: Counter[str] = Counter(dict.fromkeys(FAULTS, 0))

    async def run(self, started: float) -> None:
        actions = {"kill": self._kill, "stop": self._stop, "freeze": self._freeze}
        for fault in self._faults:
            await asyncio.sleep(max(0.0, started + fault.at_s - time.monotonic()))
            await actions[fault.kind](fault)
            self.injected[fault.kind] += 1

    async def _kill(self, fault: Fault) -> None:
        self._stack.kill_center()
        down = time.monotonic()
        await asyncio.sleep(fault.hold_s)
        await self._stack.restart_center()
        self.events.append(NemesisEvent("kill", fault.target, down, time.monotonic()))

    async def _stop(self, fault: Fault) -> None:
        self._stack.stop_center()
        stopped = time.monotonic()
        await asyncio.sleep(fault.hold_s)
        self._stack.continue_center()
        self.events.append(NemesisEvent("stop", fault.target, stopped, time.monotonic()))

    async def _freeze(self, fault: Fault) -> None:
        # In effect from when the center's answer came back: an agent may serve until the change reaches it.
        await self._set_frozen(fault.target, True)
        frozen = time.monotonic()
        await asyncio.sleep(fault.hold_s)
        # Ends when the unfreeze is sent: an agent may serve again as soon as the center has it.
        thawed = time.monotonic()
        await self._set_frozen(fault.target, False)
        self.events.append(NemesisEvent("freeze", fault.target, frozen, thawed))

    async def _set_frozen(self, promotion: str, frozen: bool) -> None:
        deadline = time.monotonic() + ADMIN_PATIENCE_S
        request = pb.SetFrozenRequest(promotion_id=promotion, frozen=frozen)
        while True:
            async with grpc.aio.insecure_channel(self._stack.center.address) as channel:
                try:
                    await pb_grpc.PromotionAdminStub(channel).SetFrozen(request, timeout=ADMIN_TIMEOUT_S)
                    return
                except grpc.aio.AioRpcError:
                    if time.monotonic() > deadline:
                        raise
            await asyncio.sleep(0.2)
