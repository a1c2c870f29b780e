"""Sealed segments in Redis: each collection's manifest, its seal and compaction locks, and when a seal is due.

Only this module writes `segments` (the manifest), `seal` (rows written since the newest seal, the pending seal
request and a seal owed by the lock's holder), `seallock` and `compactlock`. The segment files are
worker/segment_files.py's.

A collection is a list of immutable sealed segments, in log order, plus the log after `sealed_lsn` (which every
worker keeps in a growing segment of its own). The manifest is the commit point of a seal or a compaction: a hash
with `gen`, bumped by every change and compared by workers on their hot path, and `body`, the JSON of a
`Manifest`. It is only ever replaced by compare-and-set on `gen`.

Seals and compactions hold separate locks, so a seal (which lets the log be trimmed) never waits for a compaction
(which may rebuild a large HNSW graph for minutes). Each commits its change onto whatever the other committed
meanwhile: a seal appends one segment after the newest and moves `sealed_lsn`; a compaction replaces the oldest
segments, those it merged, which only it removes, and keeps every segment sealed since (`after_seal`,
`after_merge`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import redis
import redis.asyncio as aredis
from redis.client import Pipeline

from common import keys
from common.codec import ZERO_LSN, Lsn, lsn_at_least
from common.collections import Collection
from common.errors import Conflict, NotFound
from common.scripts import Lua


class ManifestChanged(Conflict):
    """Another seal or compaction committed first; the caller's view of the segments is stale."""


class Superseded(Conflict):
    """The change no longer applies to the manifest: what it would do is done. Two deliveries of one job can run
    at once (the first given back while it still ran: its heartbeat missed under load), and take the same lock."""


@dataclass(frozen=True)
class SegmentInfo:
    id: str
    first_lsn: Lsn  # covers the writes after this LSN ...
    lsn: Lsn  # ... up to and including this one
    rows: int
    deleted: int  # ids whose last write in the range is a delete: they bury rows of older segments
    bytes: int  # on disk, every file of the segment
    spec: str
    mapped: bool  # the writer could open it with IO_FLAG_MMAP_IFC (each worker logs its own fallback)
    built_at: float
    build_s: float

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> SegmentInfo:
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Manifest:
    gen: int = 0
    sealed_lsn: Lsn = ZERO_LSN  # every write up to here is in a segment; the log after it is the growing part
    segments: tuple[SegmentInfo, ...] = ()
    trained: str | None = None  # the trained, empty index every segment of a trained spec is built from
    trained_rows: int = 0  # how many rows it was trained on

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.segments)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.segments)

    def body(self) -> str:
        return json.dumps({"sealed_lsn": self.sealed_lsn, "segments": [asdict(s) for s in self.segments],
                           "trained": self.trained, "trained_rows": self.trained_rows})

    @classmethod
    def parse(cls, gen: Any, body: Any) -> Manifest:
        if not body:
            return cls(gen=int(gen or 0))
        raw = json.loads(body)
        return cls(gen=int(gen or 0), sealed_lsn=raw["sealed_lsn"],
                   segments=tuple(SegmentInfo.from_json(s) for s in raw["segments"]),
                   trained=raw.get("trained"), trained_rows=int(raw.get("trained_rows") or 0))

    def public(self) -> list[dict[str, Any]]:
        return [{"id": s.id, "rows": s.rows, "deleted": s.deleted, "bytes": s.bytes, "spec": s.spec,
                 "first_lsn": s.first_lsn, "lsn": s.lsn, "mapped": s.mapped, "built_at": s.built_at,
                 "build_s": s.build_s} for s in self.segments]


def new_segment_id() -> str:
    return f"{int(time.time() * 1000):013d}-{uuid.uuid4().hex[:8]}"


def data_keys(col: Collection) -> list[str]:
    return [keys.segments(col.name, col.uid), keys.seal_state(col.name, col.uid), keys.seal_lock(col.name, col.uid),
            keys.compact_lock(col.name, col.uid)]


def read(r: redis.Redis, col: Collection) -> Manifest:
    gen, body = r.hmget(keys.segments(col.name, col.uid), ["gen", "body"])
    return Manifest.parse(gen, body)


async def aread(r: aredis.Redis, col: Collection) -> Manifest:
    gen, body = await r.hmget(keys.segments(col.name, col.uid), ["gen", "body"])
    return Manifest.parse(gen, body)


