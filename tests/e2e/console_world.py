"""What the console's end-to-end tests run against: a center with mutual TLS (alerts every half second, a
history sample every second), agents of eu and us, the console, alice's promotions, an alert, a held change,
and traffic on one promotion for as long as the tests run."""

from __future__ import annotations

import contextlib
import functools
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_client import Line, QuotaClient, QuotaClientError
from quota_testing.console import ConsoleStack, console_stack
from quota_testing.launch import run_quota
from quota_testing.secure_stack import refused, write_secure_set
from quota_testing.support import promotion

REGIONS = ("eu", "us")
SALE, BUSY, HELD = "sale", "busy", "held-coupon"
SALE_BUDGET, SALE_SPENT = 2_000, {"eu": 150, "us": 60}
ALERT_RULES = """
[[rule]]
name = "tenth-gone"
kind = "budget_low"
action = "alert"
left_pct = 90
message = "a tenth of the budget is gone"
"""
"""Raised for SALE once its seeded orders are reported (left below 90 %), and never for BUSY's huge budget."""
CALL_TIMEOUT_S = 10.0


def quota(stack: ConsoleStack, workdir: Path, name: str, *args: str) -> Any:
    """`quota ARGS --json` as the person whose certificate is `name`, parsed."""
    done = run_quota(*stack.cli(name, *args), "--json", cwd=workdir)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _seed(stack: ConsoleStack) -> None:
    """Alice's SALE with orders in both regions, her BUSY, and her HELD coupon, which the shipped guard rules
    hold for approval as P-1."""
    with stack.dev.transport("owner-alice").channel(stack.center.address) as channel:
        admin = center_grpc.PromotionAdminStub(channel)
        for promotion_id, budget in ((SALE, SALE_BUDGET), (BUSY, 1_000_000)):
            request = center_pb.CreatePromotionRequest(promotion=promotion(promotion_id, budget=budget))
            admin.CreatePromotion(request, timeout=CALL_TIMEOUT_S)
        held = center_pb.CreatePromotionRequest(promotion=promotion(HELD, budget=1_000, face_value=10_000))
        refusal = refused(functools.partial(admin.CreatePromotion, held, timeout=CALL_TIMEOUT_S))
        assert refusal.code() == grpc.StatusCode.FAILED_PRECONDITION, refusal.details()
    for region, spent in SALE_SPENT.items():
        with client(stack, region) as orders:
            for number in range(spent):
                orders.deduct(f"seed-{region}-{number}", [Line(SALE, 1, f"user-{number}")])


def client(stack: ConsoleStack, region: str) -> QuotaClient:
    """An order service of `region` calling its agent."""
    return QuotaClient(stack.agents[region].address, region, tls=stack.dev.client_tls(f"orders-{region}"))


@contextlib.contextmanager
def _traffic(stack: ConsoleStack) -> Iterator[None]:
    """Orders for BUSY in every region, one every 20 ms, until the end (refused ones too, once it is frozen)."""
    stop = threading.Event()

    def sell() -> None:
        clients = [client(stack, region) for region in REGIONS]
        number = 0
        while not stop.wait(0.02):
            number += 1
            with contextlib.suppress(QuotaClientError):
                clients[number % len(clients)].deduct(f"busy-{number}", [Line(BUSY, 1, f"user-{number % 97}")])
        for each in clients:
            each.close()

    seller = threading.Thread(target=sell, name="traffic", daemon=True)
    seller.start()
    try:
        yield
    finally:
        stop.set()
        seller.join(timeout=CALL_TIMEOUT_S)


@contextlib.contextmanager
def console_world(workdir: Path) -> Iterator[ConsoleStack]:
    dev = write_secure_set(workdir / "certs", REGIONS)
    rules = workdir / "alert-rules.toml"
    rules.write_text(ALERT_RULES)
    flags = ("--alert-rules", str(rules), "--alert-interval", "0.5", "--history-interval", "1")
    with console_stack(workdir, dev, REGIONS, flags) as stack:
        _seed(stack)
        with _traffic(stack):
            yield stack
