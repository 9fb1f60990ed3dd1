"""Input limits shared by every RPC, checked at the servicer edge before anything changes."""

from __future__ import annotations

from collections.abc import Iterable

from quota_center.errors import InvalidArgument

# Exact as an int64, in JSON and as a Lua (double) number in Redis scripts.
MAX_AMOUNT = 2**53 - 1
MAX_ID_BYTES = 128
MAX_LINES = 64


def require_id(field: str, value: str) -> str:
    size = len(value.encode())
    if size == 0:
        raise InvalidArgument(f"{field} is required")
    if size > MAX_ID_BYTES:
        raise InvalidArgument(f"{field} is {size} bytes; at most {MAX_ID_BYTES} are allowed")
    return value


def require_amount(field: str, value: int) -> int:
    if value <= 0:
        raise InvalidArgument(f"{field} must be positive, got {value}")
    if value > MAX_AMOUNT:
        raise InvalidArgument(f"{field} {value} is above the maximum {MAX_AMOUNT}")
    return value


def require_total(field: str, values: Iterable[int]) -> int:
    total = sum(values)
    if total > MAX_AMOUNT:
        raise InvalidArgument(f"{field} add up to {total}, above the maximum {MAX_AMOUNT}")
    return total


def require_counter(field: str, value: int) -> int:
    """A cumulative counter: zero is fine, negative or oversized is not."""
    if not 0 <= value <= MAX_AMOUNT:
        raise InvalidArgument(f"{field} must be within 0..{MAX_AMOUNT}, got {value}")
    return value


def require_unique(field: str, values: Iterable[str]) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise InvalidArgument(f"{field} {value!r} appears twice; merge it into one line")
        seen.add(value)
