"""`quota incidents`: the three configuration mistakes this system exists to catch, replayed against a real
center and two agents (processes, mutual TLS), each ending with the loss it prevented.

1. A universal ¥100 coupon with no spending threshold and no per-user limit: held at creation; approved
   anyway, it sells, the center's alert rules see the burn within one evaluation and freeze it.
2. "Spend ¥200, get ¥4,000 off" typed for "spend ¥4,000, get ¥200 off": held at creation, naming the rule.
3. A flash price one zero short (¥99.90 for ¥999.00 on a ¥1,999.00 phone), with the center down: the agent
   refuses every line below the price floor, or lets it through and counts it when blocking is off.

Money is in minor units (fen: ¥1 = 100) throughout; the figures printed are yuan.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.table import Table

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_client import AsyncQuotaClient, Line, QuotaClientError, RetryPolicy
from quota_common.errors import PENDING_METADATA_KEY, trailing
from quota_testing.launch import ServerProcess, agent_process, center_process
from quota_testing.tls import DevTls, write_dev_tls

REGIONS = ("eu", "us")
OWNER, APPROVER = "owner-alice", "approver-bob"
YUAN = 100
ALERT_INTERVAL_S = 1.0
"""How often the replay's center evaluates its alert rules (production: every 10 s)."""
ONE_TRY = RetryPolicy(deadline_s=5, attempt_timeout_s=5, max_attempts=1)
"""Each order one call: the replay counts every refusal, as the order services saw it."""
SALE_LIMIT_S = 60.0
"""Incident 1 stops selling after this long whatever happens: the replay must end by itself."""


@dataclass
class Incident:
    title: str
    caught_by: str
    """What stopped it: rules, an alert, the floor."""
    issued_units: int = 0
    issued_yuan: int = 0
    exposure_yuan: int = 0
    """What the mistake could have cost had nothing caught it."""
    prevented_yuan: int = 0
    details: list[str] = field(default_factory=list)


def _yuan(fen: int) -> str:
    return f"¥{fen // YUAN:,}.{fen % YUAN:02d}"


def _promotion(promotion_id: str, budget: int, **values: Any) -> center_pb.Promotion:
    now_ms = time.time_ns() // 1_000_000
    start, end = Timestamp(), Timestamp()
    start.FromMilliseconds(now_ms - 60_000)
    end.FromMilliseconds(now_ms + 86_400_000)
    return center_pb.Promotion(
        id=promotion_id,
        kind=center_pb.PROMOTION_KIND_COUNT,
        budget=budget,
        start_time=start,
        end_time=end,
        regions=list(REGIONS),
        **values,
    )


class Replay:
    """The running processes, and stubs to them as each identity."""

    def __init__(self, tls: DevTls, center: ServerProcess, agents: dict[str, ServerProcess]) -> None:
        self.tls, self.center, self.agents = tls, center, agents
        self._channels: list[grpc.aio.Channel] = []
        self._clients: list[AsyncQuotaClient] = []

    def admin(self, name: str) -> center_grpc.PromotionAdminAsyncStub:
        channel = self.tls.transport(name).aio_channel(self.center.address)
        self._channels.append(channel)
        return center_grpc.PromotionAdminStub(channel)

    def orders(self, region: str) -> AsyncQuotaClient:
        certificate = self.tls.client_tls(f"orders-{region}")
        quota = AsyncQuotaClient(self.agents[region].address, region, tls=certificate, policy=ONE_TRY)
        self._clients.append(quota)
        return quota

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        for quota in self._clients:
            await quota.close()
        self._channels.clear()
        self._clients.clear()

    async def create_held(self, promotion: center_pb.Promotion) -> tuple[str, str]:
        """Creates `promotion`, which the guard rules must hold: its pending id and the center's message."""
        try:
            await self.admin(OWNER).CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion))
        except grpc.aio.AioRpcError as error:
            pending = trailing(error, PENDING_METADATA_KEY)
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION and pending:
                return pending, error.details() or ""
            raise
        raise RuntimeError(f"the guard rules let {promotion.id} through: the replay expects them to hold it")


async def _deduct(quota: AsyncQuotaClient, key: str, line: Line) -> str:
    """ "ok", or the reject reason (the status code's name when there is none)."""
    try:
        await quota.deduct(key, [line])
    except QuotaClientError as error:
        reason = error.reason or (error.code.name if error.code else type(error).__name__)
        return reason.removeprefix("REJECT_REASON_").lower()
    return "ok"


