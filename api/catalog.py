"""Collection records as the search path reads them: from Redis, reused for a moment in each API process.

A search needs its collection's record (dim, metric, uid) before anything else, and under load that one
HGETALL per request was a sixth of the API's CPU. A record is reused for at most `collection_cache_s`. A stale
one cannot mix data: every job carries the collection's uid and a worker answers 404 for a uid that is gone,
so a search in the moment after a delete (from another API process) still gets its 404, one hop later. Adds of
vectors use it too (their jobs carry the uid the same way); changes and reads of the record itself (create,
delete, GET /v1/collections/{name}) always go to Redis.
"""

from __future__ import annotations

import asyncio
import functools
import time

import redis.asyncio as aredis

from common import collections
from common.collections import Collection


class CollectionCache:
    def __init__(self, r: aredis.Redis, ttl_s: float) -> None:
        self.r = r
        self.ttl_s = ttl_s
        self._records: dict[str, tuple[float, Collection]] = {}
        self._reading: dict[str, asyncio.Future[Collection]] = {}

    async def get(self, name: str) -> Collection:
        """The record (NotFound if there is none; a miss is never kept)."""
        now = time.monotonic()
        kept = self._records.get(name)
        if kept is not None and now < kept[0]:
            return kept[1]
        # One read per expiry, shared: every search in flight when the record expires would read it otherwise
        # (measured at c=64 with a 1 s TTL: up to a quarter of the API's time in the quick benchmark's round).
        reading = self._reading.get(name)
        if reading is None:
            reading = self._reading[name] = asyncio.ensure_future(collections.aget(self.r, name))
            reading.add_done_callback(functools.partial(self._read_done, name, now))
        return await asyncio.shield(reading)  # a canceled request must not cancel the others' read

    def _read_done(self, name: str, read_at: float, reading: asyncio.Future[Collection]) -> None:
        failed = reading.cancelled() or reading.exception() is not None  # a NotFound is seen by the waiters
        if self._reading.get(name) is not reading:
            return  # forgotten while it was read: the record may be older than the change
        del self._reading[name]
        if not failed and self.ttl_s > 0:
            self._records[name] = (read_at + self.ttl_s, reading.result())

    def forget(self, name: str) -> None:
        """This process changed the collection: its next search reads the record again."""
        self._records.pop(name, None)
        self._reading.pop(name, None)  # a read begun before the change is not kept