def queue_read(pipe: Any, col: Collection) -> None:
    """Queue the read of the manifest and of the seal state (two replies; parse with parse_read)."""
    pipe.hmget(keys.segments(col.name, col.uid), ["gen", "body"])
    pipe.hgetall(keys.seal_state(col.name, col.uid))


def parse_read(manifest: Any, seal: Any) -> tuple[Manifest, SealState]:
    return Manifest.parse(*manifest), _seal_state(seal)


def queue_gen(pipe: Pipeline, col: Collection) -> None:
    """Queue the read of the manifest's generation (a worker's hot path: one field, no JSON)."""
    pipe.hget(keys.segments(col.name, col.uid), "gen")


def parse_gen(raw: Any) -> int:
    return int(raw or 0)


# The collection must still be this incarnation, and nobody may have committed since `expected` was read.
_REPLACE = Lua("""
if redis.call('HGET', KEYS[2], 'uid') ~= ARGV[3] then return -1 end
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
if gen ~= tonumber(ARGV[1]) then return -2 end
redis.call('HSET', KEYS[1], 'gen', gen + 1, 'body', ARGV[2])
return gen + 1
""")


def commit(r: redis.Redis, col: Collection, expected: Manifest, new: Manifest) -> Manifest:
    """Replace the manifest `expected` (as read) with `new`; returns `new` with its generation."""
    gen = int(_REPLACE(r, keys=[keys.segments(col.name, col.uid), keys.collection(col.name)],
                       args=[expected.gen, new.body(), col.uid]))
    if gen == -1:
        raise NotFound(f"collection {col.name!r} was deleted", "name")
    if gen == -2:
        raise ManifestChanged(f"the segments of {col.name!r} changed while this job ran", None)
    return replace(new, gen=gen)


COMMIT_TRIES = 8  # a seal and a compaction commit a few times a minute at most: a lost race is retried at once


def commit_onto(r: redis.Redis, col: Collection, change: Callable[[Manifest], Manifest]) -> Manifest:
    """Commit `change` applied to the manifest as it is now, read again if another job committed in between."""
    for attempt in range(COMMIT_TRIES):
        current = read(r, col)
        try:
            return commit(r, col, current, change(current))
        except ManifestChanged:
            if attempt == COMMIT_TRIES - 1:
                raise
    raise AssertionError("not reached")


def after_seal(current: Manifest, base: Manifest, segment: SegmentInfo | None, sealed_lsn: Lsn,
               trained: str | None, trained_rows: int) -> Manifest:
    """`current` with the seal built from `base` on top: `segment` (None: the sealed range held nothing to keep)
    appended, `sealed_lsn` moved. Seals hold the seal lock, so only a compaction can have committed since `base`."""
    if current.sealed_lsn != base.sealed_lsn:
        if lsn_at_least(current.sealed_lsn, sealed_lsn):
            raise Superseded(f"another seal committed up to {current.sealed_lsn} while this one ran", None)
        raise ManifestChanged(f"another seal committed up to {current.sealed_lsn} while this one ran", None)
    return replace(current, sealed_lsn=sealed_lsn, trained=trained, trained_rows=trained_rows,
                   segments=current.segments + ((segment,) if segment else ()))


def after_merge(current: Manifest, base: Manifest, merged: SegmentInfo | None) -> Manifest:
    """`current` with the segments of `base` (all merged into `merged`; None: no live row left) replaced. Seals
    only append, so they come after the merged ones, in log order, and stay."""
    n = len(base.segments)
    if current.segments[:n] != base.segments:
        raise Superseded("the segments this compaction merged were merged by another meanwhile", None)
    return replace(current, segments=((merged,) if merged else ()) + current.segments[n:])


# Held by another owner: refused (a seal refused leaves its request to the holder: `again`, see settled). Held by
# this owner (a job redelivered after its worker was killed while holding it): taken over, so a crash does not
# block seals of the collection until the lock expires.
_LOCK = Lua("""
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('EXPIRE', KEYS[1], ARGV[2]) return 1 end
if ARGV[3] == '1' then redis.call('HSET', KEYS[2], 'again', 1) end
return 0
""")
_UNLOCK = Lua("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0")


LockKind = Literal["seal", "compact"]


