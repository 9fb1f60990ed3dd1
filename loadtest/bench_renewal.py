"""`quota bench renewal`: what one renewal costs when a region knows many promotions and few of them sell.

A real center (in this process, on the in-memory store, behind its real gRPC servicers on loopback) and a
real agent (its `Supply` through the real `GrpcCenter`) share a fake clock that the benchmark moves by one
renew interval per round. The region holds an opening allotment of each of N promotions; in every round
the same `moving` share of them sells one unit (the promotions on sale at that moment), and the agent
renews once. Two phases on the same center and the same demand, measured in one run:

- before: the agent as it was (and as it is against a center without region leases): every promotion it
  knows goes in every renewal, in calls of MAX_RENEWAL, each promotion's lease renewed by its report;
- after: one region lease, and only the promotions whose counters or demand moved.

Per renewal (one round of the renew loop, however many calls it takes): promotions reported, bytes on the
wire (Renew requests and answers, as protobuf encodes them), Renew calls, and the center's store writes
and the promotions they carry. The center is today's in both phases, so it commits what moved in batched
writes either way; a center before batching made one write per promotion written.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import grpc

from quota_center import server as center_server
from quota_center.audit import AuditRecord
from quota_center.center import Center
from quota_center.ledger import PromotionState
from quota_center.store.base import Commit
from quota_common.clock import FakeClock
from quota_common.model import Kind, Promotion, Report
from quota_common.process import bind, guarded_server
from quota_common.transport import Transport
from quota_testing.memory_store import MemoryStore
from region_agent.agent import Agent, AgentSettings
from region_agent.center_port import RegionLease, RenewAnswer
from region_agent.grpc_center import GrpcCenter
from region_agent.ledger.base import Line
from region_agent.ledger.memory import InProcessLedger

REGION = "eu"
RENEW_INTERVAL_S = 3.0
_RENEW = "/quota_center.v1.Allocation/Renew"
_HOUR_MS = 3_600_000
_LOOKAHEAD_S = 60.0
_OPENS_IN_S = 10.0
_OPENING_WAIT_S = 120.0


class _Writes(MemoryStore):
    """The in-memory store, counting its writes and the promotions they carry."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.promotions_written = 0

    async def commit_many(self, commits: Sequence[Commit], audit: AuditRecord | None = None) -> None:
        await super().commit_many(commits, audit)
        self.writes += 1
        self.promotions_written += len(commits)


class _Wire(grpc.aio.UnaryUnaryClientInterceptor):
    """Counts the agent's Renew calls, the promotions they report and their bytes as protobuf encodes them."""

    def __init__(self) -> None:
        self.calls = 0
        self.entries = 0
        self.bytes = 0

    async def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        call = await continuation(details, request)
        if details.method in (_RENEW, _RENEW.encode()):
            answer = await call
            self.calls += 1
            self.entries += len(request.counters)
            self.bytes += request.ByteSize() + answer.ByteSize()
        return call

    def figures(self, store: _Writes) -> tuple[int, int, int, int, int]:
        return self.calls, self.entries, self.bytes, store.writes, store.promotions_written


class _WithoutRegionLease(GrpcCenter):
    """The agent's port as before region leases: Renew as release v0.1.0 sends it."""

    async def renew(
        self, incarnation: str, reports: Mapping[str, Report], region_lease: RegionLease | None = None
    ) -> RenewAnswer:
        return await super().renew(incarnation, reports)


COLUMNS = {
    "phase": "phase",
    "entries_per_renewal": "promotions reported",
    "bytes_per_renewal": "bytes",
    "calls_per_renewal": "Renew calls",
    "store_writes_per_renewal": "store writes",
    "promotions_written_per_renewal": "promotions written",
}
"""The columns of `quota bench renewal`, all per renewal."""


@dataclass(frozen=True)
class Phase:
    phase: str
    renewals: int
    entries_per_renewal: float
    bytes_per_renewal: float
    calls_per_renewal: float
    store_writes_per_renewal: float
    promotions_written_per_renewal: float


def _promotion_id(number: int) -> str:
    return f"promo-{number:06d}"


