"""The write-ahead log: one Redis Stream per collection, and the Redis-side state written with it.

Owns, per collection (name, uid): the stream `wal` (an add entry carries its rows' ids, vectors and metadata,
so a worker's rows, filters and returned metadata are all those of the LSN it searched), the `docs` hash (the
live ids, so HLEN is the live count), the `dedup` hash (job:chunk -> LSN) and the `trim` mark. Every write is
one Lua script, so the stream entry and the docs change land together or not at all, and a redelivered job
finds its LSN in `dedup` instead of appending twice. The stream entry id is the write's LSN.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aredis
from redis.client import Pipeline

from common import keys, scripts
from common.codec import ZERO_LSN, Lsn, lsn_at_least, lsn_key
from common.collections import Collection
from common.errors import NotFound
from common.scripts import Lua


@dataclass(frozen=True)
class Entry:
    lsn: Lsn
    op: str  # "add" | "del"
    ids: list[str]
    vectors: bytes  # float32 rows for "add", empty for "del"
    job: str
    metadata: list[str | None] | None = None  # per row of an "add": a JSON object's text, or None


# Both adds: refused() is the incarnation and dedup check, append(vec) the entry, its ids in the docs hash and its
# dedup record. The docs fields are set 1,000 per HSET: each call is one more command propagated to the AOF, and one
# per id made the AOF's share of a bulk ingest's part as large as the 4 MB of vectors it carries (measured: 2x).
_ADD_LUA = """
local function refused()
  if redis.call('HGET', KEYS[4], 'uid') ~= ARGV[2] then return {'gone', ''} end
  local seen = redis.call('HGET', KEYS[3], ARGV[1])
  if seen then return {'dup', seen} end
  return nil
