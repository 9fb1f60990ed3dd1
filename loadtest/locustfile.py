"""Locust users that act as regional order services: each user is pinned to one region and calls
that region's agent over gRPC, as a checkout would.

    locust -f loadtest/locustfile.py --headless -u 50 -r 10 -t 60s \\
        --agents eu=127.0.0.1:50061,us=127.0.0.1:50062 --center 127.0.0.1:50051

Every call is reported as a Locust request of type "grpc" named after what it did ("Deduct",
"Deduct multi-line", "Deduct retry", "Refund", "Reserve", "Confirm", "Cancel"). A deduction or
reservation refused because the budget is spent is the sale working as intended, so it counts as a
success under "<name> (exhausted)"; anything else the agent refuses, and any answer that breaks the
API's promises (a retry that is not replayed, lines that differ from the order's), is a failure.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import grpc
import grpc.experimental.gevent as grpc_gevent
from google.protobuf.timestamp_pb2 import Timestamp
from locust import User, events, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.runners import WorkerRunner

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_client import Exhausted, Line, QuotaClient, QuotaClientError, Refunded, RetryPolicy

# gRPC's sync stubs block the OS thread unless gRPC polls through gevent: without this, every
# Locust user in the process would wait for the one call in flight.
grpc_gevent.init_gevent()

log = logging.getLogger(__name__)

Answer = TypeVar("Answer")

HOUR_MS = 3_600_000
REFUNDABLE_KEPT = 100
"""Orders a user remembers for later refunds; older ones are simply never refunded."""
USERS_PER_REGION = 10_000
"""Customers per region the orders are spread over."""
RESERVATION_TTL_MS = 60_000
"""Long enough that a reservation settled right after it is made never lapses first."""

TASKS = ("deduct", "multi_line", "refund", "retry", "reserve_confirm", "reserve_cancel")
DEFAULT_WEIGHTS = {"deduct": 10, "multi_line": 3, "refund": 2, "retry": 2, "reserve_confirm": 2, "reserve_cancel": 1}


# Locust's EventHook.add_listener is untyped; the listeners themselves are checked.
@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _add_options(parser: LocustArgumentParser) -> None:
    parser.add_argument(
        "--agents",
        env_var="QUOTA_AGENTS",
        default="",
        help="region=host:port of each region's agent, comma-separated; users are spread over the regions",
    )
    parser.add_argument(
        "--center",
        env_var="QUOTA_CENTER",
        default="",
        help="the center's host:port; when given, the promotions are created at test start",
    )
    parser.add_argument("--promotions", type=int, default=4, help="promotions the orders spend")
    parser.add_argument("--budget", type=int, default=10_000, help="budget of each promotion created (--center)")
    parser.add_argument(
        "--promotion-prefix",
        default="load",
        help="promotion ids are PREFIX-1 .. PREFIX-N; a new prefix gives a deployment fresh budgets",
    )
    parser.add_argument("--call-timeout", type=float, default=5.0, help="deadline of every call, seconds")
    for name in TASKS:
        parser.add_argument(
            f"--weight-{name.replace('_', '-')}",
            type=int,
            default=DEFAULT_WEIGHTS[name],
            help=f"relative weight of the {name.replace('_', ' ')} task (0: never)",
        )


@dataclass(frozen=True)
class Options:
    agents: dict[str, str]
    center: str
    promotion_ids: list[str]
    budget: int
    call_timeout_s: float
    weights: dict[str, int]


def _options(environment: Environment) -> Options:
    parsed = environment.parsed_options
    assert parsed is not None, "started by the locust command"
    agents = dict(entry.strip().split("=", 1) for entry in str(parsed.agents).split(",") if entry.strip())
    if not agents:
        raise ValueError("--agents (or QUOTA_AGENTS) must name at least one region=host:port")
    if int(parsed.promotions) < 1:
        raise ValueError("--promotions must be at least 1")
    weights = {name: int(getattr(parsed, f"weight_{name}")) for name in TASKS}
    if any(weight < 0 for weight in weights.values()) or not any(weights.values()):
        raise ValueError(f"task weights must be non-negative and not all zero, got {weights}")
    return Options(
        agents=agents,
        center=str(parsed.center),
        promotion_ids=[f"{parsed.promotion_prefix}-{n}" for n in range(1, int(parsed.promotions) + 1)],
        budget=int(parsed.budget),
        call_timeout_s=float(parsed.call_timeout),
        weights=weights,
    )


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def _create_promotions(environment: Environment, **_kwargs: object) -> None:
    # Workers get their users from the master, which has created the promotions already.
    if isinstance(environment.runner, WorkerRunner):
        return
    options = _options(environment)
    if not options.center:
        return
    now_ms = time.time_ns() // 1_000_000
    start, end = Timestamp(), Timestamp()
    # Started a minute ago, so that an agent whose clock is a little behind still sees it active.
    start.FromMilliseconds(now_ms - 60_000)
    end.FromMilliseconds(now_ms + 4 * HOUR_MS)
    with grpc.insecure_channel(options.center) as channel:
        admin = center_grpc.PromotionAdminStub(channel)
        for promotion_id in options.promotion_ids:
            promotion = center_pb.Promotion(
                id=promotion_id,
                kind=center_pb.PROMOTION_KIND_COUNT,
                budget=options.budget,
                start_time=start,
                end_time=end,
                regions=list(options.agents),
            )
            try:
                admin.CreatePromotion(
                    center_pb.CreatePromotionRequest(promotion=promotion), timeout=options.call_timeout_s
                )
            except grpc.RpcError as error:
                # A rerun against the same center with the same prefix spends what is left of the same budgets.
                if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise
    log.info("promotions %s ready in regions %s", ", ".join(options.promotion_ids), ", ".join(options.agents))


class CallFailed(Exception):
    """A call that failed, or answered what the API does not promise; Locust groups failures by its text."""


def _describe(error: QuotaClientError) -> str:
    reason = f" ({error.reason})" if error.reason else ""
    return f"{type(error).__name__}{reason}: {error.message}"


class OrderAnswer(Protocol):
    """What Deduct, Reserve, Confirm and Cancel answer alike."""

    @property
    def lines(self) -> tuple[Line, ...]: ...

    @property
    def replayed(self) -> bool: ...


def _lines(lines: Iterable[Line]) -> list[tuple[str, int, str]]:
    return [(line.promotion_id, line.amount, line.user_id) for line in lines]


def _fresh(lines: list[Line]) -> Callable[[OrderAnswer], str]:
    """The check of a first answer to an order: not a replay, and exactly the lines asked for."""

    def check(answer: OrderAnswer) -> str:
        if answer.replayed:
            return "a new order answered as a replay"
        return "" if _lines(answer.lines) == _lines(lines) else "answered with other lines than the order's"

    return check


def _replayed(first: OrderAnswer) -> Callable[[OrderAnswer], str]:
    """The check of a retry's answer: a replay of the first answer."""

    def check(answer: OrderAnswer) -> str:
        if not answer.replayed:
            return "a retried order was not replayed"
        return "" if _lines(answer.lines) == _lines(first.lines) else "a replay answered with other lines"

    return check