async def free_money(replay: Replay) -> Incident:
    """Incident 1: held, approved anyway, stopped by an alert that freezes it."""
    budget, face_value = 100_000, 100 * YUAN
    coupon = _promotion("free-100", budget, face_value=face_value)
    pending, why = await replay.create_held(coupon)
    approver = replay.admin(APPROVER)
    await approver.ApprovePending(center_pb.DecidePendingRequest(pending_id=pending, reason="approved anyway"))
    counter = itertools.count()
    outcomes: dict[str, int] = {}
    deadline = time.monotonic() + SALE_LIMIT_S
    frozen_at: list[float] = []

    async def order_service(region: str) -> None:
        quota = replay.orders(region)
        while time.monotonic() < deadline and not frozen_at:
            number = next(counter)
            outcome = await _deduct(quota, f"free-{number}", Line(coupon.id, 1, f"user-{number % 50}"))
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if outcome == "frozen":
                frozen_at.append(time.monotonic())

    started = time.monotonic()
    await asyncio.gather(*(order_service(region) for region in REGIONS for _ in range(4)))
    issued = outcomes.get("ok", 0)  # one coupon per order; the center hears of the last ones at the next renewals
    alerts = await approver.ListAlerts(center_pb.ListAlertsRequest(promotion_id=coupon.id))
    acted = [alert for alert in alerts.alerts if alert.action]
    incident = Incident("¥100 coupon, no threshold, no limit", "rules held it; an alert froze it")
    incident.issued_units, incident.issued_yuan = issued, issued * face_value
    incident.exposure_yuan = budget * face_value
    incident.prevented_yuan = (budget - issued) * face_value
    incident.details = [
        f"held at creation as {pending}: {why}",
        f"approved anyway by {APPROVER}",
        *(f"alert {alert.id} ({alert.rule}): {alert.message}; {alert.action}" for alert in acted),
        f"orders: {', '.join(f'{n:,} {outcome}' for outcome, n in sorted(outcomes.items()))}",
        f"frozen {frozen_at[0] - started:.1f} s after the first order" if frozen_at else "never frozen",
    ]
    return incident


async def swapped_values(replay: Replay) -> Incident:
    """Incident 2: held at creation, naming the rule, and rejected by the approver."""
    budget, face_value = 50_000, 4_000 * YUAN
    swapped = _promotion("spend-200-get-4000", budget, face_value=face_value, min_spend=200 * YUAN, per_user_limit=1)
    pending, why = await replay.create_held(swapped)
    await replay.admin(APPROVER).RejectPending(
        center_pb.DecidePendingRequest(pending_id=pending, reason="face value and threshold swapped")
    )
    incident = Incident('"spend ¥200, get ¥4,000 off"', "rules held it; approver said no")
    incident.exposure_yuan = incident.prevented_yuan = budget * face_value
    incident.details = [f"held at creation as {pending}: {why}", f"rejected by {APPROVER}; nothing reached a region"]
    return incident


async def flash_price(replay: Replay, restart_center: Callable[[], Awaitable[None]]) -> Incident:
    """Incident 3: a flash price one zero short, the center down, the floor held by the agent alone."""
    unit_price, meant, typed = 1_999 * YUAN, 999 * YUAN, 9_990  # ¥1,999.00 phone: ¥999.00 meant, ¥99.90 typed
    floor = {"floor_bps": 4_000}  # at least 40 % of the price: ¥799.60
    owner = replay.admin(OWNER)
    for promotion_id, blocking in (("flash-phone", True), ("flash-phone-watch", False)):
        flash = _promotion(promotion_id, 1_000, block_below_floor=blocking, **floor)
        await owner.CreatePromotion(center_pb.CreatePromotionRequest(promotion=flash))
    agents = {region: replay.orders(region) for region in REGIONS}
    fair = {"unit_price": unit_price, "discount": unit_price - meant}
    for region, quota in agents.items():  # one fair sale each, so every region holds quota before the center goes
        for promotion_id in ("flash-phone", "flash-phone-watch"):
            line = Line(promotion_id, 1, "first", **fair)
            await _until_sold(quota, f"{promotion_id}-first-{region}", line)
    replay.center.kill()
    outcomes: dict[tuple[str, str], int] = {}
    typo = {"unit_price": unit_price, "discount": unit_price - typed}
    for number in range(100):
        region = REGIONS[number % len(REGIONS)]
        for promotion_id in ("flash-phone", "flash-phone-watch"):
            line = Line(promotion_id, 1, f"buyer-{number}", **typo)
            outcome = await _deduct(agents[region], f"{promotion_id}-{number}", line)
            outcomes[(promotion_id, outcome)] = outcomes.get((promotion_id, outcome), 0) + 1
    counted = 0
    for quota in agents.values():
        status = await quota.status()
        counted += sum(b.below_floor for b in status.balances if b.promotion_id == "flash-phone-watch")
    await restart_center()
    alert = await _first_alert(replay, "flash-phone-watch")
    refused = outcomes.get(("flash-phone", "below_floor"), 0)
    let_through = outcomes.get(("flash-phone-watch", "ok"), 0)
    short = {outcome: n for (promotion_id, outcome), n in outcomes.items() if promotion_id == "flash-phone-watch"}
    short.pop("ok", None)
    incident = Incident("flash price one zero short", "the agent's price floor")
    incident.issued_units = let_through
    incident.issued_yuan = let_through * (meant - typed)
    incident.exposure_yuan = (refused + let_through) * (meant - typed)
    incident.prevented_yuan = refused * (meant - typed)
    incident.details = [
        f"center killed; {sum(outcomes.values())} typo'd lines sent to the agents",
        f"blocking on: {refused} of {sum(n for (p, _), n in outcomes.items() if p == 'flash-phone')} refused "
        "below_floor",
        f"blocking off: {let_through} let through, {counted} counted below the floor for the alert",
        "blocking off, refused for want of quota with the center down: "
        + (", ".join(f"{n} {outcome}" for outcome, n in sorted(short.items())) or "none"),
        f"center back: alert {alert.id} ({alert.rule}): {alert.message}" if alert else "center back: no alert",
    ]
    return incident