def _seed_store(store: _Writes, promotions: int, clock: FakeClock) -> None:
    """N promotions that open within the agent's look-ahead, written as a center would have created them."""
    start = clock.wall_ms() + round(_OPENS_IN_S * 1000)
    for revision in range(1, promotions + 1):
        promotion_id = _promotion_id(revision - 1)
        promotion = Promotion(
            promotion_id, Kind.COUNT, "", 1_000_000, start, start + _HOUR_MS, (REGION, "us"), revision=revision
        )
        store.promotions[promotion_id] = json.dumps(PromotionState(promotion).to_document())


async def _opened(ledger: InProcessLedger, promotions: int) -> None:
    deadline = time.monotonic() + _OPENING_WAIT_S
    while len(await ledger.balances()) < promotions:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the agent did not open {promotions} promotions within {_OPENING_WAIT_S:.0f} s")
        await asyncio.sleep(0.2)


async def _phase(
    name: str, agent: Agent, selling: list[str], rounds: int, clock: FakeClock, wire: _Wire, store: _Writes
) -> Phase:
    """`rounds` renewals, each after one unit of every promotion in `selling`; one round before them settles
    what the previous phase left (a first report of a new kind) and is not measured."""
    before = wire.figures(store)
    for round_number in range(rounds + 1):
        for promotion_id in selling:
            await agent.deduct(f"{name}-{round_number}-{promotion_id}", REGION, (Line(promotion_id, 1, "user"),))
        clock.advance(RENEW_INTERVAL_S)
        await agent.renew_once()
        if round_number == 0:
            before = wire.figures(store)
    calls, entries, sent, writes, written = (now - then for now, then in zip(wire.figures(store), before, strict=True))
    return Phase(
        name,
        rounds,
        round(entries / rounds, 1),
        round(sent / rounds),
        round(calls / rounds, 2),
        round(writes / rounds, 2),
        round(written / rounds, 1),
    )


async def _serve(center: Center) -> tuple[grpc.aio.Server, str]:
    server = guarded_server(Transport())
    center_server.add_to_server(center, server)
    port = bind(server, "127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _measure(name: str, promotions: int, selling: list[str], rounds: int) -> Phase:
    """One phase in a world of its own: a center holding `promotions` about to open, and an agent that opens
    them all, then sells."""
    clock, store, wire = FakeClock(), _Writes(), _Wire()
    _seed_store(store, promotions, clock)
    center = Center(store, clock)
    await center.start()
    server, address = await _serve(center)
    settings = AgentSettings(
        REGION, renew_interval_s=3_600, pull_interval_s=3_600, push=False, opening_lookahead_s=_LOOKAHEAD_S
    )
    port = (_WithoutRegionLease if name == "before" else GrpcCenter)([address], REGION, interceptors=[wire])
    ledger = InProcessLedger(clock)
    agent = Agent(settings, ledger, port, clock)
    try:
        await agent.start()
        await _opened(ledger, promotions)
        for _ in range(2):  # to the opening, the leases renewed on the way
            await agent.renew_once()
            clock.advance(_OPENS_IN_S / 2 + 0.01)
        return await _phase(name, agent, selling, rounds, clock, wire, store)
    finally:
        await agent.stop()
        await port.close()
        await server.stop(None)


async def bench_renewal(
    promotions: int = 10_000, moving: float = 0.01, rounds: int = 5, seed: int = 1
) -> dict[str, Any]:
    """The figures of both phases and the ratios before / after."""
    ids = [_promotion_id(n) for n in range(promotions)]
    selling = sorted(random.Random(seed).sample(ids, max(1, round(promotions * moving))))
    before = await _measure("before", promotions, selling, rounds)
    after = await _measure("after", promotions, selling, rounds)

    def ratio(field: str) -> float | None:
        was, now = getattr(before, field), getattr(after, field)
        return round(was / now, 1) if now else None

    return {
        "promotions": promotions,
        "moving": moving,
        "rows": [asdict(before), asdict(after)],
        "entries_ratio": ratio("entries_per_renewal"),
        "bytes_ratio": ratio("bytes_per_renewal"),
        "store_writes_ratio": ratio("store_writes_per_renewal"),
    }
