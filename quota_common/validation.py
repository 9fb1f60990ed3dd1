"""Input limits shared by every RPC, checked at the servicer edge before anything changes."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence

from quota_common.errors import InvalidArgument

# Exact as an int64, in JSON and as a Lua (double) number in Redis scripts.
MAX_AMOUNT = 2**53 - 1
# Cumulative counters sum amounts over a ledger's life; int64 is what the wire carries.
MAX_COUNTER = 2**63 - 1
COUNTER_CEILING_DIGITS = 18
COUNTER_CEILING = 10**COUNTER_CEILING_DIGITS
"""Where a region's ledger stops counting, per promotion and incarnation: a counter at it or above takes
nothing more, one below it may grow by one more amount and still fit an int64 (the sum stays under
MAX_COUNTER). A power of ten so that Lua can tell a counter at the ceiling exactly, by the length of its
decimal string, where comparing it as a double would round (see docs/allocation.md). Here, in the kernel,
because the center honours it too: it grants no incarnation more than this in all, so every grant it
commits is one the region's ledger can apply (one it could not would be re-sent forever)."""
MAX_ID_BYTES = 128
MAX_LINES = 64
MAX_RENEWAL = 1000
"""Promotions one Renew reports. An agent reports every promotion it knows, 10,000 and more at a
midnight opening, in calls of at most this many: one call then holds the center's event loop for
milliseconds, not seconds, and its answer stays far below gRPC's 4 MiB (docs/message-sizes.md)."""
MAX_OPENINGS = 1000
"""Opening allotments one AcquireOpenings asks for; an agent asks for more in several calls."""
DEFAULT_PAGE, MAX_PAGE = 500, 5000
"""Items in one page of a listing: when the caller does not say, and at most."""
# Regions per promotion (and in the emergency switch): 1000 names of MAX_ID_BYTES keep a promotion
# near 130 KB, so every message that carries one stays far below gRPC's 4 MiB.
MAX_REGIONS = 1000
QUOTE_BYTES = 64
"""How much of a caller's value an error message repeats: enough to recognise it, never enough to
push the status past gRPC's 16 KB limit on metadata."""


FITTING_ID_CHARS = MAX_ID_BYTES // 4
"""UTF-8 takes at most 4 bytes a character: an id of at most this many characters fits, with no encoding."""


# The type checks below matter to callers in Python (the agent embedded in an order service): what comes
# over the wire is the message's type already. A float, bool or Decimal amount would otherwise reach the
# ledger, whose Redis script cannot store it.


def require_id(field: str, value: str) -> str:
    if not value:
        raise InvalidArgument(f"{field} is required")
    if not isinstance(value, str):
        raise InvalidArgument(f"{field} must be a string, got {type(value).__name__} {cut(repr(value), QUOTE_BYTES)}")
    return require_text(field, value)


def require_whole(field: str, value: int) -> int:
    """An int and nothing else: not a bool (an int to Python, but never a count) and not a float or Decimal."""
    if type(value) is not int:
        raise InvalidArgument(
            f"{field} must be a whole number of units (minor units for money), got {type(value).__name__} "
            f"{cut(repr(value), QUOTE_BYTES)}"
        )
    return value


def require_amount(field: str, value: int) -> int:
    if require_whole(field, value) <= 0:
        raise InvalidArgument(f"{field} must be positive, got {value}")
    if value > MAX_AMOUNT:
        raise InvalidArgument(f"{field} {value} is above the maximum {MAX_AMOUNT}")
    return value


def require_optional_amount(field: str, value: int) -> int:
    """An amount that may be left out: 0 (not stated) or an amount."""
    return value if require_whole(field, value) == 0 else require_amount(field, value)


def require_bounded_text(field: str, value: str, max_bytes: int) -> str:
    if len(value) * 4 <= max_bytes:
        return value  # UTF-8 takes at most 4 bytes a character: it fits, with no encoding on every order's ids
    size = len(value.encode())
    if size > max_bytes:
        raise InvalidArgument(f"{field} is {size} bytes; at most {max_bytes} are allowed")
    return value


