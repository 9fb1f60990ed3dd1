"""Ledger incarnations: what tells one life of a region's ledger from the next.

An incarnation reads `<start time: ns since the epoch, 20 digits>-<12 hex digits>`, so incarnations
sort by when their ledger began, and a late message from a dead process can never displace the live
one (`quota_center.ledger.admit`).

The center issues them (`issue_incarnation`, through Allocation.Join): the 12 hex digits are a MAC of
the region and the start time under a key only the center holds, so no caller can invent one, least
of all one that outranks the live agent of a region (the newest wins). The center's edge checks the
form, the MAC (`issued_with`) and the date: MAX_AHEAD_S bounds how far ahead of the center's clock
an issued one may be dated (the center that issued it ran fast). `new_incarnation` makes an unsigned
one, for a ledger that runs without a center (benchmarks, ledger tests); a center refuses it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid

from quota_common.clock import iso
from quota_common.errors import InvalidArgument
from quota_common.validation import quoted, require_id

MAX_AHEAD_S = 600
"""How far ahead of the center's host clock an incarnation's start may be: generous for clock skew
between hosts, short enough that a wrong one darkens its region for minutes, not for good."""

_FORM = re.compile(r"(\d{20})-[0-9a-f]{12}")


def new_incarnation(now_ns: int) -> str:
    """An unsigned incarnation for a ledger starting at `now_ns` (the host's wall clock, in ns), that runs
    without a center; a center refuses it."""
    return f"{now_ns:020d}-{uuid.uuid4().hex[:12]}"


def issue_incarnation(started_ns: int, region: str, key: bytes) -> str:
    """The incarnation the center issues to a new ledger life of `region` starting at `started_ns`."""
    stamp = f"{started_ns:020d}"
    return f"{stamp}-{_mac(key, region, stamp)}"


def issued_with(value: str, region: str, key: bytes) -> bool:
    """Whether `value` is an incarnation issued to `region` under `key`."""
    form = _FORM.fullmatch(value)
    return form is not None and hmac.compare_digest(value[21:], _mac(key, region, form[1]))


def started_ns(value: str) -> int:
    """When an incarnation's ledger life began (ns since the epoch); 0 for one that is not well formed."""
    form = _FORM.fullmatch(value)
    return 0 if form is None else int(form[1])


def _mac(key: bytes, region: str, stamp: str) -> str:
    return hmac.new(key, f"{region}\0{stamp}".encode(), hashlib.sha256).hexdigest()[:12]


def require_incarnation(field: str, value: str, now_ms: int) -> str:
    """`value` if it is an incarnation as ledgers make them, started no later than MAX_AHEAD_S after `now_ms`."""
    require_id(field, value)
    form = _FORM.fullmatch(value)
    if form is None:
        raise InvalidArgument(
            f"{field} {quoted(value)} is not an incarnation as agents make them: "
            "<start time in ns since the epoch, 20 digits>-<12 hex digits>"
        )
    started_ms = int(form[1]) // 1_000_000
    if started_ms > now_ms + MAX_AHEAD_S * 1000:
        raise InvalidArgument(
            f"{field} {value} says its ledger started at {iso(started_ms)}, more than {MAX_AHEAD_S} s after "
            f"the center's clock ({iso(now_ms)}): set the agent host's clock right (NTP) and restart the agent"
        )
    return value
