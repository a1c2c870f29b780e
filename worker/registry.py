"""The collections this worker process holds, and how each copy catches up with its WAL."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import redis

from common import collections, wal
from common.codec import Lsn, lsn_at_least
from common.collections import Collection
from common.errors import InvalidInput
from worker import snapshot_files
from worker.footprint import index_bytes
from worker.index import CollectionIndex

log = logging.getLogger("vecq.worker")

READ_BATCH = 64  # WAL entries per round trip while replaying
RELOAD_TRIES = 5
SWEEP_EVERY_S = 10.0


class Registry:
    def __init__(self, r: redis.Redis, snapshot_dir: Path) -> None:
        self.r = r
        self.snapshot_dir = snapshot_dir  # shared by every worker of the collection (see snapshot_files)
        self.copies: dict[str, CollectionIndex] = {}
        self.load_seconds: dict[str, float] = {}
        self.index_bytes: dict[str, int] = {}  # measured here, in the job thread; the heartbeat only reads
        self._swept_at = time.monotonic()

    def ready(self, col: Collection, consistency: str = "strong", min_lsn: Lsn | None = None) -> CollectionIndex:
        """This process's copy of `col`, caught up as far as `consistency` asks."""
        self._maybe_sweep()
        copy = self.copies.get(col.name)
        if copy is None or copy.col.uid != col.uid:
            return self.load(col)
        if consistency == "eventual":
            return copy
        if consistency == "session":
            if not min_lsn:
                raise InvalidInput("consistency 'session' needs min_lsn", "min_lsn")
            if lsn_at_least(copy.applied, min_lsn):
                return copy
        before = (copy, copy.applied)
        copy = self.catch_up(copy)
        if (copy, copy.applied) != before:  # only a changed index changes its size: keep it off the hot path
            self.index_bytes[col.name] = index_bytes(copy.index)
        if consistency == "session" and min_lsn and not lsn_at_least(copy.applied, min_lsn):
            raise InvalidInput(f"min_lsn {min_lsn} is beyond the end of the log ({copy.applied})", "min_lsn")
        return copy

    def load(self, col: Collection) -> CollectionIndex:
        """Newest snapshot, then the WAL tail."""
        started = time.perf_counter()
        copy = snapshot_files.load(self.snapshot_dir, col) or CollectionIndex(col)
        from_snapshot = copy.applied
        copy = self.catch_up(copy)
        self.copies[col.name] = copy
        self.index_bytes[col.name] = index_bytes(copy.index)
        seconds = time.perf_counter() - started
        self.load_seconds[col.name] = round(seconds, 3)
        log.info("loaded collection=%s vectors=%d snapshot_lsn=%s applied=%s seconds=%.3f",
                 col.name, copy.count, from_snapshot, copy.applied, seconds)
        return copy

    def catch_up(self, copy: CollectionIndex) -> CollectionIndex:
        """Apply the WAL after `copy.applied`. A copy whose next entries were trimmed away, or that still holds
        tombstones a newer snapshot compacted, starts again from that snapshot and its tail: every copy then
        holds the same index, so every worker gives the same ids and scores."""
        misses = 0
        while True:
            trim_mark, entries = wal.read_after(self.r, copy.col, copy.applied, READ_BATCH)
            if trim_mark != copy.trim_mark:
                gap = wal.needs_reload(copy.applied, trim_mark)
                if gap or copy.dead or copy.rebuilt_by_snapshots:
                    # Read after the trim mark: the snapshot it was trimmed for is in place by now.
                    fresh = snapshot_files.load(self.snapshot_dir, copy.col)
                    if fresh is not None and not wal.needs_reload(fresh.applied, trim_mark):
                        log.info("reloading collection=%s from snapshot_lsn=%s (applied=%s trimmed_to=%s "
                                 "tombstones=%d)", copy.col.name, fresh.applied, copy.applied, trim_mark,
                                 len(copy.dead))
                        fresh.trim_mark = trim_mark
                        copy = self.copies[copy.col.name] = fresh
                        continue
                    if gap:
                        misses += 1
                        if misses < RELOAD_TRIES:  # a newer snapshot replaced the one we read: read again
                            time.sleep(0.05 * misses)
                            continue
                        raise RuntimeError(
                            f"WAL of {copy.col.name} is trimmed to {trim_mark}, past this copy ({copy.applied}), "
                            f"and no snapshot that covers it is in {self.snapshot_dir}: workers on several "
                            "hosts must share the snapshot dir (VECQ_SNAPSHOT_DIR)")
                    log.warning("collection=%s keeps its tombstones: no snapshot at or after %s in %s",
                                copy.col.name, trim_mark, self.snapshot_dir)
                copy.trim_mark = trim_mark
            for entry in entries:
                copy.apply(entry)
            if len(entries) < READ_BATCH:
                return copy

    def load_all(self) -> None:
        for name in collections.names(self.r):
            col = collections.find(self.r, name)
            if col is not None:
                try:
                    self.load(col)
                except Exception:  # one broken collection must not keep the worker from serving the rest
                    log.exception("could not load collection %s", name)

    def forget(self, name: str) -> None:
        self.copies.pop(name, None)
        self.load_seconds.pop(name, None)
        self.index_bytes.pop(name, None)

    def _maybe_sweep(self) -> None:
        """Drop copies of collections deleted elsewhere, so their memory does not outlive them."""
        if time.monotonic() - self._swept_at < SWEEP_EVERY_S:
            return
        self._swept_at = time.monotonic()
        live = set(collections.names(self.r))
        for name in list(self.copies):
            if name not in live:
                self.forget(name)

    def summary(self) -> dict[str, dict[str, object]]:
        return {name: {"count": c.count, "applied_lsn": c.applied, "uid": c.col.uid,
                       "load_s": self.load_seconds.get(name), "index_bytes": self.index_bytes.get(name)}
                for name, c in list(self.copies.items())}
