"""Leadership on the fake clock: a single node leads at once; an etcd leader stops acting on its lease
before etcd could expire it and let another replica win (so it never answers from a state another
leader may be changing). The etcd calls themselves are exercised in tests/contract/test_etcd_fencing.py."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota_center.center import Center
from quota_center.leadership import EtcdLeadership, SingleNode, Tenure
from quota_center.store.etcd import EtcdStore
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


def test_a_renewal_answered_late_extends_nothing_a_later_one_was_answered_for() -> None:
    clock = FakeClock()
    tenure = Tenure(clock)
    first = tenure.sending()
    clock.advance(1.0)
    second = tenure.sending()
    clock.advance(0.5)
    tenure.renewed(second, TTL_S)
    tenure.renewed(first, TTL_S)  # its answer waited on a busy event loop

    assert tenure.left() == TTL_S - 0.5


@given(renewals=st.lists(st.tuples(delay, delay, delay), min_size=1, max_size=10))
def test_renewals_in_flight_together_never_trust_the_lease_longer_than_etcd_keeps_it(
    renewals: list[tuple[float, float, float]],
) -> None:
    """Renewals sent one after another without waiting for answers, each reaching etcd and answered after its
    own delays (out of order, or after etcd let the lease expire): at every event, no more tenure than lease."""
    clock = FakeClock()
    tenure = Tenure(clock)
    start = clock.monotonic()
    sent: list[float] = []
    events: list[tuple[float, bool, int]] = []  # (when, answered (else: reaches etcd), which renewal)
    for wait, out, back in renewals:
        sent.append((sent[-1] if sent else start) + wait)
        events += [(sent[-1] + out, False, len(sent) - 1), (sent[-1] + out + back, True, len(sent) - 1)]
    tenure.renewed(start, TTL_S)
    etcd_expires = start + TTL_S  # the grant, counted by etcd from no earlier than its sending
    renewed_by_etcd: dict[int, bool] = {}
    for when, answered, which in sorted(events):
        clock.advance(when - clock.monotonic())
        if not answered:
            renewed_by_etcd[which] = when < etcd_expires
            if renewed_by_etcd[which]:
                etcd_expires = when + TTL_S
        elif renewed_by_etcd[which]:
            tenure.renewed(sent[which], TTL_S)
        else:
            tenure.end()  # etcd answered that the lease is gone
        assert tenure.left() <= max(0.0, etcd_expires - clock.monotonic())


class _Renewal:
    """One keepalive stream, answered when the test says so."""

    def __init__(self) -> None:
        self.ttl: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def __aiter__(self) -> AsyncIterator[SimpleNamespace]:
        return self._answers()

    async def _answers(self) -> AsyncIterator[SimpleNamespace]:
        yield SimpleNamespace(TTL=await self.ttl)

    def cancel(self) -> bool:
        return True


class _Etcd:
    """What `EtcdLeadership` asks of etcd: a lease granted, the leader key won, keepalives held by the test."""

    def __init__(self) -> None:
        self.renewals: list[_Renewal] = []
        self._another = asyncio.Event()

    async def grant(self, ttl: int, **options: object) -> SimpleNamespace:
        return SimpleNamespace(ID=7)

    async def txn(self, *args: object, **options: object) -> SimpleNamespace:
        return SimpleNamespace(succeeded=True, header=SimpleNamespace(revision=1))

    def keep_alive(self, lease_id: int) -> _Renewal:
        self.renewals.append(_Renewal())
        self._another.set()
        return self.renewals[-1]

    async def revoke(self, lease_id: int, **options: object) -> None:
        pass

    async def sent(self, count: int) -> _Renewal:
        while len(self.renewals) < count:
            self._another.clear()
            await self._another.wait()
        return self.renewals[count - 1]


async def _elected(clock: FakeClock, etcd: _Etcd, deposed: asyncio.Event) -> EtcdLeadership:
    """A leader on `etcd` with a lease of 1 s, once elected; `deposed` is set when it no longer leads."""
    store = SimpleNamespace(client=SimpleNamespace(lease=etcd, kv=etcd), prefix="/quota", fence=lambda *_: None)
    leadership = EtcdLeadership(cast(EtcdStore, store), clock, ttl_s=1)
    elected = asyncio.Event()

    async def on_elected() -> None:
        elected.set()

    async def on_deposed() -> None:
        deposed.set()

    await leadership.start(lambda: "here:1", on_elected, on_deposed)
    await elected.wait()
    return leadership


async def test_a_renewal_goes_out_while_an_earlier_one_waits_for_its_answer_and_the_later_one_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On a busy event loop an answer can take seconds to be read: the next renewal does not wait for it."""
    clock, etcd, deposed = FakeClock(), _Etcd(), asyncio.Event()
    leadership = await _elected(clock, etcd, deposed)
    slow = await etcd.sent(1)
    clock.advance(0.5)
    (await etcd.sent(2)).ttl.set_result(1)  # sent 0.5 s after the grant, unanswered as the first is
    slow.ttl.set_result(1)  # answered last: it counts from its own, earlier sending
    for _ in range(3):  # the renewals read their answers
        await asyncio.sleep(0)

    clock.advance(0.9)  # past what the slow one alone would have kept
    assert leadership.leading()
    (await etcd.sent(len(etcd.renewals) + 1)).ttl.set_result(0)  # etcd: the lease is gone
    await deposed.wait()
    assert not leadership.leading()
    assert "etcd answered that the leader's lease expired" in caplog.text
    await leadership.close()


async def test_a_leader_whose_renewals_go_unanswered_steps_down_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    clock, etcd, deposed = FakeClock(), _Etcd(), asyncio.Event()
    leadership = await _elected(clock, etcd, deposed)
    await etcd.sent(1)
    clock.advance(1.0)  # the lease's TTL, no answer read

    await deposed.wait()
    assert not leadership.leading()
    assert "lease tenure ran out with 1 renewals unanswered" in caplog.text
    await leadership.close()
