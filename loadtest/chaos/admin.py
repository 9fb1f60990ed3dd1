"""What the budget owner does during a chaos run, through whichever center replica leads: create the promotions,
freeze one, pull the emergency switch, lower a budget, and read the usage afterwards.

A standby answers UNAVAILABLE naming the leader; a replica that is down, stopped or electing does not answer.
Either way the call goes to the next replica until one leads or the patience runs out, since the nemesis may be
holding the leader down at that moment.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc

from quota_center.v1 import quota_center_pb2 as pb
from quota_center.v1 import quota_center_pb2_grpc as pb_grpc
from quota_common.transport import Transport

Reply = TypeVar("Reply")
ADMIN = "owner-alice"
"""The development certificate the budget owner's calls are made with."""
OPERATOR = "operator-carol"
"""The development certificate the emergency switch is pulled with (only operators may)."""
CALL_TIMEOUT_S = 2.0
PROBE_TIMEOUT_S = 0.5
PATIENCE_S = 60.0
_PASS_ON = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


class CenterAdmin:
    def __init__(self, addresses: Sequence[str], transport: Transport, operator: Transport) -> None:
        """`transport`: as whom the calls are made (the budget owner's certificate); `operator`: as whom the
        emergency switch is pulled."""
        self._addresses = list(addresses)
        self._transport = transport
        self._operator = operator

    async def call(
        self, send: Callable[[pb_grpc.PromotionAdminAsyncStub], Awaitable[Reply]], transport: Transport | None = None
    ) -> Reply:
        """`send` must be safe to repeat: a call that timed out may have been applied and is sent again.
        `transport`: as whom, when not as the budget owner."""
        deadline = time.monotonic() + PATIENCE_S
        while True:
            for address in self._addresses:
                async with (transport or self._transport).aio_channel(address) as channel:
                    try:
                        return await send(pb_grpc.PromotionAdminStub(channel))
                    except grpc.aio.AioRpcError as error:
                        if error.code() not in _PASS_ON or time.monotonic() > deadline:
                            raise
            await asyncio.sleep(0.2)

    async def leader(self) -> str | None:
        """The replica that answers a read as leader now, if any. All are asked at once and briefly, so a stopped
        replica does not hide for a whole call timeout that another one took over."""
        answers = await asyncio.gather(*(self._leads(address) for address in self._addresses))
        return next((address for address, leads in zip(self._addresses, answers, strict=True) if leads), None)

    async def _leads(self, address: str) -> bool:
        async with self._transport.aio_channel(address) as channel:
            try:
                request = pb.ListPromotionsRequest(page_size=1)
                await pb_grpc.PromotionAdminStub(channel).ListPromotions(request, timeout=PROBE_TIMEOUT_S)
            except grpc.aio.AioRpcError:
                return False
            return True

    async def create(self, promotion: pb.Promotion) -> None:
        request = pb.CreatePromotionRequest(promotion=promotion)
        try:
            await self.call(lambda admin: admin.CreatePromotion(request, timeout=CALL_TIMEOUT_S))
        except grpc.aio.AioRpcError as error:
            # A retry of a create that landed before its answer was lost.
            if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise

    async def set_frozen(self, promotion_id: str, frozen: bool) -> None:
        request = pb.SetFrozenRequest(promotion_id=promotion_id, frozen=frozen)
        await self.call(lambda admin: admin.SetFrozen(request, timeout=CALL_TIMEOUT_S))

    async def set_emergency(self, region: str, frozen: bool) -> None:
        request = pb.SetEmergencyFreezeRequest(region=region, frozen=frozen)
        await self.call(lambda admin: admin.SetEmergencyFreeze(request, timeout=CALL_TIMEOUT_S), self._operator)

    async def usage(self, promotion_id: str) -> pb.Usage:
        request = pb.GetUsageRequest(promotion_id=promotion_id)
        return await self.call(lambda admin: admin.GetUsage(request, timeout=CALL_TIMEOUT_S))

    async def lower_budget(self, promotion_id: str) -> int:
        """Takes away half of what is still unallocated (the lowest budget the center accepts is what the regions
        took); returns the new budget. Read and write race with grants, so a refused change reads again."""
        while True:
            lowered = await self._lower_once(promotion_id)
            if lowered is not None:
                return lowered

    async def _lower_once(self, promotion_id: str) -> int | None:
        usage = await self.usage(promotion_id)
        budget = usage.promotion.budget - usage.unallocated // 2
        request = pb.SetBudgetRequest(
            promotion_id=promotion_id, budget=budget, expected_revision=usage.promotion.revision
        )
        try:
            await self.call(lambda admin: admin.SetBudget(request, timeout=CALL_TIMEOUT_S))
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            return None
        return budget
