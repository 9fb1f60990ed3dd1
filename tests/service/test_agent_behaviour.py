"""How an agent keeps its allotment right: freezes, lost grants, restarts and leases."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
import pytest

from quota_center.center_core import CenterSettings
from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_common.clock import FakeClock
from quota_common.errors import ConfigError, Rejected, RejectReason
from quota_common.validation import MAX_AMOUNT
from quota_testing.inprocess import ServedCenter, running_agent, running_center
from quota_testing.support import eventually, now_ms, order, promotion, reject_reason
from region_agent.agent import AgentSettings
from region_agent.ledger.base import Line
from region_agent.v1 import region_agent_pb2 as agent_pb
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc

FAST = AgentSettings("eu", renew_interval_s=0.05, max_wait_s=1.0)


async def _usage(admin: center_grpc.PromotionAdminAsyncStub) -> center_pb.Usage:
    return await admin.GetUsage(center_pb.GetUsageRequest(promotion_id="promo"), timeout=5)


async def _eu_usage(admin: center_grpc.PromotionAdminAsyncStub) -> center_pb.RegionUsage:
    return next(r for r in (await _usage(admin)).regions if r.region == "eu")


async def test_a_freeze_stops_deductions_and_brings_the_allotment_back(
    center: ServedCenter, admin: center_grpc.PromotionAdminAsyncStub
) -> None:
    await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion(budget=1_000)))
    async with running_agent("eu", center.address, FAST) as agent, grpc.aio.insecure_channel(agent.address) as ch:
        orders = agent_grpc.RegionAgentStub(ch)
        await orders.Deduct(order("o-1", "eu", ("promo", 4)), timeout=5)

        await admin.SetFrozen(center_pb.SetFrozenRequest(promotion_id="promo", frozen=True), timeout=5)

        async def returned_everything() -> bool:
            usage = await _usage(admin)
            return usage.unallocated == 1_000 - 4

        await eventually(returned_everything)
        with pytest.raises(grpc.aio.AioRpcError) as frozen:
            await orders.Deduct(order("o-2", "eu", ("promo", 1)), timeout=5)
        assert frozen.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reject_reason(frozen.value) == "REJECT_REASON_FROZEN"
        replay = await orders.Deduct(order("o-1", "eu", ("promo", 4)), timeout=5)
        assert replay.replayed


async def test_a_grant_whose_answer_was_lost_reaches_the_agent_through_its_renewal(
    center: ServedCenter,
    admin: center_grpc.PromotionAdminAsyncStub,
    allocation: center_grpc.AllocationAsyncStub,
) -> None:
    await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion(budget=1_000)))
    async with running_agent("eu", center.address, FAST) as agent, grpc.aio.insecure_channel(agent.address) as ch:
        orders = agent_grpc.RegionAgentStub(ch)
        await orders.Deduct(order("o-1", "eu", ("promo", 1)), timeout=5)
        before = (await _eu_usage(admin)).granted

        lost = await allocation.Acquire(
            center_pb.AcquireRequest(
                agent=center_pb.AgentIdentity(region="eu", incarnation=agent.agent.incarnation),
                promotion_id="promo",
                amount=77,
                request_id="answer-lost-on-the-way",
            ),
            timeout=5,
        )

        assert lost.grant.amount == 77

        async def applied() -> bool:
            status = await orders.GetStatus(agent_pb.GetStatusRequest(), timeout=5)
            center_granted = (await _eu_usage(admin)).granted
            return status.balances[0].granted == center_granted >= before + 77

        await eventually(applied)


async def test_an_agent_that_lost_its_ledger_has_what_it_held_written_off(
    center: ServedCenter, admin: center_grpc.PromotionAdminAsyncStub
) -> None:
    await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion(budget=1_000)))
    crashing = AgentSettings("eu", renew_interval_s=0.05, return_on_shutdown=False)
    async with running_agent("eu", center.address, crashing) as first, grpc.aio.insecure_channel(first.address) as ch:
        await agent_grpc.RegionAgentStub(ch).Deduct(order("o-1", "eu", ("promo", 3)), timeout=5)
    held = (await _eu_usage(admin)).granted - 3

    async with running_agent("eu", center.address, FAST) as second, grpc.aio.insecure_channel(second.address) as ch:
        await agent_grpc.RegionAgentStub(ch).Deduct(order("o-2", "eu", ("promo", 1)), timeout=5)
        usage = await _usage(admin)

    eu = next(r for r in usage.regions if r.region == "eu")
    assert eu.written_off == held
    assert eu.consumed >= 3
    assert usage.unallocated == 1_000 - eu.granted + eu.returned


async def test_an_agent_cut_off_from_the_center_stops_spending_when_its_lease_runs_out(tmp_path: Path) -> None:
    # One clock for both, moved only here: the renewals before the cut all leased until now + TTL, and the
    # machine's speed cannot move the lease's end.
    clock, lease_ttl_s = FakeClock(wall_ms=now_ms()), 10.0
    async with AsyncExitStack() as stack:
        center = await stack.enter_async_context(
            running_center(tmp_path, CenterSettings(lease_ttl_s=lease_ttl_s), clock=clock)
        )
        async with grpc.aio.insecure_channel(center.address) as channel:
            admin = center_grpc.PromotionAdminStub(channel)
            await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion(budget=1_000)))
        settings = AgentSettings("eu", renew_interval_s=0.1, max_wait_s=0.5)
        async with (
            running_agent("eu", center.address, settings, clock=clock) as agent,
            grpc.aio.insecure_channel(agent.address) as ch,
        ):
            orders = agent_grpc.RegionAgentStub(ch)
            await orders.Deduct(order("o-1", "eu", ("promo", 1)), timeout=5)

            await stack.aclose()
            clock.advance(lease_ttl_s - 0.1)
            await orders.Deduct(order("o-2", "eu", ("promo", 1)), timeout=5)
            clock.advance(0.2)

            with pytest.raises(grpc.aio.AioRpcError) as expired:
                await orders.Deduct(order("o-3", "eu", ("promo", 1)), timeout=5)
            assert reject_reason(expired.value) == "REJECT_REASON_LEASE_EXPIRED"
            status = await orders.GetStatus(agent_pb.GetStatusRequest(), timeout=5)
            assert status.balances[0].available > 0


async def test_a_region_refused_for_lack_of_quota_gets_what_an_idle_region_gives_back(
    center: ServedCenter,
    admin: center_grpc.PromotionAdminAsyncStub,
    allocation: center_grpc.AllocationAsyncStub,
) -> None:
    await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion(budget=100)))
    idle = AgentSettings("eu", renew_interval_s=0.05)
    busy = AgentSettings("us", renew_interval_s=0.05, max_wait_s=0.2)
    async with running_agent("eu", center.address, idle) as eu, running_agent("us", center.address, busy) as us:
        async with grpc.aio.insecure_channel(eu.address) as channel:
            await agent_grpc.RegionAgentStub(channel).Deduct(order("e-0", "eu", ("promo", 1)), timeout=5)
        hoard = center_pb.AcquireRequest(
            agent=center_pb.AgentIdentity(region="eu", incarnation=eu.agent.incarnation),
            promotion_id="promo",
            amount=100,
            request_id="take-it-all",
        )
        assert (await allocation.Acquire(hoard, timeout=5)).unallocated == 0
        async with grpc.aio.insecure_channel(us.address) as channel:
            orders = agent_grpc.RegionAgentStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await orders.Deduct(order("o-0", "us", ("promo", 1)), timeout=5)
            assert reject_reason(refused.value) == "REJECT_REASON_EXHAUSTED"

            async def served() -> bool:
                try:
                    await orders.Deduct(order("o-1", "us", ("promo", 1)), timeout=5)
                except grpc.aio.AioRpcError:
                    return False
                return True

            await eventually(served)
    eu_usage = await _eu_usage(admin)
    assert eu_usage.returned > 0


async def test_a_user_over_the_per_user_limit_is_refused_with_its_reason(
    admin: center_grpc.PromotionAdminAsyncStub, orders_eu: agent_grpc.RegionAgentAsyncStub
) -> None:
    limited = promotion(budget=1_000, per_user_limit=3)
    await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=limited))
    await orders_eu.Deduct(order("o-1", "eu", ("promo", 2), user_id="ann"), timeout=5)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await orders_eu.Deduct(order("o-2", "eu", ("promo", 2), user_id="ann"), timeout=5)
    await orders_eu.Deduct(order("o-3", "eu", ("promo", 2), user_id="bob"), timeout=5)

    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reject_reason(refused.value) == "REJECT_REASON_USER_LIMIT"
    assert "3 units" in (refused.value.details() or "")


async def test_an_agent_replaced_by_a_newer_life_of_its_region_stops_spending_and_says_why_once(
    center: ServedCenter,
    admin: center_grpc.PromotionAdminAsyncStub,
    allocation: center_grpc.AllocationAsyncStub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion(budget=1_000)))
    async with running_agent("eu", center.address, FAST) as first, grpc.aio.insecure_channel(first.address) as ch:
        orders = agent_grpc.RegionAgentStub(ch)
        await orders.Deduct(order("o-1", "eu", ("promo", 1)), timeout=5)

        # A newer life of the region spends: as when the region's Redis came back empty and another of its
        # agents joined first, naming the life it replaces.
        newer = await allocation.Join(center_pb.JoinRequest(region="eu", replaces=first.agent.incarnation))
        identity = center_pb.AgentIdentity(region="eu", incarnation=newer.incarnation)
        await allocation.Acquire(
            center_pb.AcquireRequest(agent=identity, promotion_id="promo", amount=1, request_id="newer-1"), timeout=5
        )
        why = await asyncio.wait_for(first.agent.wait_retired(), timeout=10)

        assert "replaced" in why
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await orders.Deduct(order("o-3", "eu", ("promo", 1)), timeout=5)
        assert reject_reason(refused.value) == "REJECT_REASON_LEASE_EXPIRED"
        assert "replaced" in (refused.value.details() or "")
        said = len([r for r in caplog.records if r.levelno >= logging.WARNING])
        await asyncio.sleep(20 * FAST.renew_interval_s)  # twenty renewals' time: nothing more to say

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "replaced" in r.getMessage()]
    assert len(errors) == 1
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == said


async def test_a_second_agent_on_another_ledger_is_refused_and_the_regions_agent_serves_on(tmp_path: Path) -> None:
    async with running_center(tmp_path, CenterSettings(lease_ttl_s=0.5)) as center:
        async with grpc.aio.insecure_channel(center.address) as channel:
            admin = center_grpc.PromotionAdminStub(channel)
            await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion(budget=1_000)))
        async with running_agent("eu", center.address, FAST) as first:
            await first.agent.deduct("o-1", "eu", (Line("promo", 1),))

            # It waits out one lease, in case the region's agent was a process it restarts; this one renews.
            with pytest.raises(ConfigError) as refused:
                async with running_agent("eu", center.address, FAST):
                    pass

            assert "region eu is served by another agent" in refused.value.message
            assert first.agent.incarnation in refused.value.message
            assert "give this one the region's --ledger" in refused.value.message
            await first.agent.deduct("o-2", "eu", (Line("promo", 1),))  # not written off


async def test_an_agent_stopped_gracefully_on_an_in_process_ledger_lets_its_restart_join_at_once(
    center: ServedCenter, admin: center_grpc.PromotionAdminAsyncStub, caplog: pytest.LogCaptureFixture
) -> None:
    await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion(budget=1_000)))
    async with running_agent("eu", center.address, FAST) as first:
        await first.agent.deduct("o-1", "eu", (Line("promo", 1),))
    # Its last renewal said it was leaving: the region is not held, though its lease had ten seconds left.
    async with running_agent("eu", center.address, FAST) as restarted:
        await restarted.agent.deduct("o-2", "eu", (Line("promo", 1),))

        async def both_orders_counted() -> bool:
            return (await _eu_usage(admin)).consumed == 2

        assert restarted.agent.incarnation > first.agent.incarnation
        assert not [r for r in caplog.records if "another agent serves region" in r.getMessage()]  # no wait
        await eventually(both_orders_counted)


async def test_huge_valid_orders_leave_every_renewal_accepted_and_other_promotions_spendable(
    tmp_path: Path,
) -> None:
    clock = FakeClock(wall_ms=now_ms())
    huge = 150_000_000_000_000  # 1.5e14: three a second put demand a minute past 2**53
    quiet = AgentSettings("eu", renew_interval_s=3_600, pull_interval_s=3_600, push=False, opening_lookahead_s=0)
    async with running_center(tmp_path, CenterSettings(lease_ttl_s=1.0)) as center:
        async with grpc.aio.insecure_channel(center.address) as channel:
            admin = center_grpc.PromotionAdminStub(channel)
            await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion("big", MAX_AMOUNT)))
            await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion("small", 1_000)))
        async with running_agent("eu", center.address, quiet, clock=clock) as served:
            agent = served.agent
            await agent.deduct("s-1", "eu", (Line("small", 1),))
            for n in range(3):
                await agent.deduct(f"b-{n}", "eu", (Line("big", huge),))

            for _ in range(3):  # three renewals, each within the lease of the one before
                clock.advance(0.6)
                await agent.renew_once()

            await agent.deduct("s-2", "eu", (Line("small", 1),))
            await agent.deduct("b-3", "eu", (Line("big", huge),))


async def test_an_agent_whose_catalog_hears_nothing_refuses_orders_once_a_renewal_brings_an_emergency_freeze(
    center: ServedCenter, admin: center_grpc.PromotionAdminAsyncStub
) -> None:
    deaf = AgentSettings("eu", renew_interval_s=3_600, pull_interval_s=3_600, push=False, opening_lookahead_s=0)
    async with running_agent("eu", center.address, deaf) as served:
        await admin.CreatePromotion(center_pb.CreatePromotionRequest(promotion=promotion(budget=1_000)))
        await served.agent.deduct("o-1", "eu", (Line("promo", 1),))

        await admin.SetEmergencyFreeze(center_pb.SetEmergencyFreezeRequest(frozen=True), timeout=5)
        await served.agent.renew_once()

        with pytest.raises(Rejected) as frozen:
            await served.agent.deduct("o-2", "eu", (Line("promo", 1),))
        assert frozen.value.reason is RejectReason.FROZEN
