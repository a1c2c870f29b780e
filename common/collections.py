"""Collection records: `vecq:col:{name}` hashes and the `vecq:collections` set. Only this module writes them."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Literal

import redis
import redis.asyncio as aredis
from redis.client import Pipeline

from common import keys
from common.errors import Conflict, InvalidInput, NotFound
from common.scripts import Lua

Metric = Literal["l2", "ip", "cosine"]
METRICS: tuple[str, ...] = ("l2", "ip", "cosine")


@dataclass(frozen=True)
class Collection:
    name: str
    uid: str
    dim: int
    metric: str
    index: str
    created_at: float

    def to_redis(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_redis(cls, raw: dict[bytes | str, bytes | str]) -> Collection:
        d = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
             for k, v in raw.items()}
        return cls(
            name=d["name"], uid=d["uid"], dim=int(d["dim"]), metric=d["metric"], index=d["index"],
            created_at=float(d["created_at"]),
        )

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "metric": self.metric, "index": self.index,
                "created_at": self.created_at}


def new_collection(name: str, dim: int, metric: str, index: str) -> Collection:
    keys.check_collection_name(name)
    if metric not in METRICS:
        raise InvalidInput(f"metric must be one of {', '.join(METRICS)}", "metric")
    return Collection(name=name, uid=uuid.uuid4().hex, dim=dim, metric=metric, index=index,
                      created_at=round(time.time(), 3))


# Create only if absent and under the limit, in one step: two racing creators get one 201 and one 409. The
# creating job owns the record: its redelivery (its worker died after the create) finds it made, not a conflict.
_CREATE = Lua("""
if redis.call('EXISTS', KEYS[1]) == 1 then
  local owner = ARGV[#ARGV]
  if owner ~= '' and redis.call('HGET', KEYS[1], 'created_by') == owner then return 'mine' end
  return 'exists'
end
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[1]) then return 'full' end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('SADD', KEYS[2], ARGV[3])
return 'ok'
""")


def create(r: redis.Redis, col: Collection, max_collections: int, owner: str = "") -> Collection:
    """Create `col`; returns the collection as stored (for `owner`'s repeated create, the one it made first)."""
    fields = [x for kv in col.to_redis().items() for x in kv] + ["created_by", owner]
    assert fields[0] == "name"  # ARGV[3] above is the name
    outcome = _CREATE(r, keys=[keys.collection(col.name), keys.COLLECTIONS],
                      args=[max_collections, *fields])
    outcome = outcome.decode() if isinstance(outcome, bytes) else outcome
    if outcome == "mine":
        return get(r, col.name)
    if outcome == "exists":
        raise Conflict(f"collection {col.name!r} already exists", "name")
    if outcome == "full":
        raise Conflict(f"at most {max_collections} collections", "name")
    return col


def get(r: redis.Redis, name: str) -> Collection:
    raw = r.hgetall(keys.collection(name))
    if not raw:
        raise NotFound(f"collection {name!r} not found", "name")
    return Collection.from_redis(raw)


def find(r: redis.Redis, name: str) -> Collection | None:
    raw = r.hgetall(keys.collection(name))
    return Collection.from_redis(raw) if raw else None


def queue_uid(pipe: Pipeline, name: str) -> None:
    """Queue the read of the collection's current uid (None once deleted): a worker's check, on its hot path,
    that the copy it is about to search still is the live incarnation."""
    pipe.hget(keys.collection(name), "uid")


def parse_uid(raw: Any) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


def names(r: redis.Redis) -> list[str]:
    return sorted(m.decode() if isinstance(m, bytes) else m for m in r.smembers(keys.COLLECTIONS))


async def aget(r: aredis.Redis, name: str) -> Collection:
    raw = await r.hgetall(keys.collection(name))
    if not raw:
        raise NotFound(f"collection {name!r} not found", "name")
    return Collection.from_redis(raw)


async def anames(r: aredis.Redis) -> list[str]:
    return sorted(m.decode() if isinstance(m, bytes) else m for m in await r.smembers(keys.COLLECTIONS))


_REMOVE = Lua("""
if redis.call('HGET', KEYS[1], 'uid') ~= ARGV[1] then return 0 end
redis.call('DEL', unpack(KEYS))
redis.call('SREM', ARGV[2], ARGV[3])
return 1
""")


async def aremove(r: aredis.Redis, col: Collection, data_keys: list[str]) -> bool:
    """Drop the record and the collection's data keys together, only if it is still this incarnation
    (uid): a delete racing a re-create never removes the new one. Workers then forget their copies."""
    removed = await _REMOVE(r, keys=[keys.collection(col.name), *data_keys],
                            args=[col.uid, keys.COLLECTIONS, col.name])
    return bool(removed)
