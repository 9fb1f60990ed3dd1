"""Fixtures of the unit tests that drive a real center: a fake clock, and a center on a memory store."""

from __future__ import annotations

import pytest

from quota_center.center import Center
from quota_center.center_core import CenterSettings
from quota_common.clock import FakeClock
from quota_testing.memory_store import MemoryStore
from quota_testing.support import PENDING_TTL_S


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def center(clock: FakeClock) -> Center:
    """Held changes wait PENDING_TTL_S."""
    center = Center(MemoryStore(), clock, CenterSettings(pending_ttl_s=PENDING_TTL_S))
    await center.start()
    return center