def require_total(field: str, values: Iterable[int]) -> int:
    total = sum(values)
    if total > MAX_AMOUNT:
        raise InvalidArgument(f"{field} add up to {total}, above the maximum {MAX_AMOUNT}")
    return total


def require_counter(field: str, value: int) -> int:
    """A cumulative counter: zero is fine, negative or oversized is not."""
    if not 0 <= value <= MAX_COUNTER:
        raise InvalidArgument(f"{field} must be within 0..{MAX_COUNTER}, got {value}")
    return value


def clamp_demand(field: str, value: int) -> int:
    """A burn rate is a hint for sizing grants: one above the largest possible budget asks for
    nothing more than all of it, so it is capped there rather than refused (large orders are valid)."""
    return min(require_counter(field, value), MAX_AMOUNT)


def require_unique(field: str, values: Iterable[str]) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise InvalidArgument(f"{field} {quoted(value)} appears twice; merge it into one line")
        seen.add(value)


def quoted(value: str) -> str:
    """`value` as an error message repeats it: quoted, and cut to QUOTE_BYTES when longer."""
    encoded = value.encode()
    if len(encoded) <= QUOTE_BYTES:
        return repr(value)
    return f"{encoded[:QUOTE_BYTES].decode(errors='ignore')!r}... ({len(encoded)} bytes)"


def cut(text: str, max_bytes: int) -> str:
    """`text` when it fits `max_bytes` (UTF-8), else its first `max_bytes` and how long it was."""
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode(errors="ignore") + f"... (cut, {len(encoded)} bytes in all)"


CELL_SEPARATOR = "."
"""Between a region's name and a cell's in a cell's name (`eu.1`); see quota_common.cells."""


_REGION_NAME = re.compile(r"[A-Za-z0-9_-]+")
"""What a region's (or a cell's half) name is made of: what an agent's identity may carry (quota_common.identity),
so no name is accepted here that no agent could serve (" eu", "eu;us")."""


def require_region(field: str, name: str) -> str:
    """A region's or a cell's name: not empty, of _REGION_NAME's characters, and a cell's both halves not empty
    and only one dot. InvalidArgument saying what to write otherwise."""
    require_id(field, name)
    region, dot, cell = name.partition(CELL_SEPARATOR)
    if dot and (not region or not cell or CELL_SEPARATOR in cell):
        raise InvalidArgument(
            f"{field} {quoted(name)} is no region: a region's name has no dot, a cell's is <region>.<cell> "
            "with one dot (eu, eu.1)"
        )
    if not _REGION_NAME.fullmatch(region) or (dot and not _REGION_NAME.fullmatch(cell)):
        raise InvalidArgument(
            f"{field} {quoted(name)} is no region: a region's name is made of A-Z a-z 0-9 _ - (a cell's, "
            "<region>.<cell>), as an agent's identity carries it; no spaces, no lists"
        )
    return name


def require_known_case(field: str, name: str, known: Collection[str]) -> str:
    """`name`, unless it differs from a name in `known` only in case: "EU" where agents of "eu" run would
    freeze (or sell in) a region that has none, and say it did."""
    if name in known:
        return name
    for other in known:
        if other.casefold() == name.casefold():
            raise InvalidArgument(
                f"{field} {quoted(name)} is no region this center has seen; did you mean {quoted(other)}? "
                "Region names are case-sensitive"
            )
    return name


def require_regions(field: str, regions: Sequence[str]) -> tuple[str, ...]:
    """Region names: each a valid id, each once, at most MAX_REGIONS of them."""
    if len(regions) > MAX_REGIONS:
        raise InvalidArgument(
            f"{field} names {len(regions)} regions; at most {MAX_REGIONS} are allowed: "
            "split the budget into promotions for groups of regions"
        )
    for region in regions:
        require_region(field, region)
    require_unique(field, regions)
    return tuple(regions)


def require_text(field: str, value: str) -> str:
    """A string, possibly empty, that later checks and messages may repeat: bounded here."""
    return require_bounded_text(field, value, MAX_ID_BYTES)
