"""The WAN emulator adds the delay it promises, keeps every stream intact, and partitions on command."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from loadtest.wan import Link, WanProxy
from quota_center.v1 import quota_center_pb2 as pb
from quota_center.v1 import quota_center_pb2_grpc as pb_grpc
from quota_testing.inprocess import running_center


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65_536):
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    async with server:
        yield int(server.sockets[0].getsockname()[1])


async def _round_trip(port: int, payload: bytes) -> tuple[bytes, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = time.perf_counter()
    writer.write(payload)
    await writer.drain()
    received = await reader.readexactly(len(payload))
    elapsed = time.perf_counter() - sent
    writer.close()
    return received, elapsed


async def test_a_round_trip_through_the_proxy_takes_the_links_rtt(echo_port: int) -> None:
    rtt_s = 0.25
    proxy = WanProxy("127.0.0.1", echo_port, Link(rtt_s=rtt_s))
    port = await proxy.start()
    try:
        for _ in range(3):
            echoed, elapsed = await _round_trip(port, b"ping")
            assert echoed == b"ping"
            # Once, not once per direction: a whole round trip of margin, so a busy machine does not matter.
            assert rtt_s <= elapsed < 2 * rtt_s
    finally:
        await proxy.close()


async def test_jitter_and_loss_reorder_nothing(echo_port: int) -> None:
    proxy = WanProxy("127.0.0.1", echo_port, Link(rtt_s=0.01, jitter_s=0.005, loss=0.2, retransmit_s=0.02), seed=3)
    port = await proxy.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        payload = random.Random(1).randbytes(2_000_000)
        for first in range(0, len(payload), 10_000):
            writer.write(payload[first : first + 10_000])
            await asyncio.sleep(0)
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(len(payload)), 30) == payload
        writer.close()
    finally:
        await proxy.close()


async def test_a_partition_holds_traffic_until_it_heals(echo_port: int) -> None:
    proxy = WanProxy("127.0.0.1", echo_port)
    port = await proxy.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"before")
        assert await reader.readexactly(6) == b"before"
        proxy.partition()
        writer.write(b"during")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readexactly(6), 0.3)
        late = asyncio.create_task(_round_trip(port, b"new connection"))
        await asyncio.sleep(0.2)
        assert not late.done()
        proxy.heal()
        assert await asyncio.wait_for(reader.readexactly(6), 5) == b"during"
        echoed, _ = await asyncio.wait_for(late, 5)
        assert echoed == b"new connection"
        writer.close()
    finally:
        await proxy.close()


async def test_grpc_calls_to_the_center_pay_the_round_trip_and_time_out_in_a_partition(tmp_path: Path) -> None:
    async with running_center(tmp_path) as center:
        host, _, center_port = center.address.rpartition(":")
        proxy = WanProxy(host, int(center_port), Link(rtt_s=0.08))
        port = await proxy.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                admin = pb_grpc.PromotionAdminStub(channel)
                await admin.ListPromotions(pb.ListPromotionsRequest(), timeout=5)  # connection set up
                sent = time.perf_counter()
                await admin.ListPromotions(pb.ListPromotionsRequest(), timeout=5)
                assert time.perf_counter() - sent >= 0.08
                proxy.partition()
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await admin.ListPromotions(pb.ListPromotionsRequest(), timeout=0.5)
                assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                proxy.heal()
                await admin.ListPromotions(pb.ListPromotionsRequest(), timeout=5)
        finally:
            await proxy.close()
