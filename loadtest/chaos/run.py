"""`quota chaos`: the embedded stack under load and a nemesis, then healed, every unknown resolved, the books read
from the center and the history judged. The summary says what was injected, what clients saw and what was found.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc

from loadtest.chaos.books import Books, PromotionBooks, RegionBooks
from loadtest.chaos.calls import AgentCalls
from loadtest.chaos.checker import judge
from loadtest.chaos.embedded import REGIONS, RENEW_INTERVAL_S, EmbeddedStack
from loadtest.chaos.history import History, Status
from loadtest.chaos.nemesis import Nemesis, schedule
from loadtest.chaos.workload import LIMITED, PLAIN, Client, Recorder
from quota_center.bench import promotion_pb
from quota_center.v1 import quota_center_pb2 as pb
from quota_center.v1 import quota_center_pb2_grpc as pb_grpc
from region_agent.ledger.base import UserLimit
from region_agent.v1 import region_agent_pb2 as agent_pb
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc

BUDGET_PER_SECOND = 15
"""Per promotion: well below what the clients ask for, so both sell out early and refunds are fought over."""
USER_LIMIT = UserLimit(units=5, orders=3)
LIMITED_SHARE = 3
"""The limited promotion gets a third of the budget: its users' limits (USERS_PER_REGION x 5 units per region)
would otherwise cap its demand below the budget in a long run, and it would never sell out."""
REPORT_WAIT_S = 3 * RENEW_INTERVAL_S
"""After healing, before resolving and again before reading the books: time for every agent to renew and report."""
RESOLVE_PATIENCE_S = 60.0
EXAMPLES = 5


@dataclass(frozen=True)
class ChaosOptions:
    seconds: float
    seed: int
    clients: int = 8
    history: Path | None = None


async def _create_promotions(center: str, budget: int) -> None:
    async with grpc.aio.insecure_channel(center) as channel:
        admin = pb_grpc.PromotionAdminStub(channel)
        for promotion_id in (PLAIN, LIMITED):
            share = LIMITED_SHARE if promotion_id == LIMITED else 1
            promotion = promotion_pb(promotion_id, budget // share, list(REGIONS))
            if promotion_id == LIMITED:
                promotion.per_user_limit, promotion.per_user_orders = USER_LIMIT.units, USER_LIMIT.orders
            await admin.CreatePromotion(pb.CreatePromotionRequest(promotion=promotion), timeout=10)


async def _reservations(agents: dict[str, str]) -> dict[tuple[str, str], int]:
    """What reservations hold, by (region, promotion): only the agents know (the center's `held` is unspent
    allotment)."""
    held = {}
    for region, address in agents.items():
        async with grpc.aio.insecure_channel(address) as channel:
            status = await agent_grpc.RegionAgentStub(channel).GetStatus(agent_pb.GetStatusRequest(), timeout=10)
            held.update({(region, balance.promotion_id): balance.held for balance in status.balances})
    return held


async def _books(center: str, agents: dict[str, str]) -> Books:
    reserved = await _reservations(agents)
    books = {}
    async with grpc.aio.insecure_channel(center) as channel:
        admin = pb_grpc.PromotionAdminStub(channel)
        for promotion_id in (PLAIN, LIMITED):
            usage = await admin.GetUsage(pb.GetUsageRequest(promotion_id=promotion_id), timeout=10)
            regions = {
                r.region: RegionBooks(
                    r.consumed, reserved.get((r.region, promotion_id), 0), r.granted, r.returned, r.written_off
                )
                for r in usage.regions
            }
            limit = UserLimit(usage.promotion.per_user_limit, usage.promotion.per_user_orders)
            books[promotion_id] = PromotionBooks(usage.promotion.budget, limit, regions)
    return books


async def _load(stack: EmbeddedStack, options: ChaosOptions, nemesis: Nemesis, recorder: Recorder) -> None:
    channels = {region: grpc.aio.insecure_channel(agent.address) for region, agent in stack.agents.items()}
    agents = {
        region: AgentCalls(region, f"{region}-agent", agent_grpc.RegionAgentStub(channel))
        for region, channel in channels.items()
    }
    try:
        started = time.monotonic()
        faults = asyncio.create_task(nemesis.run(started))
        try:
            clients = [Client(f"client-{n}", options.seed, agents, recorder) for n in range(options.clients)]
            await asyncio.gather(*(client.run(started + options.seconds) for client in clients))
            await faults
        finally:
            faults.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await faults
            await stack.heal()
        await asyncio.sleep(REPORT_WAIT_S)
        await recorder.resolve(time.monotonic() + RESOLVE_PATIENCE_S)
    finally:
        for channel in channels.values():
            await channel.close()


async def _run(options: ChaosOptions, workdir: Path) -> dict[str, Any]:
    stack = EmbeddedStack(workdir)
    faults = schedule(options.seed, options.seconds, (PLAIN, LIMITED))
    nemesis, recorder = Nemesis(stack, faults), Recorder()
    try:
        await stack.start()
        await _create_promotions(stack.center.address, round(BUDGET_PER_SECOND * options.seconds))
        await _load(stack, options, nemesis, recorder)
        await asyncio.sleep(REPORT_WAIT_S)
        books = await _books(stack.center.address, {r: a.address for r, a in stack.agents.items()})
    finally:
        stack.close()
    history = History(tuple(recorder.operations), tuple(nemesis.events))
    if options.history:
        options.history.write_text(history.to_jsonl())
    verdict = judge(history, books)
    outcomes = Counter(op.outcome.status for op in history.operations)
    refusals = Counter(op.outcome.reason for op in history.operations if op.outcome.status is Status.REFUSED)
    return {
        "stack": "embedded",
        "seed": options.seed,
        "seconds": options.seconds,
        "schedule": [asdict(fault) for fault in faults],
        "injected": dict(nemesis.injected),
        "operations": {status.value: outcomes[status] for status in Status},
        "refused_by_reason": dict(sorted(refusals.items())),
        "books": {
            promotion: {
                "budget": promotion_books.budget,
                "consumed": sum(r.consumed for r in promotion_books.regions.values()),
                "held": sum(r.held for r in promotion_books.regions.values()),
            }
            for promotion, promotion_books in books.items()
        },
        "violations": verdict.counts(),
        "examples": [violation.message for violation in verdict.violations[:EXAMPLES]],
        "ok": verdict.ok,
    }


def run_chaos(options: ChaosOptions) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="quota-chaos-") as workdir:
        return asyncio.run(_run(options, Path(workdir)))
