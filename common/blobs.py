"""Upload blobs: `vecq:blob:{id}` keys. Only this module writes them.

A blob is the bytes of one upload, so that jobs carry a reference and never the payload. It is kept as
segments of at most `segment_bytes` (a Redis string tops out at 512 MB, and appending to a shorter string
copies less), plus a meta hash with the size, the segment count and attributes (the format):

    vecq:blob:{id}          hash   size, segments, segment_bytes, format, … (written last: the blob is
                                   complete once it exists)
    vecq:blob:{id}-{n}      string segment n (APPEND while streaming, GETRANGE to read)
    vecq:blob:{id}-p{row}   string a worker-made part starting at `row` (the normalized rows of one job)
    vecq:blob:{id}-counted  set    the parts whose rows are counted in the job's progress
    vecq:blob:{id}-done     set    the parts whose rows are in the WAL

Every key has a TTL, so an abandoned upload cleans itself up; the ingest job deletes the blob when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

import redis
import redis.asyncio as aredis

from common import keys
from common.errors import InvalidInput, NotFound

SEGMENT_BYTES = 64 * 1024 * 1024
FLUSH_BYTES = 4 * 1024 * 1024  # the API appends this much at a time
READ_BYTES = 32 * 1024 * 1024  # the most one GETRANGE fetches
BLOB_ID = re.compile(r"^[A-Za-z0-9_]{1,40}$")  # no "-": it separates the id from a part's suffix


def new_id() -> str:
    return uuid.uuid4().hex


def check_id(blob_id: str) -> str:
    if not isinstance(blob_id, str) or not BLOB_ID.fullmatch(blob_id):
        raise InvalidInput(f"invalid blob id {blob_id!r}", "blob")
    return blob_id


def _meta_key(blob_id: str) -> str:
    return keys.blob(check_id(blob_id))


def _segment_key(blob_id: str, n: int) -> str:
    return keys.blob(f"{check_id(blob_id)}-{int(n)}")


def _part_key(blob_id: str, row: int) -> str:
    return keys.blob(f"{check_id(blob_id)}-p{int(row)}")


def _done_key(blob_id: str) -> str:
    return keys.blob(f"{check_id(blob_id)}-done")


def _counted_key(blob_id: str) -> str:
    return keys.blob(f"{check_id(blob_id)}-counted")


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class Blob:
    id: str
    size: int
    segments: int
    segment_bytes: int
    attrs: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_redis(cls, blob_id: str, raw: dict[bytes | str, bytes | str]) -> Blob:
        d = {_s(k): _s(v) for k, v in raw.items()}
        return cls(id=blob_id, size=int(d.pop("size")), segments=int(d.pop("segments")),
                   segment_bytes=int(d.pop("segment_bytes")), attrs=d)

    def ranges(self, start: int, end: int) -> Iterator[tuple[str, int, int]]:
        """(segment key, first byte, last byte inclusive) covering [start, end), for GETRANGE."""
        start, end = max(0, start), min(end, self.size)
        while start < end:
            n = start // self.segment_bytes
            stop = min(end, (n + 1) * self.segment_bytes)
            base = n * self.segment_bytes
            yield _segment_key(self.id, n), start - base, stop - base - 1
            start = stop


# Writing ---------------------------------------------------------------------------------------------------


class AsyncWriter:
    """Streams an upload into a new blob (the API side). Appends run while the next bytes arrive; the blob
    is visible (its meta hash written) only on `commit`, and `abort` removes whatever was written."""

    def __init__(self, r: aredis.Redis, ttl: int, segment_bytes: int = SEGMENT_BYTES,
                 flush_bytes: int = FLUSH_BYTES) -> None:
        self.r = r
        self.ttl = ttl
        self.id = new_id()
        self.size = 0
        self.segment_bytes = segment_bytes
        self.flush_bytes = flush_bytes
        self._buffer = bytearray()
        self._written = 0  # bytes handed to Redis (or to the append in flight)
        self._inflight: asyncio.Task[None] | None = None

    @property
    def segments(self) -> int:
        return -(-self.size // self.segment_bytes)

    async def write(self, data: bytes) -> None:
        self._buffer += data
        self.size += len(data)
        if len(self._buffer) >= self.flush_bytes:
            await self._flush()

    async def _drain(self) -> None:
        if self._inflight is not None:
            await self._inflight
            self._inflight = None

    async def _flush(self) -> None:
        """Start appending the buffer (one append in flight at a time, overlapping the next reads)."""
        await self._drain()
        if not self._buffer:
            return
        data, self._buffer = bytes(self._buffer), bytearray()
        start, self._written = self._written, self._written + len(data)
        self._inflight = asyncio.create_task(self._append(start, data))

    async def _append(self, start: int, data: bytes) -> None:
        async with self.r.pipeline(transaction=False) as pipe:
            offset = 0
            while offset < len(data):
                n = (start + offset) // self.segment_bytes
                room = (n + 1) * self.segment_bytes - (start + offset)
                piece = data[offset : offset + room]
                pipe.append(_segment_key(self.id, n), piece)
                pipe.expire(_segment_key(self.id, n), self.ttl)
                offset += len(piece)
            await pipe.execute()

    async def read(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of what was written so far (after `finish`)."""
        blob = Blob(self.id, self.size, self.segments, self.segment_bytes)
        async with self.r.pipeline(transaction=False) as pipe:
            for key, first, last in blob.ranges(start, end):
                pipe.getrange(key, first, last)
            return b"".join(await pipe.execute())

    async def finish(self) -> None:
        """Everything written is in Redis."""
        await self._flush()
        await self._drain()

    async def commit(self, **attrs: str | int) -> Blob:
        await self.finish()
        meta = {"size": self.size, "segments": self.segments, "segment_bytes": self.segment_bytes, **attrs}
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(_meta_key(self.id), mapping=meta)  # type: ignore[arg-type]  # redis-py's Mapping[EncodableT, EncodableT] is invariant in its key type
            pipe.expire(_meta_key(self.id), self.ttl)
            await pipe.execute()
        return Blob(self.id, self.size, self.segments, self.segment_bytes, {k: str(v) for k, v in attrs.items()})

    async def abort(self) -> None:
        if self._inflight is not None:
            with contextlib.suppress(Exception):
                await self._inflight
            self._inflight = None
        await adelete(self.r, self.id, segments=-(-self._written // self.segment_bytes))


def put(r: redis.Redis, data: bytes | bytearray | memoryview, *, ttl: int, blob_id: str | None = None,
        segment_bytes: int = SEGMENT_BYTES, **attrs: str | int) -> str:
    """Store `data` as a new blob and return its id: how a Python producer hands `vecq.ingest` a payload."""
    blob_id = check_id(blob_id or new_id())
    view = memoryview(data).cast("B")
    segments = -(-len(view) // segment_bytes)
    with r.pipeline(transaction=False) as pipe:
        for n in range(segments):
            pipe.set(_segment_key(blob_id, n), view[n * segment_bytes : (n + 1) * segment_bytes].tobytes(), ex=ttl)
        meta: dict[str, str | int] = {"size": len(view), "segments": segments, "segment_bytes": segment_bytes,
                                      **attrs}
        pipe.hset(_meta_key(blob_id), mapping=meta)  # type: ignore[arg-type]  # redis-py's Mapping[EncodableT, EncodableT] is invariant in its key type
        pipe.expire(_meta_key(blob_id), ttl)
        pipe.execute()
    return blob_id


def put_part(r: redis.Redis, blob_id: str, row: int, data: bytes, ttl: int) -> None:
    r.set(_part_key(blob_id, row), data, ex=ttl)


def set_attrs(r: redis.Redis, blob_id: str, **attrs: str | int) -> None:
    r.hset(_meta_key(blob_id), mapping=attrs)  # type: ignore[arg-type]  # redis-py's Mapping[EncodableT, EncodableT] is invariant in its key type


# Reading ---------------------------------------------------------------------------------------------------


def info(r: redis.Redis, blob_id: str) -> Blob:
    raw = r.hgetall(_meta_key(blob_id))
    if not raw:
        raise NotFound(f"blob {blob_id!r} not found (expired, consumed or never completed)", "blob")
    return Blob.from_redis(blob_id, raw)


def read(r: redis.Redis, blob: Blob, start: int = 0, end: int | None = None) -> bytes:
    """Bytes [start, end) of the blob; NotFound if it expired meanwhile."""
    end = blob.size if end is None else min(end, blob.size)
    with r.pipeline(transaction=False) as pipe:
        for key, first, last in blob.ranges(start, end):
            pipe.getrange(key, first, last)
        data = b"".join(pipe.execute())
    if len(data) != max(0, end - max(0, start)):
        raise NotFound(f"blob {blob.id!r} expired while being read", "blob")
    return data


def get_part(r: redis.Redis, blob_id: str, row: int) -> bytes:
    data = r.get(_part_key(blob_id, row))
    if data is None:
        raise NotFound(f"part {row} of blob {blob_id!r} not found (expired)", "blob")
    return cast(bytes, data)  # a client without decode_responses: redis-py types the value as bytes | str


# Lifetime --------------------------------------------------------------------------------------------------


def touch(r: redis.Redis, blob: Blob, ttl: int) -> None:
    """Extend every key's life: the ingest job does this when it starts, however long it waited queued."""
    with r.pipeline(transaction=False) as pipe:
        pipe.expire(_meta_key(blob.id), ttl)
        for n in range(blob.segments):
            pipe.expire(_segment_key(blob.id, n), ttl)
        pipe.execute()


def claim_count(r: redis.Redis, blob_id: str, row: int, ttl: int) -> bool:
    """True the first time the part starting at `row` asks: its rows are counted once, however often it runs."""
    with r.pipeline(transaction=True) as pipe:
        pipe.sadd(_counted_key(blob_id), str(row))
        pipe.expire(_counted_key(blob_id), ttl)
        added, _ = pipe.execute()
    return bool(added)


def mark_done(r: redis.Redis, blob_id: str, row: int, ttl: int) -> tuple[bool, int]:
    """Record that the part starting at `row` is in the WAL: (newly recorded, parts recorded so far)."""
    with r.pipeline(transaction=True) as pipe:
        pipe.sadd(_done_key(blob_id), str(row))
        pipe.expire(_done_key(blob_id), ttl)
        pipe.scard(_done_key(blob_id))
        added, _, total = pipe.execute()
    return bool(added), int(total)


def _all_keys(blob_id: str, segments: int, parts: list[int]) -> list[str]:
    return [_meta_key(blob_id), _done_key(blob_id), _counted_key(blob_id),
            *(_segment_key(blob_id, n) for n in range(segments)), *(_part_key(blob_id, row) for row in parts)]


def _parts_of(attrs: dict[str, str]) -> list[int]:
    return [int(x) for x in attrs.get("part_rows", "").split(",") if x]


def delete(r: redis.Redis, blob_id: str) -> None:
    raw = r.hgetall(_meta_key(blob_id))
    if not raw:
        r.delete(_done_key(blob_id), _counted_key(blob_id))
        return
    blob = Blob.from_redis(blob_id, raw)
    names = _all_keys(blob_id, blob.segments, _parts_of(blob.attrs))
    for i in range(0, len(names), 512):
        r.unlink(*names[i : i + 512])


async def adelete(r: aredis.Redis, blob_id: str, segments: int | None = None) -> None:
    if segments is None:
        raw = await r.hgetall(_meta_key(blob_id))
        blob = Blob.from_redis(blob_id, raw) if raw else None
        names = _all_keys(blob_id, blob.segments, _parts_of(blob.attrs)) if blob else [_meta_key(blob_id)]
    else:
        names = _all_keys(blob_id, segments, [])
    for i in range(0, len(names), 512):
        await r.unlink(*names[i : i + 512])
