"""Requests that used to get a misleading status (INTERNAL, RESOURCE_EXHAUSTED, UNKNOWN) get a precise
one, with a message a person can act on, and the server logs no error for a caller's mistake."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterator

import grpc
import pytest

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_testing.bad_calls import INVALID, World, acquire, counters, create, identity, rejected, unchanged
from quota_testing.inprocess import ServedAgent, ServedCenter
from quota_testing.support import promotion

HUGE = "x" * 100_000
METADATA_LIMIT = 16 * 1024


@pytest.fixture
def no_error_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.ERROR)
    yield
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def _timed(field: str, seconds: int = 1_700_000_000, nanos: int = 0) -> center_pb.Promotion:
    message = promotion()
    getattr(message, field).seconds = seconds
    getattr(message, field).nanos = nanos
    return message


@pytest.mark.usefixtures("no_error_logged")
@pytest.mark.parametrize(
    ("message", "fragments"),
    [
        pytest.param(_timed("start_time", seconds=10**12), ["start_time.seconds", "253402300799"], id="start-10**12"),
        pytest.param(_timed("end_time", seconds=-(10**12)), ["end_time.seconds", "-62135596800"], id="end-before-1"),
        pytest.param(_timed("start_time", nanos=-1), ["start_time.nanos", "999999999", "-1"], id="nanos-negative"),
        pytest.param(_timed("end_time", nanos=10**9), ["end_time.nanos", "999999999"], id="nanos-one-second"),
    ],
)
async def test_an_out_of_range_timestamp_is_an_invalid_argument(
    center_world: World, message: center_pb.Promotion, fragments: list[str]
) -> None:
    async with unchanged(center_world):
        await rejected(create(center_world.admin, message), INVALID, *fragments)


async def _refused_within_metadata_limit(call: Awaitable[object], code: grpc.StatusCode, *fragments: str) -> None:
    error = await rejected(call, code, *fragments)
    assert len((error.details() or "").encode()) < METADATA_LIMIT // 4


@pytest.mark.usefixtures("no_error_logged")
async def test_a_huge_currency_is_refused_without_being_repeated(center_world: World) -> None:
    message = promotion(kind=center_pb.PROMOTION_KIND_AMOUNT, currency=HUGE)

    async with unchanged(center_world):
        await _refused_within_metadata_limit(create(center_world.admin, message), INVALID, "currency", "100000 bytes")


@pytest.mark.usefixtures("no_error_logged")
async def test_a_huge_repeated_id_in_a_renewal_is_refused_without_being_repeated(
    granted: World, allocation: center_grpc.AllocationAsyncStub
) -> None:
    request = center_pb.RenewRequest(agent=identity(), counters=[counters(HUGE), counters(HUGE)])

    async with unchanged(granted):
        await _refused_within_metadata_limit(allocation.Renew(request, timeout=5), INVALID, "appears twice", "xxx")


@pytest.mark.usefixtures("no_error_logged")
async def test_a_refusal_naming_a_thousand_regions_keeps_its_status(
    center_world: World, allocation: center_grpc.AllocationAsyncStub
) -> None:
    regions = tuple(f"region-{index:04d}-".ljust(128, "x") for index in range(1000))
    await create(center_world.admin, promotion("wide", regions=regions))

    async with unchanged(center_world):
        await _refused_within_metadata_limit(
            allocation.Acquire(acquire("wide", agent=identity("elsewhere")), timeout=5),
            grpc.StatusCode.PERMISSION_DENIED,
            "'elsewhere' may not spend promotion wide",
        )


UNDECODABLE = [
    pytest.param(b"\xff\xff\xff", id="corrupt-wire-format"),
    pytest.param(b"\x0a\x02\xc3\x28", id="string-not-utf8"),
]


async def _raw_call(address: str, method: str, payload: bytes, streaming: bool) -> None:
    """Sends `payload` as the request bytes, as a client built from another schema would."""
    async with grpc.aio.insecure_channel(address) as channel:
        if streaming:
            stream: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(method)
            async for _ in stream(payload, timeout=5):
                pass
        else:
            single: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
            await single(payload, timeout=5)


@pytest.mark.usefixtures("no_error_logged")
@pytest.mark.parametrize("payload", UNDECODABLE)
@pytest.mark.parametrize(
    ("method", "request_type", "streaming"),
    [
        pytest.param("/quota_center.v1.PromotionAdmin/GetPromotion", "GetPromotionRequest", False, id="admin"),
        pytest.param("/quota_center.v1.Allocation/Acquire", "AcquireRequest", False, id="allocation"),
        pytest.param("/quota_center.v1.Catalog/Watch", "CatalogRequest", True, id="catalog-stream"),
    ],
)
async def test_an_undecodable_request_to_the_center_is_an_invalid_argument(
    center: ServedCenter, payload: bytes, method: str, request_type: str, streaming: bool
) -> None:
    await rejected(
        _raw_call(center.address, method, payload, streaming),
        INVALID,
        f"could not be decoded as quota_center.v1.{request_type}",
    )


@pytest.mark.usefixtures("no_error_logged")
@pytest.mark.parametrize("payload", UNDECODABLE)
async def test_an_undecodable_request_to_an_agent_is_an_invalid_argument(agent_eu: ServedAgent, payload: bytes) -> None:
    await rejected(
        _raw_call(agent_eu.address, "/region_agent.v1.RegionAgent/Deduct", payload, streaming=False),
        INVALID,
        "could not be decoded as region_agent.v1.DeductRequest",
    )
