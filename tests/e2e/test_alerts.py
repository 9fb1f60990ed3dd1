"""Alerts against a running center and agent (embedded SQLite, in-process ledger): the seeds' incident, a
universal ¥100 coupon with no threshold and no per-user limit, approved anyway, is caught by one evaluation,
frozen by the center, refused by the agent; its alerts reach a webhook that fails for a while (connection
refused, then 500) once it recovers, each with its id; and a person acknowledges one with `quota alerts ack`."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from quota_center.alert_engine import AlertSettings
from quota_center.center_core import CenterSettings
from quota_center.trail import By
from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_center.webhooks import Backoff
from quota_cli.main import main
from quota_common.clock import SystemClock
from quota_common.errors import Held
from quota_common.identity import Role, person
from quota_common.model import Kind, Promotion
from quota_testing.inprocess import running_agent, running_center
from quota_testing.servers import free_port
from quota_testing.support import eventually, order
from region_agent.agent import AgentSettings
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc

DAY_MS = 24 * 3_600_000


class Receiver:
    """A webhook on loopback that refuses connections until started, then answers 500 `failures` times."""

    def __init__(self, failures: int) -> None:
        self.port = free_port()
        self.failures = failures
        self.received: list[tuple[str, dict[str, object], int]] = []
        """(Idempotency-Key, body, status answered)."""
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = 500 if receiver.failures > 0 else 200
                receiver.failures -= 1
                receiver.received.append((self.headers["Idempotency-Key"], body, status))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def delivered(self) -> dict[str, dict[str, object]]:
        return {key: body for key, body, status in self.received if status == 200}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver(failures=3)
    yield receiver
    receiver.stop()


async def test_a_free_coupon_is_frozen_by_its_alert_and_every_alert_reaches_a_recovering_webhook(
    tmp_path: Path, receiver: Receiver
) -> None:
    alerts = AlertSettings(webhooks=(receiver.url,), backoff=Backoff(first_s=0.05, max_s=0.3, timeout_s=2))
    async with (
        running_center(tmp_path, CenterSettings(alerts=alerts)) as served,
        running_agent("eu", served.address, AgentSettings("eu", renew_interval_s=0.2)) as agent,
    ):
        center = served.center
        now = SystemClock().wall_ms()
        coupon = Promotion(
            "free-100", Kind.COUNT, "", 100_000, now - 1000, now + 30 * DAY_MS, ("eu",), face_value=10_000
        )
        with pytest.raises(Held):
            await center.create_promotion(coupon, By(person("quota", Role.OWNER, "alice")))
        await center.approve("P-1", By(person("quota", Role.APPROVER, "bob")))
        async with grpc.aio.insecure_channel(agent.address) as channel:
            orders = agent_grpc.RegionAgentStub(channel)
            for number in range(60):
                await orders.Deduct(order(f"o-{number}", "eu", ("free-100", 10), user_id="everyone"), timeout=5)
            await agent.agent.renew_once()

            raised = await center.alerts.evaluate()

            [burning] = [alert for alert in raised if alert.name == "free-money-burning"]
            assert burning.action == "froze the promotion"
            assert center.promotion("free-100").frozen
            issued = center.usage("free-100").regions[0].account.consumed
            print(f"units issued before the automatic freeze: {issued} (¥{issued * 100:,})")

            async def refused() -> bool:
                try:
                    await orders.Deduct(order("late", "eu", ("free-100", 1)), timeout=5)
                except grpc.aio.AioRpcError as error:
                    return error.code() == grpc.StatusCode.FAILED_PRECONDITION
                return False

            await eventually(refused)
            reconcile = await center.raise_alert("reconcile", "free-100", "eu", "eu holds 3 more than booked")
            assert reconcile is not None
            raised.append(reconcile)
            await asyncio.sleep(0.5)  # posts meet a refused connection, and are retried
            receiver.start()

            async def all_delivered() -> bool:
                return {alert.id for alert in raised} <= set(receiver.delivered())

            await eventually(all_delivered)
        assert all(key == body["id"] for key, body, _ in receiver.received), "the id is the deduplication key"
        assert receiver.delivered()[burning.id]["action"] == "froze the promotion"
        assert any(status == 500 for _, _, status in receiver.received)

        async with grpc.aio.insecure_channel(served.address) as channel:
            admin = center_grpc.PromotionAdminStub(channel)

            async def counted() -> bool:
                listed = await admin.ListAlerts(center_pb.ListAlertsRequest(promotion_id="free-100"))
                return all(alert.deliveries >= 1 for alert in listed.alerts)

            await eventually(counted)
            with pytest.raises(grpc.aio.AioRpcError) as unspecified:
                await admin.AcknowledgeAlert(center_pb.AcknowledgeAlertRequest(alert_id=burning.id))
            assert unspecified.value.code() == grpc.StatusCode.INVALID_ARGUMENT

            ack = [
                "alerts",
                "--center",
                served.address,
                "ack",
                burning.id,
                "--cause",
                "real-fixed",
                "--note",
                "limit set",
            ]
            answered = await asyncio.to_thread(CliRunner().invoke, main, ack)
            assert answered.exit_code == 0, answered.output
            assert f"{burning.id} acknowledged as real-fixed" in answered.output
            listed = await asyncio.to_thread(CliRunner().invoke, main, ["alerts", "--center", served.address, "--json"])
            assert burning.id not in {alert["id"] for alert in json.loads(listed.output)["alerts"]}
            tallied = await asyncio.to_thread(
                CliRunner().invoke, main, ["alerts", "--center", served.address, "rules", "--json"]
            )
            by_rule = {row["rule_name"]: row for row in json.loads(tallied.output)["rules"]}
            assert by_rule["free-money-burning"]["real-fixed"] == 1
            assert (by_rule["reconcile"]["rule"], by_rule["reconcile"]["open"]) == ("reconcile", 1)