async def _first_alert(replay: Replay, promotion_id: str, timeout_s: float = 30.0) -> center_pb.Alert | None:
    """The center's below-floor alert on `promotion_id`, once regions reported to it again."""
    deadline = time.monotonic() + timeout_s
    request = center_pb.ListAlertsRequest(promotion_id=promotion_id)
    while time.monotonic() < deadline:
        with contextlib.suppress(grpc.aio.AioRpcError):  # the restarted center may not lead yet
            answer = await replay.admin(APPROVER).ListAlerts(request, timeout=5.0)
            if floor_alerts := [alert for alert in answer.alerts if alert.rule == "below_floor"]:
                return floor_alerts[-1]
        await asyncio.sleep(0.2)
    return None


async def _until_sold(quota: AsyncQuotaClient, key: str, line: Line, timeout_s: float = 30.0) -> None:
    """A fresh agent answers lease_expired or exhausted until its first grant lands."""
    deadline = time.monotonic() + timeout_s
    while (outcome := await _deduct(quota, key, line)) != "ok":
        if time.monotonic() > deadline:
            raise RuntimeError(f"a fair order was refused for {timeout_s:g} s: {outcome}")
        await asyncio.sleep(0.1)


@asynccontextmanager
async def _stack(workdir: Path, console: Console) -> AsyncIterator[tuple[Replay, Callable[[], Awaitable[None]]]]:
    tls = write_dev_tls(workdir / "certs", list(REGIONS))
    center_flags = ("--alert-interval", str(ALERT_INTERVAL_S))
    center = center_process(workdir, *center_flags, tls=tls).start()
    agents: dict[str, ServerProcess] = {}
    replay = Replay(tls, center, agents)

    async def restart_center() -> None:
        port = int(replay.center.address.rsplit(":", 1)[1])
        replay.center = center_process(workdir, *center_flags, port=port, tls=tls).start()

    try:
        for region in REGIONS:
            agents[region] = agent_process(workdir, region, center.address, "--renew-interval", "0.5", tls=tls).start()
        console.print(f"a center and agents for {', '.join(REGIONS)}, mutual TLS on every link, in {workdir}")
        yield replay, restart_center
    finally:
        await replay.close()
        for process in [*agents.values(), replay.center]:
            process.stop()


async def replay_all(workdir: Path, console: Console) -> list[Incident]:
    async with _stack(workdir, console) as (replay, restart_center):
        incidents = []
        for number, run in enumerate((free_money, swapped_values), start=1):
            console.print(f"incident {number}: {run.__doc__}")
            incidents.append(await run(replay))
        console.print(f"incident 3: {flash_price.__doc__}")
        incidents.append(await flash_price(replay, restart_center))
        return incidents


def _table(incidents: list[Incident]) -> Table:
    table = Table(title="quota incidents: the seeds' mistakes, replayed")
    for column in ("incident", "caught by", "issued", "could have cost", "loss prevented"):
        table.add_column(
            column, justify="right" if column in ("issued", "could have cost", "loss prevented") else "left"
        )
    for incident in incidents:
        table.add_row(
            incident.title,
            incident.caught_by,
            _yuan(incident.issued_yuan),
            _yuan(incident.exposure_yuan),
            _yuan(incident.prevented_yuan),
        )
    return table


def run_incidents(as_json: bool) -> None:
    # Piped to a file or a CI log, rich would assume 80 columns and cut the figures.
    console = Console(stderr=as_json, width=None if sys.stdout.isatty() else 110)
    with tempfile.TemporaryDirectory(prefix="quota-incidents-") as workdir:
        incidents = asyncio.run(replay_all(Path(workdir), console))
    if as_json:
        json.dump([incident.__dict__ for incident in incidents], sys.stdout)
        sys.stdout.write("\n")
        return
    for number, incident in enumerate(incidents, start=1):
        console.print(f"\n[bold]{number}. {incident.title}[/bold]", highlight=False)
        for detail in incident.details:
            console.print(f"  · {detail}", highlight=False, markup=False)
    console.print(_table(incidents))
