"""The write-ahead log: one Redis Stream per collection, and the Redis-side state written with it.

Owns, per collection (name, uid): the stream `wal`, the `docs` hash (live id -> metadata JSON, so HLEN is the
live count), the `dedup` hash (job:chunk -> LSN) and the `trim` mark. Every write is one Lua script, so the
stream entry and the docs change land together or not at all, and a redelivered job finds its LSN in `dedup`
instead of appending twice. The stream entry id is the write's LSN.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import redis
import redis.asyncio as aredis

from common import keys
from common.codec import ZERO_LSN, Lsn, lsn_at_least
from common.collections import Collection
from common.errors import NotFound


@dataclass(frozen=True)
class Entry:
    lsn: Lsn
    op: str  # "add" | "del"
    ids: list[str]
    vectors: bytes  # float32 rows for "add", empty for "del"
    job: str


_APPEND_ADD = """
if redis.call('HGET', KEYS[4], 'uid') ~= ARGV[2] then return {'gone', ''} end
local seen = redis.call('HGET', KEYS[3], ARGV[1])
if seen then return {'dup', seen} end
local ids = cjson.decode(ARGV[3])
local lsn = redis.call('XADD', KEYS[1], '*', 'op', 'add', 'job', ARGV[1], 'ids', ARGV[3], 'vec', ARGV[4])
for i, id in ipairs(ids) do redis.call('HSET', KEYS[2], id, ARGV[4 + i]) end
redis.call('HSET', KEYS[3], ARGV[1], lsn)
return {'ok', lsn}
"""

_APPEND_DELETE = """
if redis.call('HGET', KEYS[4], 'uid') ~= ARGV[2] then return {'gone', ''} end
local seen = redis.call('HGET', KEYS[3], ARGV[1])
if seen then return {'dup', seen} end
local present = {}
for _, id in ipairs(cjson.decode(ARGV[3])) do
  if redis.call('HDEL', KEYS[2], id) == 1 then present[#present + 1] = id end
end
local lsn
if #present > 0 then
  lsn = redis.call('XADD', KEYS[1], '*', 'op', 'del', 'job', ARGV[1], 'ids', cjson.encode(present), 'vec', '')
else
  local info = redis.pcall('XINFO', 'STREAM', KEYS[1])
  lsn = (type(info) == 'table' and info[8]) or '0-0'
end
redis.call('HSET', KEYS[3], ARGV[1], lsn)
return {'ok', lsn, tostring(#present)}
"""


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _keys(col: Collection) -> list[str]:
    return [keys.wal(col.name, col.uid), keys.docs(col.name, col.uid), keys.dedup(col.name, col.uid),
            keys.collection(col.name)]


def data_keys(col: Collection) -> list[str]:
    return [keys.wal(col.name, col.uid), keys.docs(col.name, col.uid), keys.dedup(col.name, col.uid),
            keys.trim(col.name, col.uid)]


def append_add(r: redis.Redis, col: Collection, write_id: str, ids: Sequence[str], vectors: bytes,
               metadata: Sequence[str | None]) -> Lsn:
    """Append one chunk of upserts. `write_id` (job:chunk) makes the append happen at most once."""
    reply = r.eval(_APPEND_ADD, 4, *_keys(col), write_id, col.uid, json.dumps(list(ids)), vectors,
                   *[m if m is not None else "" for m in metadata])
    if _s(reply[0]) == "gone":
        raise NotFound(f"collection {col.name!r} was deleted", "name")
    return _s(reply[1])


def append_delete(r: redis.Redis, col: Collection, write_id: str, ids: Sequence[str]) -> tuple[Lsn, int]:
    """Tombstone ids. Returns the LSN and how many of them existed (a repeated job reports 0 found)."""
    reply = r.eval(_APPEND_DELETE, 4, *_keys(col), write_id, col.uid, json.dumps(list(ids)))
    if _s(reply[0]) == "gone":
        raise NotFound(f"collection {col.name!r} was deleted", "name")
    return _s(reply[1]), int(reply[2]) if len(reply) > 2 else 0


def read_after(r: redis.Redis, col: Collection, after: Lsn, count: int = 64) -> tuple[Lsn, list[Entry]]:
    """Entries after `after` and the trim mark, in one round trip. Callers reload if `after` < trim mark.
    MULTI/EXEC: a trim landing between the two reads would show the old mark with entries already gone."""
    with r.pipeline(transaction=True) as pipe:
        pipe.get(keys.trim(col.name, col.uid))
        pipe.xrange(keys.wal(col.name, col.uid), min=f"({after}" if after != ZERO_LSN else "-", count=count)
        trimmed, raw = pipe.execute()
    entries = [
        Entry(lsn=_s(lsn), op=_s(f[b"op"]), ids=json.loads(f[b"ids"]), vectors=f[b"vec"], job=_s(f[b"job"]))
        for lsn, f in raw
    ]
    return (_s(trimmed) if trimmed else ZERO_LSN), entries


def needs_reload(applied: Lsn, trimmed_to: Lsn) -> bool:
    """Entries before the trim mark are gone: a copy that applied less than it must start from a snapshot."""
    return trimmed_to != ZERO_LSN and not lsn_at_least(applied, trimmed_to)


def last_lsn(r: redis.Redis, col: Collection) -> Lsn:
    try:
        info = r.xinfo_stream(keys.wal(col.name, col.uid))
    except redis.ResponseError:  # no stream yet
        return ZERO_LSN
    return _s(info["last-generated-id"])


def count(r: redis.Redis, col: Collection) -> int:
    return int(r.hlen(keys.docs(col.name, col.uid)))


def metadata(r: redis.Redis, col: Collection, ids: Sequence[str]) -> list[dict | None]:
    if not ids:
        return []
    raw = r.hmget(keys.docs(col.name, col.uid), list(ids))
    return [json.loads(m) if m else None for m in raw]


def trim(r: redis.Redis, col: Collection, upto: Lsn) -> None:
    """Forget entries before `upto`, which a snapshot covers. The mark is set first, so a reader never
    misses a gap: it either sees entries still there or the mark that sends it to the snapshot."""
    with r.pipeline(transaction=True) as pipe:
        pipe.set(keys.trim(col.name, col.uid), upto)
        pipe.xtrim(keys.wal(col.name, col.uid), minid=upto, approximate=False)
        pipe.execute()


def length(r: redis.Redis, col: Collection) -> int:
    """Entries still in the stream, i.e. written since the last trim: what a new snapshot would cover."""
    return int(r.xlen(keys.wal(col.name, col.uid)))


async def astats(r: aredis.Redis, col: Collection) -> tuple[int, Lsn]:
    """Live count and last LSN, for the API (which reads, never writes, the log)."""
    async with r.pipeline(transaction=False) as pipe:
        pipe.hlen(keys.docs(col.name, col.uid))
        pipe.xinfo_stream(keys.wal(col.name, col.uid))
        count, info = await pipe.execute(raise_on_error=False)
    if isinstance(info, Exception):  # no stream yet
        return int(count), ZERO_LSN
    return int(count), _s(info["last-generated-id"])
