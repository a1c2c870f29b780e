"""Collection records as the search path reads them: from Redis, reused for a moment in each API process.

A search needs its collection's record (dim, metric, uid) before anything else, and under load that one
HGETALL per request was a sixth of the API's CPU. A record is reused for at most `collection_cache_s`. A stale
one cannot mix data: every job carries the collection's uid and a worker answers 404 for a uid that is gone,
so a search in the moment after a delete (from another API process) still gets its 404, one hop later. Adds of
vectors use it too (their jobs carry the uid the same way); changes and reads of the record itself (create,
delete, GET /v1/collections/{name}) always go to Redis.
"""

from __future__ import annotations

import time

import redis.asyncio as aredis

from common import collections
from common.collections import Collection


class CollectionCache:
    def __init__(self, r: aredis.Redis, ttl_s: float) -> None:
        self.r = r
        self.ttl_s = ttl_s
        self._records: dict[str, tuple[float, Collection]] = {}

    async def get(self, name: str) -> Collection:
        """The record (NotFound if there is none; a miss is never kept)."""
        now = time.monotonic()
        kept = self._records.get(name)
        if kept is not None and now < kept[0]:
            return kept[1]
        col = await collections.aget(self.r, name)
        if self.ttl_s > 0:
            self._records[name] = (now + self.ttl_s, col)
        return col

    def forget(self, name: str) -> None:
        """This process changed the collection: its next search reads the record again."""
        self._records.pop(name, None)
