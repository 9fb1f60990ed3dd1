"""Pages of protobuf messages: bounded by count and by bytes, resumed from an opaque token.

gRPC refuses a message above 4 MiB by default, so a page that only counts its items fails for
everyone once items are large. Pages stop at MAX_PAGE_BYTES, far below that, and say where to
resume; an item is bounded (at most MAX_REGIONS regions of MAX_ID_BYTES each), so one always fits.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from typing import TypeVar

from google.protobuf.message import Message

from quota_common.errors import InvalidArgument
from quota_common.validation import require_id

MAX_PAGE_BYTES = 1024 * 1024
# A repeated message field adds its tag and a length prefix (a varint of at most 5 bytes) per item.
_FRAMING_BYTES = 6

M = TypeVar("M", bound=Message)


def within_bytes(items: Iterable[M], budget: int) -> tuple[list[M], bool]:
    """The leading items whose encodings add up to at most `budget` bytes (the first one always,
    so a page never stalls), and whether any item was left out. Items after the cut are never
    built, so `items` may convert lazily."""
    kept: list[M] = []
    used = 0
    for item in items:
        size = item.ByteSize() + _FRAMING_BYTES
        if kept and used + size > budget:
            return kept, True
        kept.append(item)
        used += size
    return kept, False


def page_token(last_id: str) -> str:
    """The token that resumes a listing after `last_id`; opaque to callers."""
    return base64.urlsafe_b64encode(last_id.encode()).decode()


def after_page_token(token: str) -> str:
    """The id a listing resumes after ("" for the first page)."""
    if not token:
        return ""
    try:
        last_id = base64.urlsafe_b64decode(token.encode("ascii", "strict")).decode()
        return require_id("page_token", last_id)
    except (UnicodeError, binascii.Error, InvalidArgument):
        raise InvalidArgument(
            "page_token is not one this server issued: pass the next_page_token of the previous answer, "
            "or leave it empty for the first page"
        ) from None