end
local function append(vec)
  local ids = cjson.decode(ARGV[3])
  local lsn = redis.call('XADD', KEYS[1], '*', 'op', 'add', 'job', ARGV[1], 'ids', ARGV[3], 'vec', vec,
                         'meta', ARGV[5])
  for i = 1, #ids, 1000 do
    local fields = {}
    for j = i, math.min(i + 999, #ids) do fields[#fields + 1] = ids[j]; fields[#fields + 1] = '' end
    redis.call('HSET', KEYS[2], unpack(fields))
  end
  redis.call('HSET', KEYS[3], ARGV[1], lsn)
  return {'ok', lsn}
end
"""
_APPEND_ADD = Lua(_ADD_LUA + "return refused() or append(ARGV[4])")

# As _APPEND_ADD, but the vectors are copied inside Redis from string ranges (KEYS[5..], ARGV[6..] first and last
# byte of each) instead of sent: ARGV[4] is their expected length, short if a source expired.
_APPEND_ADD_COPIED = Lua(_ADD_LUA + """
local no = refused()
if no then return no end
local parts = {}
for i = 5, #KEYS do
  local j = 6 + 2 * (i - 5)
  parts[#parts + 1] = redis.call('GETRANGE', KEYS[i], ARGV[j], ARGV[j + 1])
end
local vec = table.concat(parts)
if #vec ~= tonumber(ARGV[4]) then return {'short', ''} end
return append(vec)
""")

# The stream's last LSN without its entries: XINFO STREAM's reply carries the first and last entries (up to
# VECQ_WAL_CHUNK_BYTES each), which stay inside Redis this way. '0-0' before the first write.
_LAST_LSN_LUA = """
local function last_lsn(key)
  local info = redis.pcall('XINFO', 'STREAM', key)
  if type(info) ~= 'table' or info.err then return '0-0' end
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then return info[i + 1] end
  end
  return '0-0'
end
"""
_LAST_LSN = Lua(_LAST_LSN_LUA + "return last_lsn(KEYS[1])")

_APPEND_DELETE = Lua(_LAST_LSN_LUA + """
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
  lsn = last_lsn(KEYS[1])
end
redis.call('HSET', KEYS[3], ARGV[1], lsn)
return {'ok', lsn, tostring(#present)}
""")


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
    reply = _APPEND_ADD(r, keys=_keys(col), args=[
        write_id, col.uid, json.dumps(list(ids)), vectors, json.dumps(list(metadata))])
    if _s(reply[0]) == "gone":
        raise NotFound(f"collection {col.name!r} was deleted", "name")
    return _s(reply[1])


def append_add_copied(r: redis.Redis, col: Collection, write_id: str, ids: Sequence[str],
                      source: Sequence[tuple[str, int, int]], size: int, metadata: Sequence[str | None]) -> Lsn:
    """As append_add, with the vectors (`size` bytes of float32 rows) copied inside Redis from `source`: (key, first
    byte, last byte inclusive) ranges of strings, in order (the rows of an upload's blob, common/blobs.py). The
    rows of a bulk ingest then never travel Redis -> worker -> Redis: through redis-py's parser that was most of
    each part's time. NotFound if the source holds fewer bytes (an expired upload)."""
    args: list[str | int] = [write_id, col.uid, json.dumps(list(ids)), size, json.dumps(list(metadata))]
    for _, first, last in source:
        args += [first, last]
    reply = _APPEND_ADD_COPIED(r, keys=_keys(col) + [key for key, _, _ in source], args=args)
    if _s(reply[0]) == "gone":
        raise NotFound(f"collection {col.name!r} was deleted", "name")
    if _s(reply[0]) == "short":
        raise NotFound("the upload expired before its rows were in the log", "blob")
    return _s(reply[1])


def append_adds(r: redis.Redis, col: Collection,
                chunks: Sequence[tuple[str, Sequence[str], bytes, Sequence[str | None]]]) -> list[Lsn]:
    """Append several chunks of upserts (write_id, ids, vectors, metadata), in order, in one round trip: the
    writes of a coalesced batch (api/writer.py). Each chunk is deduplicated by its own write_id, as above."""
    with r.pipeline(transaction=False) as pipe:
        for write_id, ids, vectors, metadata in chunks:
            _APPEND_ADD.queue(pipe, keys=_keys(col), args=[write_id, col.uid, json.dumps(list(ids)), vectors,
                                                           json.dumps(list(metadata))])
        replies = scripts.execute(pipe)  # loads the script if Redis lost it
    if any(_s(reply[0]) == "gone" for reply in replies):
        raise NotFound(f"collection {col.name!r} was deleted", "name")
    return [_s(reply[1]) for reply in replies]


def append_delete(r: redis.Redis, col: Collection, write_id: str, ids: Sequence[str]) -> tuple[Lsn, int]:
    """Tombstone ids. Returns the LSN and how many of them existed (a repeated job reports 0 found)."""
    reply = _APPEND_DELETE(r, keys=_keys(col), args=[write_id, col.uid, json.dumps(list(ids))])
    if _s(reply[0]) == "gone":
        raise NotFound(f"collection {col.name!r} was deleted", "name")
    return _s(reply[1]), int(reply[2]) if len(reply) > 2 else 0


def queue_tail(pipe: Pipeline, col: Collection, after: Lsn, count: int) -> None:
    """Queue the reads of the trim mark and of up to `count` entries after `after`; parse with parse_tail. Run it
    in MULTI/EXEC: a trim landing between the two reads would show the old mark with entries already gone."""
    pipe.get(keys.trim(col.name, col.uid))
    pipe.xrange(keys.wal(col.name, col.uid), min=f"({after}" if after != ZERO_LSN else "-", count=count)


def parse_tail(trimmed: Any, raw: Any) -> tuple[Lsn, list[Entry]]:
    entries = [
        Entry(lsn=_s(lsn), op=_s(f[b"op"]), ids=json.loads(f[b"ids"]), vectors=f[b"vec"], job=_s(f[b"job"]),
              metadata=json.loads(f[b"meta"]) if f.get(b"meta") else None)
        for lsn, f in raw
    ]
    return (_s(trimmed) if trimmed else ZERO_LSN), entries


def read_after(r: redis.Redis, col: Collection, after: Lsn, count: int = 64) -> tuple[Lsn, list[Entry]]:
    """Entries after `after` and the trim mark, in one round trip. Callers reload if `after` < trim mark."""
    with r.pipeline(transaction=True) as pipe:
        queue_tail(pipe, col, after, count)
        trimmed, raw = pipe.execute()
    return parse_tail(trimmed, raw)


def needs_reload(applied: Lsn, trimmed_to: Lsn) -> bool:
    """Entries before the trim mark are gone: a copy that applied less than it must start from the segments."""
    return trimmed_to != ZERO_LSN and not lsn_at_least(applied, trimmed_to)


def last_lsn(r: redis.Redis, col: Collection) -> Lsn:
    return _s(_LAST_LSN(r, keys=[keys.wal(col.name, col.uid)]))


def count(r: redis.Redis, col: Collection) -> int:
    return int(r.hlen(keys.docs(col.name, col.uid)))


_TRIM = Lua("""
if redis.call('HGET', KEYS[3], 'uid') ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('XTRIM', KEYS[2], 'MINID', ARGV[1])
return 1
""")


def trim(r: redis.Redis, col: Collection, upto: Lsn) -> None:
    """Forget entries before `upto`, which sealed segments cover. The mark is set first, so a reader never
    misses a gap: it either sees entries still there or the mark that sends it to the segments. Only while the
    collection is this incarnation: a seal finishing after a delete must not leave a trim key behind."""
    _TRIM(r, keys=[keys.trim(col.name, col.uid), keys.wal(col.name, col.uid),
                                   keys.collection(col.name)], args=[upto, col.uid])


def length(r: redis.Redis, col: Collection) -> int:
    """Entries still in the stream, i.e. written since the newest seal."""
    return int(r.xlen(keys.wal(col.name, col.uid)))


def prune_dedup(r: redis.Redis, col: Collection, upto: Lsn, keep_s: float,
                finished: Callable[[list[str]], list[bool]]) -> int:
    """Forget the dedup records that no redelivery can need: of sealed writes (at or before `upto`) whose job has
    finished (a finished job's redelivery is skipped before it appends: common/jobs.py claim) or is older than
    `keep_s`, the longest a job can still be redelivered. So the hash holds only the writes still in flight."""
    sealed, cutoff = lsn_key(upto), (int((time.time() - keep_s) * 1000), 0)
    key, removed = keys.dedup(col.name, col.uid), 0
    batch: list[tuple[bytes, str]] = []

    def flush() -> int:
        done = finished([_s(f).split(":", 1)[0] for f, _ in batch])
        stale = [f for (f, lsn), fin in zip(batch, done, strict=True) if fin or lsn_key(lsn) <= cutoff]
        batch.clear()
        return int(r.hdel(key, *stale)) if stale else 0

    for field_name, lsn in r.hscan_iter(key, count=1000):
        if lsn_key(_s(lsn)) <= sealed:
            batch.append((field_name, _s(lsn)))
        if len(batch) >= 1000:
            removed += flush()
    if batch:
        removed += flush()
    return removed


# The live count and the last LSN of several collections (KEYS: docs and wal of each, in turn): one call for all.
_STATS = Lua(_LAST_LSN_LUA + """
local out = {}
for i = 1, #KEYS, 2 do
  out[#out + 1] = redis.call('HLEN', KEYS[i])
  out[#out + 1] = last_lsn(KEYS[i + 1])
end
return out
""")


async def astats_many(r: aredis.Redis, cols: Sequence[Collection]) -> list[tuple[int, Lsn]]:
    """Live count and last LSN of each collection, in one round trip however many, for the API (which reads,
    never writes, the log)."""
    if not cols:
        return []
    flat = await _STATS(r, keys=[key for col in cols for key in (keys.docs(col.name, col.uid),
                                                                 keys.wal(col.name, col.uid))])
    return [(int(flat[2 * i]), _s(flat[2 * i + 1])) for i in range(len(cols))]


async def astats(r: aredis.Redis, col: Collection) -> tuple[int, Lsn]:
    return (await astats_many(r, [col]))[0]
