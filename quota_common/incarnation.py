"""Ledger incarnations: what tells one life of a region's ledger from the next.

An incarnation reads `<start time: ns since the epoch, 20 digits>-<12 hex digits>`, so incarnations
sort by when their ledger began, and a late message from a dead process can never displace the live
one (`quota_center.ledger.admit`). The order is only as good as the start times, so the center's edge
checks both the form and the date: an incarnation dated far ahead, forged or stamped by a host whose
clock ran fast, would outrank every real agent of its region until that date came, and the region
would stay dark that long. MAX_AHEAD_S bounds that.
"""

from __future__ import annotations

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
    """A fresh incarnation for a ledger starting at `now_ns` (the host's wall clock, in ns)."""
    return f"{now_ns:020d}-{uuid.uuid4().hex[:12]}"


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
