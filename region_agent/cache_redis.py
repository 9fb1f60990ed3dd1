"""The promotion cache's regional tier in the region's Redis, next to its ledger.

Agents of a region write every change they learn here, so one that starts while the center is
away still knows the region's promotions. Each center group's catalog has a copy of its own, since a
group's catalog revisions are its own sequence: its cursor is never compared with another group's. Keys
(same hash tag as the ledger); the default group's are those of a deployment of one group, so a region's
copy written before agents followed several groups is still read, and agents of either release keep it:

    {quota:R}:catalog:promotions   hash: promotion id -> JSON document
    {quota:R}:catalog:revisions    hash: promotion id -> its revision (newer writes win)
    {quota:R}:catalog:emergency    hash: revision, document (the emergency switch)
    {quota:R}:catalog:cursor       every change up to this revision is stored

and for any other group G the same four under `{quota:R}:catalog:group:G:`.

An agent writes to a group's copy only that group's promotions (a page of its catalog, or after a failed
write the group's part of the cache, `PromotionCache.snapshot`). A promotion that moved to another group
still stays in its former group's copy (nothing is deleted); the two entries compare by revision like any
two (`PromotionCache.put`): the target group gives a moved promotion a revision above its old one, so the
former group's entry never wins.

A save is one script call per chunk of at most `CHUNK_ENTRIES` entries (and about `CHUNK_BYTES`), so a
large one never blocks the region's Redis, which also serves the ledger, for long. Only the last chunk
checks and moves the cursor, once every chunk before it is stored: a reader in between may see entries
past the cursor (its catalog sends them again), never a cursor past what is stored. Another agent of the
region saving meanwhile also moves the cursor only once it stored everything up to where it moves it, so
whichever saver moves it last, every change up to it is stored; a save cut off midway leaves the cursor
where it was, and the next one, finding it behind, writes the group's whole part of the cache.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster

from quota_common.errors import Unavailable
from quota_common.model import EmergencyFreeze, Promotion, promotion_document, promotion_from_document
from quota_common.shards import DEFAULT_GROUP
from region_agent.cache import CatalogSnapshot
from region_agent.ledger.redis_acl import region_tag

CHUNK_ENTRIES = 500
"""Entries written by one script call at most."""
CHUNK_BYTES = 256 * 1024
"""Documents' bytes written by one script call at most (unless one document alone is larger)."""

_PUT = """
for i = {first}, #ARGV, 3 do
  local known = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) > known then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  end
end
"""
"""Stores the entries in ARGV from `first` on (id, revision, document): a newer revision wins."""

_SAVE = (
    _PUT.format(first=5)
    + """
local emergency, cursor_key = KEYS[3], KEYS[4]
if tonumber(ARGV[4]) > tonumber(redis.call('HGET', emergency, 'revision') or '0') then
  redis.call('HSET', emergency, 'revision', ARGV[4], 'document', ARGV[3])
end
local cursor = tonumber(redis.call('GET', cursor_key) or '0')
if cursor < tonumber(ARGV[1]) then
  return 0
end
if tonumber(ARGV[2]) > cursor then
  redis.call('SET', cursor_key, ARGV[2])
end
return 1
"""
)
"""The last chunk: its entries, the switch, and the cursor (ARGV: since, revision, switch, its revision)."""


def _chunks(promotions: Iterable[Promotion]) -> Iterator[list[str | int]]:
    """The promotions as script arguments, in chunks of at most `CHUNK_ENTRIES` and about `CHUNK_BYTES`; always
    at least one, since the cursor moves with the last (empty when there are no promotions)."""
    chunk: list[str | int] = []
    size = 0
    for promotion in promotions:
        document = json.dumps(promotion_document(promotion))
        if chunk and (len(chunk) // 3 == CHUNK_ENTRIES or size + len(document) > CHUNK_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk += [promotion.id, promotion.revision, document]
        size += len(document)
    yield chunk


class RedisCacheTier:
    def __init__(self, client: redis.Redis | RedisCluster, region: str) -> None:
        self._tag = f"{region_tag(region)}:catalog"
        self._redis = client
        self._put = client.register_script(_PUT.format(first=1))
        self._save = client.register_script(_SAVE)

    def _keys(self, group: str) -> list[str]:
        prefix = self._tag if group == DEFAULT_GROUP else f"{self._tag}:group:{group}"
        return [f"{prefix}:promotions", f"{prefix}:revisions", f"{prefix}:emergency", f"{prefix}:cursor"]

    async def load(self, group: str = DEFAULT_GROUP) -> CatalogSnapshot:
        promotions, _, emergency, cursor_key = self._keys(group)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hvals(promotions)
                pipe.hget(emergency, "document")
                pipe.get(cursor_key)
                documents, switch, cursor = await pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as outage:
            raise Unavailable(f"the region's Redis is unreachable ({outage})") from outage
        return CatalogSnapshot(
            [promotion_from_document(json.loads(document)) for document in documents],
            EmergencyFreeze.from_document(json.loads(switch)) if switch else EmergencyFreeze(),
            int(cursor or 0),
        )

    async def save(self, changes: CatalogSnapshot, since: int, group: str = DEFAULT_GROUP) -> bool:
        keys = self._keys(group)
        *chunks, last = _chunks(changes.promotions)
        switch = changes.emergency
        try:
            for chunk in chunks:
                await self._put(keys=keys[:2], args=chunk)
            args = [since, changes.revision, json.dumps(switch.to_document()), switch.revision, *last]
            return bool(await self._save(keys=keys, args=args))
        except (redis.ConnectionError, redis.TimeoutError) as outage:
            raise Unavailable(f"the region's Redis is unreachable ({outage})") from outage
