"""`quota chaos`: a stack under load and a nemesis, then healed, every unknown resolved, every agent stopped
gracefully (so regions give back what they hold), the books read from the center and the history judged. The
summary says what was injected, what clients saw and what was found.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from loadtest.bench import promotion_pb
from loadtest.chaos.admin import ADMIN, OPERATOR, CenterAdmin
from loadtest.chaos.books import Books, PromotionBooks, RegionBooks
from loadtest.chaos.calls import ONE_ATTEMPT, AgentCalls
from loadtest.chaos.checker import Allowance, judge
from loadtest.chaos.distributed import DistributedStack
from loadtest.chaos.embedded import LEASE_TTL_S, REGIONS, RENEW_INTERVAL_S, EmbeddedStack
from loadtest.chaos.history import History, NemesisEvent, Status
from loadtest.chaos.nemesis import EVERYWHERE, Breakable, Fault, Nemesis, load_schedule, schedule, schedule_rows
from loadtest.chaos.summary import fault_summary, figures
from loadtest.chaos.workload import LIMITED, PLAIN, Client, Recorder
from quota_client import AsyncQuotaClient
from quota_common.transport import Transport
from quota_testing.launch import ServerProcess
from quota_testing.tls import DevTls
from region_agent.ledger.base import UserLimit
from region_agent.v1 import region_agent_pb2 as agent_pb
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc

STACKS = ("embedded", "redis-etcd")
PROMOTIONS = (PLAIN, LIMITED)
BUDGET_PER_SECOND = 15
"""Per promotion: well below what the clients ask for, so both sell out early and refunds are fought over."""
USER_LIMIT = UserLimit(units=5, orders=3)
LIMITED_SHARE = 3
"""The limited promotion gets a third of the budget: its users' limits (USERS_PER_REGION x 5 units per region)
would otherwise cap its demand below the budget in a long run, and it would never sell out."""
REPORT_WAIT_S = 3 * RENEW_INTERVAL_S
"""After healing, before resolving and again before reading the books: time for every agent to renew and report."""
RESOLVE_PATIENCE_S = 60.0
STOP_PATIENCE_S = 30.0
ALLOWANCE = Allowance(propagation_s=1.0, lease_ttl_s=LEASE_TTL_S + 1.0)
"""A freeze reaches a connected agent through its stream or its next pull; a cut-off agent stops with its lease."""
EXAMPLES = 5


class Stack(Breakable, Protocol):
    name: str
    agents: dict[str, list[ServerProcess]]
    tls: DevTls
    """The certificates its processes hold; callers use it too, as order services and the budget owner."""

    @property
    def centers(self) -> list[str]: ...

    async def start(self) -> None: ...

    async def heal(self) -> None: ...

    async def ledger_holdings(self) -> dict[tuple[str, str], int] | None:
        """After the agents stopped, what each region's ledger holds, by (region, promotion); None when the
        ledgers died with their agents."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class ChaosOptions:
    seconds: float
    seed: int
    clients: int = 8
    history: Path | None = None
    stack: str = "embedded"
    schedule: Path | None = None
    """Replays the faults of an earlier run (its --json summary, or the schedule list from it)."""


def _stack(name: str, workdir: Path) -> Stack:
    return DistributedStack(workdir) if name == "redis-etcd" else EmbeddedStack(workdir)


def _faults(stack: Stack, options: ChaosOptions) -> list[Fault]:
    if options.schedule is not None:
        return load_schedule(options.schedule)
    kinds = {
        **stack.faults(),
        "freeze": PROMOTIONS,
        "emergency": (*REGIONS, EVERYWHERE),
        "budget": PROMOTIONS,
    }
    return schedule(options.seed, options.seconds, kinds)


