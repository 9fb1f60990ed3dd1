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

Two groups' copies may hold the same promotion: one moved from one group to another stays in its old
group's copy, and a full re-save (`CatalogSync`) writes every entry the agent holds. They compare by
revision like any two entries (`PromotionCache.put`): a group taking a promotion over gives it a revision
above the one it had (quota_center/center_shards.py), so the old group's entry never wins.
"""

from __future__ import annotations

import json

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster

from quota_common.errors import Unavailable
from quota_common.model import EmergencyFreeze, promotion_document, promotion_from_document
from quota_common.shards import DEFAULT_GROUP
from region_agent.cache import CatalogSnapshot
from region_agent.ledger.redis_acl import region_tag

_SAVE = """
local promotions, revisions, emergency, cursor_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
for i = 5, #ARGV, 3 do
  local known = tonumber(redis.call('HGET', revisions, ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) > known then
    redis.call('HSET', promotions, ARGV[i], ARGV[i + 2])
    redis.call('HSET', revisions, ARGV[i], ARGV[i + 1])
  end
end
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


class RedisCacheTier:
    def __init__(self, client: redis.Redis | RedisCluster, region: str) -> None:
        self._tag = f"{region_tag(region)}:catalog"
        self._redis = client
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
        args: list[str | int] = [since, changes.revision, json.dumps(changes.emergency.to_document())]
        args.append(changes.emergency.revision)
        for promotion in changes.promotions:
            args += [promotion.id, promotion.revision, json.dumps(promotion_document(promotion))]
        try:
            return bool(await self._save(keys=self._keys(group), args=args))
        except (redis.ConnectionError, redis.TimeoutError) as outage:
            raise Unavailable(f"the region's Redis is unreachable ({outage})") from outage
