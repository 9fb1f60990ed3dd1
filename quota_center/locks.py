"""Locks by name that exist only while in use.

A caller may name any id, a promotion that does not exist included; a table keeping a lock
for every name ever seen would grow with every such call. Here a lock lives while someone
holds it or waits for it, and goes once the last of them is done.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass
class _Entry:
    lock: asyncio.Lock
    users: int = 0
    """Holders and waiters."""


class NamedLocks:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @contextlib.asynccontextmanager
    async def held(self, name: str) -> AsyncIterator[None]:
        entry = self._entries.setdefault(name, _Entry(asyncio.Lock()))
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[name]