async def _create_promotions(admin: CenterAdmin, budget: int) -> list[NemesisEvent]:
    """Returns the budgets as events, so a budget lowered later is judged from when it changed."""
    created = []
    for promotion_id in PROMOTIONS:
        share = LIMITED_SHARE if promotion_id == LIMITED else 1
        promotion = promotion_pb(promotion_id, budget // share, list(REGIONS))
        if promotion_id == LIMITED:
            promotion.per_user_limit, promotion.per_user_orders = USER_LIMIT.units, USER_LIMIT.orders
        await admin.create(promotion)
        created.append(NemesisEvent("budget", promotion_id, time.monotonic(), None, promotion.budget))
    return created


def _orders(stack: Stack, region: str) -> Transport:
    """How the region's order services call its agents: with their own certificate."""
    return stack.tls.transport(f"orders-{region}")


async def _reservations(stack: Stack) -> dict[tuple[str, str], int]:
    """What reservations hold, by (region, promotion): only the ledgers know. A region's agents share its ledger,
    so one agent's status is the region's."""
    held = {}
    for region, agents in stack.agents.items():
        async with _orders(stack, region).aio_channel(agents[0].address) as channel:
            status = await agent_grpc.RegionAgentStub(channel).GetStatus(agent_pb.GetStatusRequest(), timeout=10)
            held.update({(region, balance.promotion_id): balance.held for balance in status.balances})
    return held


async def _stop_agents(stack: Stack) -> None:
    """SIGTERM, as an operator's rollout: each agent gives back what its region holds unspent, and reports."""
    for agents in stack.agents.values():
        await asyncio.gather(*(asyncio.to_thread(agent.stop, STOP_PATIENCE_S) for agent in agents))


async def _books(admin: CenterAdmin, kept: dict[tuple[str, str], int]) -> Books:
    books = {}
    for promotion_id in PROMOTIONS:
        usage = await admin.usage(promotion_id)
        regions = {
            r.region: RegionBooks(
                consumed=r.consumed,
                kept=kept.get((r.region, promotion_id), 0),
                granted=r.granted,
                returned=r.returned,
                written_off=r.written_off,
                outstanding=r.held,
            )
            for r in usage.regions
        }
        limit = UserLimit(usage.promotion.per_user_limit, usage.promotion.per_user_orders)
        books[promotion_id] = PromotionBooks(usage.promotion.budget, limit, regions)
    return books


def _order_service(stack: Stack, region: str, address: str) -> AsyncQuotaClient:
    """A client of one agent, as the region's order services call it: with their own certificate."""
    return AsyncQuotaClient(address, region, tls=stack.tls.client_tls(f"orders-{region}"), policy=ONE_ATTEMPT)


async def _load(stack: Stack, options: ChaosOptions, nemesis: Nemesis, recorder: Recorder) -> None:
    clients = {
        agent.address: _order_service(stack, region, agent.address)
        for region, region_agents in stack.agents.items()
        for agent in region_agents
    }
    agents = {
        region: [AgentCalls(region, f"{region}-{n}", clients[agent.address]) for n, agent in enumerate(region_agents)]
        for region, region_agents in stack.agents.items()
    }
    try:
        started = time.monotonic()
        faults = asyncio.create_task(nemesis.run(started))
        try:
            workload = [Client(f"client-{n}", options.seed, agents, recorder) for n in range(options.clients)]
            await asyncio.gather(*(client.run(started + options.seconds) for client in workload))
            await faults
        finally:
            faults.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await faults
            await stack.heal()
        await asyncio.sleep(REPORT_WAIT_S)
        await recorder.resolve(time.monotonic() + RESOLVE_PATIENCE_S)
    finally:
        for client in clients.values():
            await client.close()


async def _run(options: ChaosOptions, workdir: Path) -> dict[str, Any]:
    stack = _stack(options.stack, workdir)
    recorder = Recorder()
    try:
        await stack.start()
        admin = CenterAdmin(stack.centers, stack.tls.transport(ADMIN), stack.tls.transport(OPERATOR))
        faults = _faults(stack, options)
        nemesis = Nemesis(stack, admin, faults)
        created = await _create_promotions(admin, round(BUDGET_PER_SECOND * options.seconds))
        await _load(stack, options, nemesis, recorder)
        await asyncio.sleep(REPORT_WAIT_S)
        reserved = await _reservations(stack)
        await _stop_agents(stack)
        kept = await stack.ledger_holdings()
        books = await _books(admin, reserved if kept is None else kept)
    finally:
        await stack.close()
    history = History(tuple(recorder.operations), (*created, *nemesis.events))
    if options.history:
        options.history.write_text(history.to_jsonl())
    verdict = judge(history, books, ALLOWANCE)
    refusals = Counter(op.outcome.reason for op in history.operations if op.outcome.status is Status.REFUSED)
    return {
        "stack": stack.name,
        "seed": options.seed,
        "seconds": options.seconds,
        "clients": options.clients,
        "schedule": schedule_rows(faults),
        "injected": dict(sorted(nemesis.injected.items())),
        "faults": fault_summary(history, verdict),
        "failover_s": nemesis.failover_s,
        **figures(history),
        "refused_by_reason": dict(sorted(refusals.items())),
        "books": {
            promotion: {
                "budget": promotion_books.budget,
                "consumed": sum(r.consumed for r in promotion_books.regions.values()),
                "written_off": sum(r.written_off for r in promotion_books.regions.values()),
                "outstanding": sum(r.outstanding for r in promotion_books.regions.values()),
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
