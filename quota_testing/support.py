"""Builders shared by the tests: promotions and orders as the wire carries them."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

import grpc
import pytest
import redis.asyncio as redis
from google.protobuf.timestamp_pb2 import Timestamp

from quota_admin.client import AdminClient, CenterError
from quota_center.audit import AuditRecord, Change, seal
from quota_center.trail import By
from quota_center.v1 import quota_center_pb2 as center_pb
from quota_common.errors import REJECT_REASON_METADATA_KEY, trailing
from quota_common.identity import Role, person
from region_agent.v1 import region_agent_pb2 as agent_pb

HOUR_MS = 3_600_000
PENDING_TTL_S = 3600.0
"""How long a held change waits in the centers the unit tests make (tests/unit/conftest.py)."""
ALICE = By(person("quota", Role.OWNER, "alice"))
"""An owner, as the center's domain sees a caller."""
BOB = By(person("quota", Role.APPROVER, "bob"))
"""An approver."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def timestamp(ms: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def promotion(
    promotion_id: str = "promo",
    budget: int = 1_000,
    regions: tuple[str, ...] = ("eu", "us"),
    start_ms: int | None = None,
    end_ms: int | None = None,
    kind: int = center_pb.PROMOTION_KIND_COUNT,
    currency: str = "",
    per_user_limit: int = 0,
    per_user_orders: int = 0,
    face_value: int = 0,
) -> center_pb.Promotion:
    start = now_ms() - HOUR_MS if start_ms is None else start_ms
    end = now_ms() + HOUR_MS if end_ms is None else end_ms
    return center_pb.Promotion(
        id=promotion_id,
        kind=kind,  # type: ignore[arg-type]
        currency=currency,
        budget=budget,
        start_time=timestamp(start),
        end_time=timestamp(end),
        regions=list(regions),
        per_user_limit=per_user_limit,
        per_user_orders=per_user_orders,
        face_value=face_value,
    )


def order(
    order_key: str, region: str = "eu", *lines: tuple[str, int], user_id: str = "user-1"
) -> agent_pb.DeductRequest:
    """`order("o-1", "eu", ("promo", 1))`: one line per (promotion id, amount)."""
    return agent_pb.DeductRequest(
        order_key=order_key,
        region=region,
        lines=[agent_pb.Line(promotion_id=p, amount=a, user_id=user_id) for p, a in lines],
    )


def reject_reason(error: grpc.aio.AioRpcError) -> str | None:
    return trailing(error, REJECT_REASON_METADATA_KEY) or None


@contextlib.contextmanager
def left_in_cycles() -> Iterator[list[object]]:
    """Everything the block left in reference cycles, which only the garbage collector frees (its full passes
    stop the process meanwhile): filled in when the block ends."""
    gc.collect()
    gc.garbage.clear()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    left: list[object] = []
    try:
        yield left
        gc.collect()
        left += gc.garbage
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
        gc.enable()


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 30.0) -> None:
    """Waits until `check` holds; background loops (refills, renewals) settle in their own time.

    `timeout_s` only bounds a hang: it is generous because a busy machine is slow, not wrong."""
    for _ in range(int(timeout_s / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


class AuditedStore(Protocol):
    async def audit_head(self) -> AuditRecord | None: ...


async def next_audit(store: AuditedStore, promotion_id: str = "") -> AuditRecord:
    """The record a test's next admin write to `store` carries, chained to the store's head as the
    center chains it."""
    change = Change("spiffe://quota/owner/test", "Test", uuid.uuid4().hex, promotion_id, None, {})
    return seal(await store.audit_head(), change, now_ms())


def recorded_redis_clients(monkeypatch: pytest.MonkeyPatch) -> list[redis.Redis]:
    """Every Redis client `redis.Redis.from_url` makes from now on (the ledger leaves closing its client to
    whoever made it, so a test that opens a ledger through the agent's code closes them)."""
    clients: list[redis.Redis] = []
    make = redis.Redis.from_url

    def recorded(url: str, **options: Any) -> redis.Redis:
        clients.append(make(url, **options))
        return clients[-1]

    monkeypatch.setattr(redis.Redis, "from_url", recorded)
    return clients


def create_when_leading(client: AdminClient, request: center_pb.CreatePromotionRequest, patience_s: float = 30) -> None:
    """Creates the promotion once its group has elected a leader (a center process just started may not have)."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            client.call(lambda admin: admin.CreatePromotion, request)
            return
        except CenterError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
