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
from worker.index import CollectionIndex

log = logging.getLogger("vecq.worker")

READ_BATCH = 64  # WAL entries per round trip while replaying
SWEEP_EVERY_S = 10.0


class Registry:
    def __init__(self, r: redis.Redis, data_dir: Path) -> None:
        self.r = r
        self.data_dir = data_dir
        self.copies: dict[str, CollectionIndex] = {}
        self.load_seconds: dict[str, float] = {}
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
        copy = self.catch_up(copy)
        if consistency == "session" and min_lsn and not lsn_at_least(copy.applied, min_lsn):
            raise InvalidInput(f"min_lsn {min_lsn} is beyond the end of the log ({copy.applied})", "min_lsn")
        return copy

    def load(self, col: Collection) -> CollectionIndex:
        """Newest snapshot, then the WAL tail."""
        started = time.perf_counter()
        copy = snapshot_files.load(self.data_dir, col) or CollectionIndex(col)
        from_snapshot = copy.applied
        copy = self.catch_up(copy, reloading=True)
        self.copies[col.name] = copy
        seconds = time.perf_counter() - started
        self.load_seconds[col.name] = round(seconds, 3)
        log.info("loaded collection=%s vectors=%d snapshot_lsn=%s applied=%s seconds=%.3f",
                 col.name, copy.count, from_snapshot, copy.applied, seconds)
        return copy

    def catch_up(self, copy: CollectionIndex, reloading: bool = False) -> CollectionIndex:
        while True:
            trim_mark, entries = wal.read_after(self.r, copy.col, copy.applied, READ_BATCH)
            if trim_mark != copy.trim_mark:
                if wal.needs_reload(copy.applied, trim_mark) or (copy.dead and not reloading):
                    # Entries we still need are trimmed, or the snapshot compacted tombstones this copy still
                    # has: start from the snapshot, so every copy holds the same index again.
                    if reloading:
                        raise RuntimeError(f"snapshot of {copy.col.name} is older than the WAL's trim mark")
                    fresh = snapshot_files.load(self.data_dir, copy.col)
                    if fresh is None:
                        raise RuntimeError(f"WAL of {copy.col.name} trimmed to {trim_mark} but no snapshot found")
                    fresh.trim_mark = trim_mark
                    copy = self.catch_up(fresh, reloading=True)
                    self.copies[copy.col.name] = copy
                    return copy
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
                       "load_s": self.load_seconds.get(name)} for name, c in list(self.copies.items())}
