"""What the cluster looks like right now, read from Redis: collections, live workers, queues, job counts.

Shared by `GET /metrics` and `GET /v1/workers`, computed on request (nothing is cached between scrapes).

Lag. A worker copy's lag is measured in write time: the time of the newest WAL entry minus the time of the
newest entry the copy has applied (an LSN is `<ms>-<seq>`, the millisecond Redis appended it), 0 when the
copy has applied the newest entry. A copy that has applied nothing counts from the collection's creation.
So `lag_s` = 30 means: the copy misses the last 30 seconds of writes. It is O(1) per copy (no stream scan);
`caught_up` tells apart the rare copy that is behind within the same millisecond. Workers replay before a
strong search, so a copy of a collection nobody searches can stay behind for as long as nobody asks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aredis
from kombu.transport.redis import PRIORITY_STEPS, Channel

from common import collections, heartbeat, keys, segments, stats, wal
from common.codec import ZERO_LSN, Lsn, lsn_key
from common.collections import Collection
from common.settings import Settings


@dataclass(frozen=True)
class CollectionState:
    col: Collection
    count: int
    last_lsn: Lsn
    sealed_rows: int = 0
    growing_rows: int = 0
    segments: int = 0


@dataclass
class Snapshot:
    collections: dict[str, CollectionState]
    workers: list[dict[str, Any]]  # heartbeat payloads (common/heartbeat.py, worker/lifecycle.py)
    queues: dict[str, int]
    unacked: int
    jobs: list[stats.JobCount] = field(default_factory=list)
    taken_at: float = field(default_factory=time.time)


def lsn_seconds(lsn: Lsn | None) -> float:
    """The wall-clock time (s) Redis appended the entry `lsn`; 0 for the empty log."""
    if not lsn or lsn == ZERO_LSN:
        return 0.0
    return lsn_key(lsn)[0] / 1000.0


def lag_seconds(applied: Lsn | None, state: CollectionState) -> float:
    if state.last_lsn == ZERO_LSN or applied == state.last_lsn:
        return 0.0
    since = lsn_seconds(applied) if applied and applied != ZERO_LSN else state.col.created_at
    return round(max(0.0, lsn_seconds(state.last_lsn) - since), 3)


def caught_up(applied: Lsn | None, state: CollectionState) -> bool:
    return lsn_key(applied or ZERO_LSN) >= lsn_key(state.last_lsn)


async def queue_depth(r: aredis.Redis, queue: str) -> int:
    """Messages waiting in a Celery queue: kombu's Redis transport keeps one list per priority step
    (`queue`, `queue\\x06\\x163`, ...). Messages taken by a worker and not yet acked are not in them."""
    names = [queue if step == 0 else f"{queue}{Channel.sep}{step}" for step in PRIORITY_STEPS]
    async with r.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.llen(name)
        return sum(int(n) for n in await pipe.execute())


async def unacked(r: aredis.Redis) -> int:
    """Messages delivered to workers and not acked yet (running or reserved), all queues together."""
    return int(await r.hlen(Channel.unacked_key))


async def collection_states(r: aredis.Redis) -> dict[str, CollectionState]:
    """Every collection's figures in three round trips, however many collections (a scrape must not cost Redis
    a few calls per collection)."""
    names = await collections.anames(r)
    async with r.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(keys.collection(name))
        records = await pipe.execute()
    cols = [Collection.from_redis(raw) for raw in records if raw]  # the empty ones were deleted meanwhile
    stats = await wal.astats_many(r, cols)
    async with r.pipeline(transaction=False) as pipe:
        for col in cols:
            segments.queue_read(pipe, col)
        replies = await pipe.execute(raise_on_error=False)
    out: dict[str, CollectionState] = {}
    for i, (col, (count, last)) in enumerate(zip(cols, stats, strict=True)):
        manifest, seal = segments.parse_read(*replies[2 * i: 2 * i + 2])
        out[col.name] = CollectionState(col, count, last, manifest.rows, seal.growing_rows, len(manifest.segments))
    return out


async def take(r: aredis.Redis, settings: Settings, *, with_jobs: bool = True) -> Snapshot:
    return Snapshot(
        collections=await collection_states(r),
        workers=await heartbeat.alive(r, settings.heartbeat_ttl_s),
        queues={settings.queue: await queue_depth(r, settings.queue)},
        unacked=await unacked(r),
        jobs=await stats.ajob_counts(r) if with_jobs else [],
    )


def copies(snap: Snapshot, worker: dict[str, Any]) -> list[dict[str, Any]]:
    """A worker's copies of the collections that still exist (same incarnation), with their lag."""
    out = []
    for name, info in sorted((worker.get("collections") or {}).items()):
        state = snap.collections.get(name)
        if state is None or info.get("uid") != state.col.uid:
            continue  # a copy of a deleted collection, dropped by the worker's next sweep
        applied = info.get("applied_lsn") or ZERO_LSN
        out.append({"name": name, "count": info.get("count"), "applied_lsn": applied,
                    "lag_s": lag_seconds(applied, state), "caught_up": caught_up(applied, state),
                    "index_bytes": info.get("index_bytes"), "mapped_bytes": info.get("mapped_bytes"),
                    "sealed_rows": info.get("sealed_rows"), "growing_rows": info.get("growing_rows"),
                    "segments": info.get("segments"), "load_s": info.get("load_s")})
    return out


def worker_views(snap: Snapshot, allows: Any = None) -> list[dict[str, Any]]:
    """`GET /v1/workers` entries; `allows(name)` hides collections a key may not see."""
    views = []
    for w in sorted(snap.workers, key=lambda w: str(w.get("worker"))):
        started = float(w.get("started_at") or 0) or None
        cols = [c for c in copies(snap, w) if allows is None or allows(c["name"])]
        last = w.get("last_job")
        if isinstance(last, dict) and allows is not None and last.get("collection") and \
                not allows(last["collection"]):
            last = {k: v for k, v in last.items() if k not in ("job_id", "collection")}
        views.append({
            "worker": w.get("worker"), "host": w.get("host"), "pid": w.get("pid"),
            "started_at": started, "uptime_s": round(snap.taken_at - started, 3) if started else None,
            "beat_at": w.get("beat_at"), "jobs_done": w.get("jobs_done", 0), "last_job": last,
            "memory": w.get("memory"),
            "collections": cols,
        })
    return views
