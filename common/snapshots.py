"""Snapshot bookkeeping in Redis: the per-collection lock and the last snapshot's LSN. Only this module
writes `snaplock` and `snap` keys; the files themselves are worker/snapshots.py's."""

from __future__ import annotations

import time
import uuid

import redis
import redis.asyncio as aredis

from common import keys
from common.codec import ZERO_LSN, Lsn
from common.collections import Collection


def data_keys(col: Collection) -> list[str]:
    return [keys.snapshot_lock(col.name, col.uid), keys.snapshot_state(col.name, col.uid)]


def lock(r: redis.Redis, col: Collection, ttl_s: int) -> str | None:
    """One snapshot per collection at a time; returns the token to unlock with, or None if held."""
    token = uuid.uuid4().hex
    return token if r.set(keys.snapshot_lock(col.name, col.uid), token, nx=True, ex=ttl_s) else None


_UNLOCK = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def unlock(r: redis.Redis, col: Collection, token: str) -> None:
    r.eval(_UNLOCK, 1, keys.snapshot_lock(col.name, col.uid), token)


def record(r: redis.Redis, col: Collection, lsn: Lsn, count: int, seconds: float) -> None:
    r.hset(keys.snapshot_state(col.name, col.uid),
           mapping={"lsn": lsn, "count": count, "at": time.time(), "seconds": round(seconds, 3)})


def last_lsn(r: redis.Redis, col: Collection) -> Lsn:
    lsn = r.hget(keys.snapshot_state(col.name, col.uid), "lsn")
    return lsn.decode() if lsn else ZERO_LSN


async def alast_lsn(r: aredis.Redis, col: Collection) -> Lsn | None:
    lsn = await r.hget(keys.snapshot_state(col.name, col.uid), "lsn")
    return lsn.decode() if lsn else None
