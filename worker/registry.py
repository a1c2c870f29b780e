"""The collections this worker process holds, and how each copy catches up with its manifest and its log."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import redis

from common import collections, jobs, scripts, segments, wal
from common.codec import Lsn, lsn_at_least
from common.collections import Collection
from common.errors import InvalidInput, NotFound
from worker.collection_copy import CollectionCopy

log = logging.getLogger("vecq.worker")

READ_BATCH = 64  # WAL entries per round trip while replaying
# ... but about this many bytes of them at most: redis-py's parser reads a reply through one growing buffer, and
# 64 entries of 4 MB (a bulk ingest's) read 2-3x slower in one 256 MB reply than 4 at a time (measured here)
READ_BATCH_BYTES = 16 * 1024 * 1024
REOPEN_TRIES = 5
SWEEP_EVERY_S = 10.0


class Registry:
    def __init__(self, r: redis.Redis, store: Path, eventual_max_lag_s: float = 1.0) -> None:
        self.r = r
        self.store = store  # the segment store, shared by every worker of the collection (worker/segment_files.py)
        self.eventual_max_lag_s = eventual_max_lag_s
        self._copies: dict[str, CollectionCopy] = {}  # by collection name; changed by replace and forget only
        self.load_seconds: dict[str, float] = {}
        self._swept_at = time.monotonic()

    def ready(self, col: Collection, consistency: str = "strong", min_lsn: Lsn | None = None,
              claim: jobs.DeliveryClaim | None = None) -> CollectionCopy:
        """This process's copy of `col`, caught up as far as `consistency` asks. `eventual` searches what is
        applied, but never a copy whose last catch-up is older than `eventual_max_lag_s`: so the staleness of
        an eventual read is bounded even on a collection that only eventual searches read. A `claim` not made
        yet rides on the catch-up's first round trip, if there is one (the caller checks it either way)."""
        self._maybe_sweep()
        copy = self.held(col.name, col.uid)
        if copy is None:
            if claim is not None:
                claim.run(self.r)  # before opening the segments: a load that kills the worker counts too
            return self.load(col)
        if consistency == "eventual" and time.monotonic() - copy.caught_up_at < self.eventual_max_lag_s:
            return copy
        if consistency == "session":
            if not min_lsn:
                raise InvalidInput("consistency 'session' needs min_lsn", "min_lsn")
            if lsn_at_least(copy.applied, min_lsn):
                return copy
        copy = self.catch_up(copy, claim)
        if consistency == "session" and min_lsn and not lsn_at_least(copy.applied, min_lsn):
            raise InvalidInput(f"min_lsn {min_lsn} is beyond the end of the log ({copy.applied})", "min_lsn")
        return copy

    def load(self, col: Collection) -> CollectionCopy:
        """The manifest's segments, then the log after them."""
        started = time.perf_counter()
        copy = self._open(col, segments.read(self.r, col), previous=None)
        copy = self.catch_up(copy)
        seconds = time.perf_counter() - started
        self.load_seconds[col.name] = round(seconds, 3)
        log.info("loaded collection=%s vectors=%d segments=%d sealed_lsn=%s applied=%s seconds=%.3f", col.name,
                 copy.count, len(copy.sealed), copy.manifest.sealed_lsn, copy.applied, seconds)
        return copy

    def __len__(self) -> int:
        return len(self._copies)

    def held(self, name: str, uid: str) -> CollectionCopy | None:
        """This process's copy of collection `name` if it is of incarnation `uid`, as it is (not caught up)."""
        copy = self._copies.get(name)
        return copy if copy is not None and copy.col.uid == uid else None

    def replace(self, copy: CollectionCopy) -> CollectionCopy:
        """Hold `copy` as its collection's copy, in place of any other."""
        self._copies[copy.col.name] = copy
        return copy

    def _open(self, col: Collection, manifest: segments.Manifest, previous: CollectionCopy | None) -> CollectionCopy:
        opened = {s.info.id: s for s in previous.sealed} if previous is not None else {}
        for attempt in range(REOPEN_TRIES):
            try:
                return self.replace(CollectionCopy.open(self.store, col, manifest, opened))
            except (OSError, RuntimeError) as exc:  # a compaction swept a segment between our reads: read again
                if attempt == REOPEN_TRIES - 1:
                    raise RuntimeError(
                        f"cannot open the segments of {col.name} in {self.store} ({exc}): workers on several hosts "
                        "must share the segment store (VECQ_SEGMENT_DIR)") from exc
                time.sleep(0.05 * (attempt + 1))
                manifest = segments.read(self.r, col)
        raise AssertionError("not reached")

    def catch_up(self, copy: CollectionCopy, claim: jobs.DeliveryClaim | None = None) -> CollectionCopy:
        """Apply the log after `copy.applied`. A new manifest (a seal or a compaction committed) or a log trimmed
        past this copy opens the new segments and replays the log after them: one round trip when nothing
        changed, which also checks that the collection still is this incarnation, and carries the batch's
        `claim` if it is not made yet (it is settled before anything is applied)."""
        col, reopened, batch = copy.col, 0, READ_BATCH
        while True:
            riding = claim is not None and claim.outcome is None
            with self.r.pipeline(transaction=True) as pipe:
                if riding:
                    assert claim is not None
                    claim.queue(pipe)
                collections.queue_uid(pipe, col.name)
                segments.queue_gen(pipe, col)
                wal.queue_tail(pipe, col, copy.applied, batch)
                replies = scripts.execute(pipe)
            if riding:
                assert claim is not None
                claim.settle(replies.pop(0))
            uid, gen, trimmed, raw = replies
            if collections.parse_uid(uid) != col.uid:
                self.forget(col.name)
                raise NotFound(f"collection {col.name!r} was deleted", "name")
            trim_mark, entries = wal.parse_tail(trimmed, raw)
            if segments.parse_gen(gen) != copy.manifest.gen or wal.needs_reload(copy.applied, trim_mark):
                reopened += 1
                if reopened > 2 * REOPEN_TRIES:
                    raise RuntimeError(f"the log of {col.name} is trimmed to {trim_mark}, past what its segments "
                                       f"cover ({copy.manifest.sealed_lsn})")
                manifest = segments.read(self.r, col)
                log.info("collection=%s: segments changed (gen %d -> %d, sealed_lsn %s); reopening", col.name,
                         copy.manifest.gen, manifest.gen, manifest.sealed_lsn)
                copy = self._open(col, manifest, previous=copy)
                copy.trim_mark = trim_mark
                continue
            copy.trim_mark = trim_mark
            for entry in entries:
                copy.apply(entry)
            if len(entries) < batch:
                copy.mark_caught_up()
                return copy
            size = sum(len(e.vectors) + 16 * len(e.ids) for e in entries) // len(entries)  # per entry, roughly
            batch = max(1, min(READ_BATCH, READ_BATCH_BYTES // max(1, size)))

    def load_all(self) -> None:
        for name in collections.names(self.r):
            col = collections.find(self.r, name)
            if col is not None:
                try:
                    self.load(col)
                except Exception:  # one broken collection must not keep the worker from serving the rest
                    log.exception("could not load collection %s", name)

    def forget(self, name: str, uid: str | None = None) -> None:
        """Drop the copy of `name` (only if it is of incarnation `uid`, given one)."""
        if uid is not None and self.held(name, uid) is None:
            return
        self._copies.pop(name, None)
        self.load_seconds.pop(name, None)

    def _maybe_sweep(self) -> None:
        """Drop copies of collections deleted (or deleted and created again) elsewhere, so their memory does not
        outlive them."""
        if time.monotonic() - self._swept_at < SWEEP_EVERY_S:
            return
        self._swept_at = time.monotonic()
        for name, copy in list(self._copies.items()):
            live = collections.find(self.r, name)
            if live is None or live.uid != copy.col.uid:
                self.forget(name)

    def summary(self) -> dict[str, dict[str, object]]:
        return {name: {**c.summary(), "load_s": self.load_seconds.get(name)} for name, c in list(self._copies.items())}
