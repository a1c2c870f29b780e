"""One collection as one worker process sees it: the sealed segments of a manifest, plus a growing segment that
replays the log after the manifest's `sealed_lsn`.

Every worker opens the same segment files (mapped, so one copy in the host's page cache) and replays the same log
tail in the same order, so every worker holds the same rows, marks the same ones dead, and answers a search with
the same ids and scores.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import filters
from common.codec import ZERO_LSN, Lsn, lsn_at_least, normalized
from common.collections import Collection
from common.errors import InvalidInput
from common.segments import Manifest
from common.wal import Entry
from worker import payload, segment_files
from worker.index import SpecKind, check_params, spec_kind
from worker.segment import GrowingSegment, SealedSegment, Segment, merge

Location = tuple[int, int]  # (segment number, the growing one last; row)


class CollectionCopy:
    def __init__(self, col: Collection, manifest: Manifest, sealed: list[SealedSegment]) -> None:
        self.col = col
        self.kind: SpecKind = spec_kind(col.dim, col.metric, col.index)
        self.manifest = manifest
        self.sealed = sealed
        self.growing = GrowingSegment(col.dim, col.metric)
        self.applied: Lsn = manifest.sealed_lsn
        self.trim_mark: Lsn = ZERO_LSN
        self.caught_up_at = 0.0  # time.monotonic() of the last catch-up that reached the end of the log
        for i, older in enumerate(sealed):
            for newer in sealed[i + 1:]:
                older.bury_overlap(newer)

    @classmethod
    def open(cls, store: Path, col: Collection, manifest: Manifest,
             opened: dict[str, SealedSegment] | None = None) -> CollectionCopy:
        """Open the manifest's segments, reusing the mapped files of ones already open (`opened`, by id)."""
        opened = opened or {}
        sealed = [opened[info.id].reopened() if info.id in opened else segment_files.open_segment(store, col, info)
                  for info in manifest.segments]
        return cls(col, manifest, sealed)

    @property
    def count(self) -> int:
        return sum(s.live for s in self.sealed) + len(self.growing.position)

    @property
    def sealed_rows(self) -> int:
        return sum(s.live for s in self.sealed)

    def apply(self, entry: Entry) -> None:
        if lsn_at_least(self.manifest.sealed_lsn, entry.lsn):
            return  # in a segment already
        if entry.op == "add":
            self._bury(entry.ids)
            self.growing.add(entry.ids, np.frombuffer(entry.vectors, dtype="<f4").reshape(-1, self.col.dim),
                             entry.metadata)
        elif entry.op == "del":
            self._bury(entry.ids)
            self.growing.deleted.update(entry.ids)
        self.growing.written_rows += len(entry.ids)
        self.applied = entry.lsn

    def _bury(self, ids: list[str]) -> None:
        """Mark the live rows of `ids` dead, wherever they are (an id is live in one place at most)."""
        rest = self.growing.bury_many(ids)
        for segment in reversed(self.sealed):
            if not rest:
                return
            rows = segment.find(rest)
            segment.bury(rows)
            rest = [vid for vid, row in zip(rest, rows.tolist(), strict=True) if row < 0]

    def locate(self, vid: str) -> Location | None:
        row = self.growing.position.get(vid)
        if row is not None:
            return len(self.sealed), row
        for i in range(len(self.sealed) - 1, -1, -1):
            found = int(self.sealed[i].find([vid])[0])
            if found >= 0:
                return i, found
        return None

    def _segment(self, loc: Location) -> Segment:
        return self.growing if loc[0] == len(self.sealed) else self.sealed[loc[0]]

    def vector(self, loc: Location) -> list[float]:
        return self._segment(loc).vectors(np.array([loc[1]], dtype=np.int64))[0].tolist()

    def metadata(self, loc: Location) -> dict[str, Any] | None:
        """The metadata written with the row's vector: the same write, at the LSN this copy searched."""
        text = self._segment(loc).metadata_at(loc[1])
        return json.loads(text) if text else None

    def masks(self, f: filters.Filter | None) -> list[np.ndarray | None]:
        """Per segment (the growing one last), the rows `f` matches; None for no filter."""
        if f is None:
            return [None] * (len(self.sealed) + 1)
        segments: list[Segment] = [*self.sealed, self.growing]
        return [payload.mask(f, s.payload, s.rows) for s in segments]

    def count_matching(self, f: filters.Filter | None) -> int:
        if f is None:
            return self.count
        return sum(int((m & s.live_mask()).sum()) for s, m in zip([*self.sealed, self.growing], self.masks(f),
                                                                   strict=True) if m is not None)

    def matching_ids(self, f: filters.Filter) -> list[str]:
        """The live ids `f` matches, in log order (a delete by filter)."""
        out: list[str] = []
        for i, (s, m) in enumerate(zip([*self.sealed, self.growing], self.masks(f), strict=True)):
            rows = np.flatnonzero(m & s.live_mask()) if m is not None else np.zeros(0, np.int64)
            growing = i == len(self.sealed)
            out.extend(self.growing.ids[r] if growing else self.sealed[i].id_at(r)  # type: ignore[misc]
                       for r in rows.tolist())
        return out

    def prepare_queries(self, queries: np.ndarray) -> np.ndarray:
        if queries.shape[1] != self.col.dim:
            raise InvalidInput(f"query dimension {queries.shape[1]} != collection's {self.col.dim}", "vectors")
        return normalized(queries) if self.col.metric == "cosine" else np.ascontiguousarray(queries)

    def search(self, queries: np.ndarray, k: int, params: dict[str, Any]) -> list[list[tuple[str, float, Location]]]:
        return self.find(queries, k, params)[0]

    def find(self, queries: np.ndarray, k: int, params: dict[str, Any], f: filters.Filter | None = None,
             exact_below: int = 0) -> tuple[list[list[tuple[str, float, Location]]], str]:
        """Best-first (id, score, location) per query over every segment, among the rows `f` matches; never a
        dead row. And the plan: "exact" if some segment scored its matching rows one by one (fewer than
        `exact_below` matched, or its index found fewer than k of them), else "index"."""
        q = self.prepare_queries(queries)
        checked = check_params(self.kind, params)
        if self.count == 0:
            return [[] for _ in range(len(q))], "index"
        masks = self.masks(f)
        results = [s.search(q, k, checked, m, exact_below) for s, m in zip(self.sealed, masks, strict=False)]
        results.append(self.growing.search(q, k, {}, masks[-1]))
        parts = [c for c, _ in results]
        plan = "exact" if any(exact for _, exact in results) else "index"
        scores, segs, rows = merge(parts, k, larger_is_closer=self.col.metric != "l2")
        out: list[list[tuple[str, float, Location]]] = []
        growing = len(self.sealed)
        for srow, grow, rrow in zip(scores.tolist(), segs.tolist(), rows.tolist(), strict=True):
            hits = []
            for score, seg, row in zip(srow, grow, rrow, strict=True):
                if row < 0:
                    continue
                vid = self.growing.ids[row] if seg == growing else self.sealed[seg].id_at(row)
                if vid is not None:
                    hits.append((vid, score, (seg, row)))
            out.append(hits)
        return out, plan

    def mark_caught_up(self) -> None:
        self.caught_up_at = time.monotonic()

    def summary(self) -> dict[str, Any]:
        return {"count": self.count, "applied_lsn": self.applied, "uid": self.col.uid,
                "sealed_rows": self.sealed_rows, "growing_rows": len(self.growing.position),
                "segments": len(self.sealed), "manifest_gen": self.manifest.gen,
                "mapped_bytes": sum(s.file_bytes for s in self.sealed if s.mapped),
                "index_bytes": self.growing.rows * self.col.dim * 4 +
                sum(s.file_bytes for s in self.sealed if not s.mapped)}