def _refunded(deducted: list[Line]) -> Callable[[Refunded], str]:
    """The check of a first full refund: everything the order deducted came back."""
    expected = sorted((line.promotion_id, line.amount) for line in deducted)

    def check(answer: Refunded) -> str:
        if answer.replayed:
            return "a first refund answered as a replay"
        got = sorted((line.promotion_id, line.amount) for line in answer.lines)
        return "" if got == expected else "refunded other amounts than the order deducted"

    return check


_region_turns = itertools.count()


class OrderService(User):
    """One instance of a region's order service: it places orders for that region's customers through the
    client library, as a checkout would (its retries and failover included)."""

    def on_start(self) -> None:
        options = _options(self.environment)
        regions = sorted(options.agents)
        # Round-robin rather than random, so that every region gets its share even with few users.
        self.region = regions[next(_region_turns) % len(regions)]
        self.promotion_ids = options.promotion_ids
        self.task_names = [name for name in TASKS if options.weights[name]]
        self.task_weights = [options.weights[name] for name in self.task_names]
        policy = RetryPolicy(deadline_s=options.call_timeout_s, attempt_timeout_s=options.call_timeout_s)
        self.quota = QuotaClient(options.agents[self.region], self.region, policy=policy)
        self.refundable: deque[tuple[str, list[Line]]] = deque(maxlen=REFUNDABLE_KEPT)

    def on_stop(self) -> None:
        self.quota.close()

    @task
    def order(self) -> None:
        # The mix is drawn here rather than by Locust's task weights, which are fixed when the class
        # is defined; the weights come from options, which workers only know once the test starts.
        name = random.choices(self.task_names, self.task_weights)[0]
        getattr(self, name)()

    def deduct(self) -> None:
        self._deduct("Deduct", [self._line(random.choice(self.promotion_ids))])

    def multi_line(self) -> None:
        count = min(len(self.promotion_ids), random.randint(2, 3))
        user = self._user()
        lines = [self._line(p, user, random.randint(1, 3)) for p in random.sample(self.promotion_ids, count)]
        self._deduct("Deduct multi-line", lines)

    def refund(self) -> None:
        if not self.refundable:
            return
        order_key, lines = self.refundable.popleft()
        # No lines: the agent refunds whatever the order still has, which must be all it deducted.
        self._call("Refund", lambda: self.quota.refund(order_key), check=_refunded(lines))

    def retry(self) -> None:
        lines = [self._line(random.choice(self.promotion_ids))]
        order_key = self._order_key()
        first = self._call("Deduct", lambda: self.quota.deduct(order_key, lines), check=_fresh(lines), may_exhaust=True)
        if first is not None:
            self.refundable.append((order_key, lines))
            # The same order sent again, as a client does when the first answer was lost.
            self._call("Deduct retry", lambda: self.quota.deduct(order_key, lines), check=_replayed(first))

    def reserve_confirm(self) -> None:
        reservation = self._reserve()
        if reservation is not None:
            order_key, lines = reservation
            if self._call("Confirm", lambda: self.quota.confirm(order_key), check=_fresh(lines)) is not None:
                # A confirmed reservation is a deduction, refundable like one.
                self.refundable.append(reservation)

    def reserve_cancel(self) -> None:
        reservation = self._reserve()
        if reservation is not None:
            order_key, lines = reservation
            check = _fresh(lines)
            self._call(
                "Cancel",
                lambda: self.quota.cancel(order_key),
                check=lambda a: check(a) or ("settled a reservation that had lapsed" if a.expired else ""),
            )

    def _deduct(self, name: str, lines: list[Line]) -> None:
        order_key = self._order_key()
        if self._call(name, lambda: self.quota.deduct(order_key, lines), check=_fresh(lines), may_exhaust=True):
            self.refundable.append((order_key, lines))

    def _reserve(self) -> tuple[str, list[Line]] | None:
        """Reserves a one-line order; its key and lines if the hold was granted."""
        lines = [self._line(random.choice(self.promotion_ids))]
        order_key = self._order_key()
        ttl_s = RESERVATION_TTL_MS / 1000
        held = self._call(
            "Reserve", lambda: self.quota.reserve(order_key, lines, ttl_s), check=_fresh(lines), may_exhaust=True
        )
        return (order_key, lines) if held is not None else None

    def _order_key(self) -> str:
        return f"{self.region}-{uuid.uuid4().hex}"

    def _user(self) -> str:
        return f"{self.region}-user-{random.randrange(USERS_PER_REGION)}"

    def _line(self, promotion_id: str, user: str = "", amount: int = 1) -> Line:
        return Line(promotion_id, amount, user or self._user())

    def _call(
        self, name: str, call: Callable[[], Answer], *, check: Callable[[Answer], str], may_exhaust: bool = False
    ) -> Answer | None:
        """Makes the call, reports it to Locust, and returns the answer if the call succeeded.

        `check` returns what is wrong with an answer ("" if nothing); `may_exhaust` makes a refusal
        for a spent budget a success that returns None.
        """
        started = time.perf_counter()
        answer: Answer | None = None
        failure: CallFailed | None = None
        try:
            answer = call()
        except QuotaClientError as error:
            if may_exhaust and isinstance(error, Exhausted):
                name = f"{name} (exhausted)"
            else:
                failure = CallFailed(_describe(error))
        elapsed_ms = (time.perf_counter() - started) * 1000
        if answer is not None and (problem := check(answer)):
            failure = CallFailed(problem)
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=elapsed_ms,
            response_length=0,
            exception=failure,
            context={"region": self.region},
        )
        return None if failure else answer
