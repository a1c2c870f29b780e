"""Snapshot bookkeeping in Redis: the per-collection lock, the last snapshot's LSN, and whether one is due or
already requested. Only this module writes `snaplock` and `snap` keys; the files themselves are
worker/snapshot_files.py's."""

from __future__ import annotations

import time
import uuid

import redis
import redis.asyncio as aredis

from common import keys
from common.codec import Lsn
from common.collections import Collection


def data_keys(col: Collection) -> list[str]:
    return [keys.snapshot_lock(col.name, col.uid), keys.snapshot_state(col.name, col.uid)]


# Held by another owner: refused. Held by this owner (a job redelivered after its worker was killed while
# holding it): taken over, so a crash does not block snapshots of the collection until the lock expires.
_LOCK = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('EXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
"""


def lock(r: redis.Redis, col: Collection, ttl_s: int, owner: str | None = None) -> str | None:
    """One snapshot per collection at a time; returns the token to unlock with, or None if held. `owner`
    (the job id) lets a redelivery of the same job take back the lock its killed first delivery held."""
    token = owner or uuid.uuid4().hex
    return token if r.eval(_LOCK, 1, keys.snapshot_lock(col.name, col.uid), token, ttl_s) else None


_UNLOCK = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def unlock(r: redis.Redis, col: Collection, token: str) -> None:
    r.eval(_UNLOCK, 1, keys.snapshot_lock(col.name, col.uid), token)


def due(r: redis.Redis, col: Collection, every_entries: int, every_bytes: int) -> bool:
    """Whether the WAL written since the last snapshot passes a threshold. The stream is trimmed to the last
    snapshot, so what it holds now is what a new snapshot would cover."""
    wal_key = keys.wal(col.name, col.uid)
    with r.pipeline(transaction=False) as pipe:
        pipe.xlen(wal_key)
        pipe.memory_usage(wal_key, samples=0)  # exact; a stream costs one step per node
        entries, size = pipe.execute(raise_on_error=False)
    if isinstance(size, Exception):  # a Redis that refuses MEMORY USAGE: the count threshold still holds
        size = 0
    return int(entries) >= every_entries or int(size or 0) >= every_bytes


# Only while the collection is still this incarnation: a request must not resurrect a deleted one's keys.
_REQUEST = """
if redis.call('HGET', KEYS[2], 'uid') ~= ARGV[3] then return 0 end
local at = redis.call('HGET', KEYS[1], 'requested_at')
if at and tonumber(ARGV[1]) - tonumber(at) < tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'requested_at', ARGV[1])
return 1
"""


def request(r: redis.Redis, col: Collection, stale_s: float) -> bool:
    """True if the caller should enqueue a snapshot job: at most one is queued or running per collection, so
    a burst of writes past the threshold makes one job, not one per write. A request older than `stale_s`
    (its job lost with its worker) no longer holds the place."""
    return bool(r.eval(_REQUEST, 2, keys.snapshot_state(col.name, col.uid), keys.collection(col.name),
                       f"{time.time():.3f}", stale_s, col.uid))


_RECORD = """
if redis.call('HGET', KEYS[2], 'uid') ~= ARGV[5] then return 0 end
redis.call('HSET', KEYS[1], 'lsn', ARGV[1], 'count', ARGV[2], 'at', ARGV[3], 'seconds', ARGV[4])
return 1
"""


def record(r: redis.Redis, col: Collection, lsn: Lsn, count: int, seconds: float) -> None:
    r.eval(_RECORD, 2, keys.snapshot_state(col.name, col.uid), keys.collection(col.name), lsn, count,
           f"{time.time():.3f}", round(seconds, 3), col.uid)


def settled(r: redis.Redis, col: Collection) -> None:
    """The requested snapshot ran (or gave up): the next write past the threshold may request another."""
    r.hdel(keys.snapshot_state(col.name, col.uid), "requested_at")


async def alast_lsn(r: aredis.Redis, col: Collection) -> Lsn | None:
    lsn = await r.hget(keys.snapshot_state(col.name, col.uid), "lsn")
    return lsn.decode() if lsn else None
