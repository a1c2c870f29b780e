"""Sealing and compaction: building a segment once, for every worker to map.

A seal turns the growing part of the log (the writes after the manifest's `sealed_lsn`, up to the end of the log
as this worker has applied it) into one immutable segment of the collection's own spec: trained on the
collection's rows if the spec needs training (once; the trained empty index is kept as the template of every
later segment), built with one `add`. A compaction merges every segment into one, dropping dead rows. Each holds
a lock of its own (seals go on while a compaction builds), writes its files first and commits the manifest last,
onto whatever the other committed meanwhile (common/segments.py); a seal then trims the log: a job killed at any
step is redone by its redelivery, and nothing is lost or doubled.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from common import jobs, segments, wal
from common.collections import Collection
from common.errors import NotFound
from common.segments import Manifest, SegmentInfo
from common.settings import Settings
from worker import segment_files
from worker.collection_copy import CollectionCopy
from worker.index import build, factory, read_back, trained_empty
from worker.registry import Registry
from worker.segment_files import SegmentRows

log = logging.getLogger("vecq.worker")


@dataclass(frozen=True)
class Template:
    index: faiss.Index
    name: str | None  # the trained template's file, for a trained spec
    rows: int  # rows it was trained on


def template(store: Path, col: Collection, copy: CollectionCopy, manifest: Manifest, vectors: np.ndarray,
             sample_rows: int) -> Template | None:
    """The empty index every segment of the collection starts from, trained on `vectors` the first time; None if
    the spec needs training and there are not enough rows yet."""
    kind = copy.kind
    if not kind.trains:
        return Template(factory(col.dim, col.metric, col.index), None, 0)
    if manifest.trained is not None:
        return Template(segment_files.read_trained(store, col, manifest.trained), manifest.trained,
                        manifest.trained_rows)
    if len(vectors) < kind.train_rows:
        return None
    index = trained_empty(col.dim, col.metric, col.index, vectors, max(sample_rows, kind.train_rows))
    return Template(index, segment_files.write_trained(store, col, index), min(len(vectors),
                                                                                max(sample_rows, kind.train_rows)))


class Stages:
    """Seconds spent in each step of a seal, in order, for its log line and result: which one to work on."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._mark = time.perf_counter()

    def done(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + now - self._mark, 3)
        self._mark = now

    def text(self) -> str:
        """`s_read_log=0.123 s_rows=...`: prefixed, so no stage reads as one of the line's own fields (`rows`)."""
        return " ".join(f"s_{stage}={seconds:.3f}" for stage, seconds in self.seconds.items())


def write_segment(store: Path, col: Collection, tmpl: Template, rows: SegmentRows, first_lsn: str,
                  lsn: str, threads: int = 0, stages: Stages | None = None) -> SegmentInfo:
    stages = stages or Stages()
    started = time.perf_counter()
    index = build(tmpl.index, rows.vectors, threads)
    stages.done("add")
    segment_id = segments.new_segment_id()
    path, size = segment_files.write(store, col, segment_id, index, rows)
    _, mapped = read_back(str(path / "index.faiss"))
    stages.done("write")
    return SegmentInfo(id=segment_id, first_lsn=first_lsn, lsn=lsn, rows=len(rows.ids), deleted=len(rows.deleted),
                       bytes=size, spec=col.index, mapped=mapped, built_at=round(time.time(), 3),
                       build_s=round(time.perf_counter() - started, 3))


def seal(r: Any, settings: Settings, registry: Registry, store: Path, col: Collection) -> dict[str, Any]:
    """Seal the growing part of `col`. The caller holds the seal lock (not the compaction's)."""
    started = time.perf_counter()
    stages = Stages()
    copy = registry.ready(col, "strong")
    manifest, lsn = copy.manifest, copy.applied
    result: dict[str, Any] = {"lsn": lsn, "sealed_lsn": manifest.sealed_lsn, "segments": len(manifest.segments)}
    if lsn == manifest.sealed_lsn:
        finish_trim(r, settings, store, col, manifest)  # the step a killed job may have missed, repeated
        return {**result, "sealed": False, "reason": "nothing written since the newest seal"}
    stages.done("read_log")
    ids, vectors, metadata = copy.growing.live_rows()
    deleted = sorted(copy.growing.deleted)
    stages.done("rows")
    tmpl = template(store, col, copy, manifest, vectors, settings.train_sample_rows)
    stages.done("train")
    if tmpl is None:
        return {**result, "sealed": False, "reason": f"index {col.index!r} needs {copy.kind.train_rows:,} rows to "
                f"train, the collection has {len(ids):,}: they stay searchable, exactly, in the growing segment"}
    info = None
    if ids or (deleted and manifest.segments):
        info = write_segment(store, col, tmpl, SegmentRows(ids, vectors, deleted, metadata), manifest.sealed_lsn,
                             lsn, settings.seal_omp_threads, stages)
    try:
        committed = segments.commit_onto(r, col, lambda current: segments.after_seal(
            current, manifest, info, lsn, tmpl.name, tmpl.rows))
    except NotFound:  # deleted while we built: its purge may have run already, so its files are ours to remove
        segment_files.remove(store, col)
        raise
    except segments.Superseded as exc:  # its unlisted files go with the next sweep
        return {**result, "sealed": False, "reason": exc.message}
    stages.done("commit")
    finish_trim(r, settings, store, col, committed)
    stages.done("trim")
    seconds = time.perf_counter() - started
    segments.sealed(r, col, copy.growing.written_rows)
    log.info("sealed collection=%s lsn=%s rows=%d deleted=%d segment=%s seconds=%.3f %s", col.name, lsn, len(ids),
             len(deleted), info.id if info else None, seconds, stages.text())
    return {**result, "sealed": True, "sealed_lsn": lsn, "segments": len(committed.segments),
            "segment": info.id if info else None, "rows": len(ids), "seconds": round(seconds, 3),
            "stages": stages.seconds}