def lock_key(col: Collection, kind: LockKind) -> str:
    return keys.seal_lock(col.name, col.uid) if kind == "seal" else keys.compact_lock(col.name, col.uid)


def lock(r: redis.Redis, col: Collection, ttl_s: int, owner: str, defer: bool = False,
         kind: LockKind = "seal") -> bool:
    """One seal, and one compaction, per collection at a time. `owner` (the job id) lets a redelivery of the same
    job take back the lock its killed first delivery held. `defer` (a seal): refused, it leaves its request to the
    holder, in the same step, so that the holder's `settled` requests the seal again."""
    return bool(_LOCK(r, keys=[lock_key(col, kind), keys.seal_state(col.name, col.uid)],
                      args=[owner, ttl_s, "1" if defer else "0"]))


def unlock(r: redis.Redis, col: Collection, owner: str, kind: LockKind = "seal") -> None:
    _UNLOCK(r, keys=[lock_key(col, kind)], args=[owner])


# Count the rows written since the newest seal; once they pass the threshold, one caller (and only one until the
# request is settled or goes stale) is told to enqueue a seal; a caller past the threshold while a request is
# pending marks it `again` (the pending seal may be running already and miss its rows). Only while the collection
# is this incarnation.
_NOTE = Lua("""
if redis.call('HGET', KEYS[2], 'uid') ~= ARGV[5] then return 0 end
local rows = redis.call('HINCRBY', KEYS[1], 'rows', ARGV[1])
if rows < tonumber(ARGV[2]) then return 0 end
local at = redis.call('HGET', KEYS[1], 'requested_at')
if at and tonumber(ARGV[3]) - tonumber(at) < tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], 'again', 1)
  return 0
end
redis.call('HSET', KEYS[1], 'requested_at', ARGV[3])
return 1
""")


def note_writes(r: redis.Redis, col: Collection, rows: int, seal_at_rows: int, stale_s: float) -> bool:
    """Add `rows` to the growing part's count; True if the caller should enqueue a seal now. A request older than
    `stale_s` (its job lost with its worker) no longer holds the place."""
    return bool(_NOTE(r, keys=[keys.seal_state(col.name, col.uid), keys.collection(col.name)],
                      args=[rows, seal_at_rows, f"{time.time():.3f}", stale_s, col.uid]))


_SEALED = Lua("""
if redis.call('HGET', KEYS[2], 'uid') ~= ARGV[1] then return 0 end
local left = tonumber(redis.call('HGET', KEYS[1], 'rows') or '0') - tonumber(ARGV[2])
if left < 0 then left = 0 end
redis.call('HSET', KEYS[1], 'rows', left)
return 1
""")


def sealed(r: redis.Redis, col: Collection, covered_rows: int) -> None:
    """A seal covering `covered_rows` written rows committed: they are no longer growing. Redelivered writes are
    counted twice by note_writes, so the count is clamped at 0 rather than trusted to reach it exactly. (When and
    how long each seal took is in the manifest, per segment.)"""
    _SEALED(r, keys=[keys.seal_state(col.name, col.uid), keys.collection(col.name)],
            args=[col.uid, covered_rows])


_SETTLE = Lua("""
local again = redis.call('HGET', KEYS[1], 'again')
redis.call('HDEL', KEYS[1], 'requested_at', 'again')
if not again then return 0 end
redis.call('HSET', KEYS[1], 'requested_at', ARGV[1])
return 1
""")


def settled(r: redis.Redis, col: Collection) -> bool:
    """A seal that held the lock is done: the next write past the threshold may request a seal. True if a seal is
    due that could not be requested or run meanwhile (writes past the threshold while a request was pending, or a
    seal refused the lock): it is requested in the same step, and the caller enqueues it."""
    return bool(_SETTLE(r, keys=[keys.seal_state(col.name, col.uid)], args=[f"{time.time():.3f}"]))


@dataclass(frozen=True)
class SealState:
    growing_rows: int = 0


async def astate(r: aredis.Redis, col: Collection) -> SealState:
    return _seal_state(await r.hgetall(keys.seal_state(col.name, col.uid)))


def _seal_state(raw: dict[Any, Any]) -> SealState:
    d = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
         for k, v in raw.items()}
    return SealState(growing_rows=int(d.get("rows") or 0))
