"""A Redis that refuses the ledger's writes (out of memory under `maxmemory`, as a replica after a failover
would refuse them) is an outage to the agent's callers, UNAVAILABLE that may have applied, and not an
internal error; once Redis takes writes again, the same order goes through."""

from __future__ import annotations

import pytest
import redis.asyncio as redis

from quota_common.errors import LedgerUnreachable
from quota_testing.servers import redis_server
from region_agent.ledger.base import Line
from region_agent.ledger.redis import RedisLedger


async def test_a_redis_out_of_memory_answers_unavailable_and_the_retry_goes_through() -> None:
    with redis_server() as server:
        client = redis.Redis(host=server.host, port=server.port)
        ledger = RedisLedger(client, "eu", owns_client=True)
        try:
            await ledger.apply_grant("g1", "a", 10, await ledger.incarnation())
            await client.config_set("maxmemory", 1)  # the default policy, noeviction, refuses writes

            with pytest.raises(LedgerUnreachable, match="maxmemory") as refused:
                await ledger.deduct("o-1", (Line("a", 1, "u1"),))
            unapplied = await ledger.get_order("o-1")  # reads are still served

            await client.config_set("maxmemory", 0)
            retried = await ledger.deduct("o-1", (Line("a", 1, "u1"),))
        finally:
            await ledger.aclose()

    assert refused.value.may_have_applied
    assert unapplied is None
    assert (retried.accepted, retried.replayed) == (True, False)
