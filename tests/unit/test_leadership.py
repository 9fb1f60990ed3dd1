"""Leadership on the fake clock: a single node leads at once; an etcd leader stops acting on its lease
before etcd could expire it and let another replica win (so it never answers from a state another
leader may be changing). The etcd calls themselves are exercised in tests/contract/test_etcd_fencing.py."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from quota_center.center import Center
from quota_center.leadership import SingleNode, Tenure
from quota_common.clock import FakeClock
from quota_testing.memory_store import MemoryStore

TTL_S = 5.0
delay = st.floats(min_value=0.0, max_value=3.0)


def _unasked() -> str:
    raise AssertionError("a single node has no other replica to tell where it is reached")


async def test_a_single_node_answers_as_soon_as_it_listens_and_stops_on_close() -> None:
    leadership = SingleNode()
    center = Center(MemoryStore(), FakeClock(), leadership=leadership)

    async def deposed() -> None:
        center.stop_serving()

    await leadership.start(_unasked, center.start, deposed)
    assert center.leading
    assert leadership.leader_address() is None

    await leadership.close()
    assert not center.leading


def test_a_leader_that_cannot_renew_stops_before_its_lease_can_pass_to_another() -> None:
    clock = FakeClock()
    tenure = Tenure(clock)
    sent = tenure.sending()
    clock.advance(0.5)  # the grant reaches etcd, which counts the TTL from here
    etcd_expires = clock.monotonic() + TTL_S
    clock.advance(1.5)  # the answer comes back, slowly
    tenure.renewed(sent, TTL_S)

    clock.advance(TTL_S - 2.0 - 0.25)  # every renewal since was lost
    assert tenure.holds()
    clock.advance(0.25)
    assert not tenure.holds()
    assert etcd_expires - clock.monotonic() == 0.5  # etcd still keeps the key: the grant's way out is the margin


@given(
    grant=st.tuples(delay, delay),
    renewals=st.lists(st.tuples(delay, delay, delay, st.booleans()), max_size=10),
)
def test_a_leader_never_trusts_its_lease_longer_than_etcd_keeps_it(
    grant: tuple[float, float], renewals: list[tuple[float, float, float, bool]]
) -> None:
    """Any schedule of renewals, each sent after some wait, reaching etcd or lost on the way, its answer
    slow: at every instant this leader's tenure has no more time left than etcd's lease."""
    clock = FakeClock()
    tenure = Tenure(clock)
    etcd_expires = -math.inf

    def check() -> None:
        assert tenure.left() <= max(0.0, etcd_expires - clock.monotonic())

    out, back = grant
    sent = tenure.sending()
    clock.advance(out)
    etcd_expires = clock.monotonic() + TTL_S
    clock.advance(back)
    tenure.renewed(sent, TTL_S)
    check()
    for wait, out, back, arrives in renewals:
        clock.advance(wait)
        check()
        sent = tenure.sending()
        clock.advance(out)
        check()
        if not arrives:
            continue  # no answer: the keepalive times out and the tenure runs on as it was
        if clock.monotonic() >= etcd_expires:
            tenure.end()  # etcd answers that the lease is gone: this leader is deposed
            check()
            return
        etcd_expires = clock.monotonic() + TTL_S
        clock.advance(back)
        check()
        tenure.renewed(sent, TTL_S)
        check()
