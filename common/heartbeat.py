"""Worker heartbeats: `vecq:hb:{worker}` (JSON, with a TTL) and the `vecq:workers` sorted set.

Written only by worker children (see worker/lifecycle.py); read by /readyz, /v1/workers and `vecq status`.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import redis
import redis.asyncio as aredis

from common import keys


def worker_id(host: str, pid: int) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{host}-{pid}")[:64]


def beat(r: redis.Redis, wid: str, info: dict[str, Any], ttl_s: float) -> None:
    now = time.time()
    with r.pipeline(transaction=False) as pipe:
        pipe.set(keys.heartbeat(wid), json.dumps({**info, "worker": wid, "beat_at": now}), px=int(ttl_s * 1000))
        pipe.zadd(keys.WORKERS, {wid: now})
        pipe.execute()


def stop(r: redis.Redis, wid: str) -> None:
    with r.pipeline(transaction=False) as pipe:
        pipe.delete(keys.heartbeat(wid))
        pipe.zrem(keys.WORKERS, wid)
        pipe.execute()


def alive_ids(r: redis.Redis, ttl_s: float) -> set[str]:
    """The ids of the workers whose last beat is younger than the TTL."""
    return {w.decode() if isinstance(w, bytes) else str(w)
            for w in r.zrangebyscore(keys.WORKERS, time.time() - ttl_s, "+inf")}


async def alive(r: aredis.Redis, ttl_s: float) -> list[dict[str, Any]]:
    """Workers whose last beat is younger than the TTL; older entries are pruned on the way."""
    cutoff = time.time() - ttl_s
    await r.zremrangebyscore(keys.WORKERS, "-inf", cutoff)
    wids = [w.decode() if isinstance(w, bytes) else str(w) for w in await r.zrangebyscore(keys.WORKERS, cutoff, "+inf")]
    if not wids:
        return []
    raw = await r.mget([keys.heartbeat(w) for w in wids])
    return [json.loads(x) for x in raw if x]
