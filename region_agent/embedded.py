"""The region's agent inside an order service's own process: no gRPC hop, no agent process to run.

    async with EmbeddedAgent.start(AgentConfig(AgentSettings("eu"), center=(...,), ledger="redis://...")) as agent:
        outcome = await agent.deduct("order-1", (Line("promo", 1, "user-7"),))

It is the agent a process runs (`region_agent.app.wire_agent`: the same `Agent`, `Supply`, promotion cache and
catalog sync) without its gRPC server, on the region's Redis beside any number of agent processes and other
embedded agents: they share one ledger, one incarnation and one allotment, and it takes part in refills,
renewals, the cache's push and pull links and freezes as they do. A deduction is one EVALSHA on the ledger's
own connection, batched with the deductions that arrive meanwhile (`ledger.batching`).

What it trusts: the process holds the agent's identity (its certificate, for the center link) and the region's
ledger credentials, so it can spend whatever the region holds; run it only in a service trusted that far.
Its orders are recorded as the region's order services' (`spiffe://<domain>/region/<r>/orders[/<service>]`
with TLS, nobody without), so one placed here may be refunded through an agent process by that identity.

Only a Redis ledger: an in-process one would make every order-service replica a new incarnation of the region,
each writing off what the one before held. Answers are the ledger's outcomes; refusals raise the
`quota_common.errors` the server maps to gRPC statuses (Rejected with its reason, Unavailable, ...). Order
services call it through `quota_client.embedded`, which answers the client library's results and exceptions.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from quota_common.errors import ConfigError
from quota_common.identity import Role, regional
from quota_common.validation import require_id
from region_agent.agent import Agent, GroupStatus, OrderReport, PromotionStatus
from region_agent.app import AgentConfig, WiredAgent, wire_agent
from region_agent.ledger.base import DeductOutcome, Line, RefundOutcome, Settle, SettleOutcome
from region_agent.order_input import GivenLine, hold_ms, order_lines, refund_lines


class EmbeddedAgent:
    def __init__(self, wired: WiredAgent, placer: str) -> None:
        """Made by `start`."""
        self._running: Agent | None = wired.agent
        self.region = wired.agent.settings.region
        self.placer = placer
        """The identity this process's orders are recorded under ("" without TLS)."""

    @property
    def _agent(self) -> Agent:
        """The agent, while `start`'s block runs. After it, the region has the agent's last report and may give
        its allotment to others: an order spent here then would be spent without the center knowing."""
        if self._running is None:
            raise RuntimeError("this embedded agent has stopped (its async with block ended): start a new one")
        return self._running

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, config: AgentConfig, service: str = "") -> AsyncIterator[EmbeddedAgent]:
        """Joins the region (as an agent process starts) until the block ends, then reports and stops.
        `service`: the order service's name in its identity, when it has one of its own (see the module's
        docstring). `config.listen` and `config.metrics_listen` are not used. ConfigError as `agent serve`
        would refuse the settings, and for a ledger that is not the region's Redis."""
        if config.ledger == "memory":
            raise ConfigError(
                "an embedded agent shares the region's ledger: give redis://..., rediss://... or "
                f"redis+cluster://..., not {config.ledger!r}"
            )
        security, region = config.security, config.settings.region
        placer = regional(security.trust_domain, Role.ORDERS, region, service).uri if security.tls else ""
        wired = await wire_agent(config, listen="")
        try:
            await wired.agent.start()
            embedded = cls(wired, placer)
            try:
                yield embedded
            finally:
                embedded._running = None
        finally:
            await wired.close()

    async def deduct(
        self, order_key: str, lines: Sequence[GivenLine], time_remaining_s: float | None = None
    ) -> DeductOutcome:
        """Deducts every line or none; a retry with the same key and lines replays the first answer.
        `time_remaining_s`: how long the order may wait for a refill (default: the agent's `max_wait_s`)."""
        checked = order_lines(lines)
        return await self._agent.deduct(_key(order_key), self.region, checked, time_remaining_s, placer=self.placer)

    async def reserve(
        self, order_key: str, lines: Sequence[GivenLine], ttl_ms: int = 0, time_remaining_s: float | None = None
    ) -> DeductOutcome:
        """Holds every line or none for `ttl_ms` (1 s .. 24 h; 0: the agent's default); its deadline is in
        `expires_at_ms`."""
        checked = order_lines(lines)
        hold = hold_ms(ttl_ms, self._agent.settings.reservation_ttl_ms)
        return await self._agent.deduct(_key(order_key), self.region, checked, time_remaining_s, hold, self.placer)

    async def confirm(self, order_key: str) -> SettleOutcome:
        return await self._agent.settle(_key(order_key), Settle.CONFIRM, self.placer)

    async def cancel(self, order_key: str) -> SettleOutcome:
        return await self._agent.settle(_key(order_key), Settle.CANCEL, self.placer)

    async def refund(self, order_key: str, refund_id: str | None = None, lines: Sequence[Line] = ()) -> RefundOutcome:
        """Gives back `lines` of the order (none: everything it has left); `refund_id` keys the refund
        (default: the order key, so one refund per order)."""
        refund_key = require_id("refund_id", refund_id) if refund_id else ""
        return await self._agent.refund(_key(order_key), refund_key, refund_lines(lines), self.placer)

    async def get_order(self, order_key: str) -> OrderReport:
        """What became of one of this process's orders, changing nothing: the read to make after a call
        whose outcome is unknown (the region's Redis did not answer), rather than sending it again."""
        return await self._agent.get_order(_key(order_key), self.placer)

    async def status(self) -> list[PromotionStatus]:
        """Every promotion the region's ledger holds: balance, lease left, frozen."""
        return await self._agent.status()

    def group_statuses(self) -> list[GroupStatus]:
        """Every center group the agent follows, the default group first: its links and the region's lease."""
        return self._agent.group_statuses()

    @property
    def incarnation(self) -> str:
        """The region's ledger life this agent takes part in (the one its agent processes share)."""
        return self._agent.incarnation

    @property
    def center_calls(self) -> int:
        """Calls this agent made to the center since it started."""
        return self._agent.center_calls


def _key(order_key: str) -> str:
    return require_id("order_key", order_key)