@dataclass(frozen=True)
class Merge:
    """A compaction built and not yet committed: `merged` replaces the segments of `base`."""
    base: Manifest
    merged: SegmentInfo | None  # None: no live row left in them
    dropped: int


def build_merge(settings: Settings, copy: CollectionCopy, store: Path) -> Merge | None:
    """Merge every sealed segment of `copy` (caught up) into one without dead rows; None if there is nothing to
    gain."""
    col, manifest = copy.col, copy.manifest
    dead = sum(s.dead_count for s in copy.sealed)
    if len(copy.sealed) < 2 and not dead:
        return None
    ids: list[str] = []
    metadata: list[str | None] = []
    parts = []
    for segment in copy.sealed:  # live rows, oldest segment first: log order
        live = np.flatnonzero(~segment.dead)
        all_ids = segment.ids()
        ids.extend(all_ids[i] for i in live.tolist())
        metadata.extend(segment.metadata_at(i) for i in live.tolist())
        parts.append(segment.vectors(live))
    vectors = np.concatenate(parts) if parts else np.zeros((0, col.dim), dtype=np.float32)
    tmpl = template(store, col, copy, manifest, vectors, settings.train_sample_rows)
    if tmpl is None:  # a trained spec always has its template once it has a segment
        raise RuntimeError(f"collection {col.name} has segments but no trained template")
    # Every segment is merged, the oldest included, so no older segment is left for a deleted id to bury. A row
    # dead by a write after `base` (in the growing part, or a seal committed while this one builds) is dropped
    # or buried by that newer write: either way the merged segment stays older than every write that follows.
    info = write_segment(store, col, tmpl, SegmentRows(ids, vectors, [], metadata), manifest.segments[0].first_lsn,
                         manifest.segments[-1].lsn, settings.seal_omp_threads) if ids else None
    return Merge(manifest, info, dead)


def commit_merge(r: Any, store: Path, col: Collection, merge: Merge) -> Manifest:
    committed = segments.commit_onto(r, col, lambda current: segments.after_merge(current, merge.base, merge.merged))
    segment_files.sweep(store, col, keep=keep_names(committed))
    return committed


def compact(r: Any, settings: Settings, registry: Registry, store: Path, col: Collection) -> dict[str, Any]:
    """Merge every sealed segment into one without dead rows. The caller holds the compaction lock."""
    started = time.perf_counter()
    copy = registry.ready(col, "strong")
    merge = build_merge(settings, copy, store)
    if merge is None:
        return {"compacted": False, "reason": "one segment without dead rows", "segments": len(copy.sealed)}
    try:
        committed = commit_merge(r, store, col, merge)
    except segments.Superseded as exc:
        return {"compacted": False, "reason": exc.message, "segments": len(merge.base.segments)}
    seconds = time.perf_counter() - started
    rows = merge.merged.rows if merge.merged else 0
    log.info("compacted collection=%s segments=%d->%d rows=%d dropped=%d seconds=%.3f", col.name,
             len(merge.base.segments), len(committed.segments), rows, merge.dropped, seconds)
    return {"compacted": True, "segments": len(committed.segments), "merged": len(merge.base.segments),
            "rows": rows, "dropped": merge.dropped, "seconds": round(seconds, 3)}


def compaction_due(copy: CollectionCopy, max_segments: int, dead_fraction: float) -> bool:
    rows = sum(s.rows for s in copy.sealed)
    dead = sum(s.dead_count for s in copy.sealed)
    return len(copy.sealed) > max_segments or (rows > 0 and dead / rows > dead_fraction)


def keep_names(manifest: Manifest) -> set[str]:
    return {s.id for s in manifest.segments} | ({manifest.trained} if manifest.trained else set())


def finish_trim(r: Any, settings: Settings, store: Path, col: Collection, manifest: Manifest) -> None:
    """After a commit: trim the log to what the segments cover, forget dedup records no redelivery can need, and
    sweep files no manifest lists."""
    if manifest.sealed_lsn != "0-0":
        wal.trim(r, col, manifest.sealed_lsn)
        wal.prune_dedup(r, col, manifest.sealed_lsn, settings.redelivery_window_s, lambda ids: jobs.finished(r, ids))
    segment_files.sweep(store, col, keep=keep_names(manifest))
