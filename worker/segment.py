"""The two kinds of segment a worker searches: sealed (mapped read-only from the segment store) and growing.

A row is addressed by (segment, row). An external id is live in at most one row of a collection; a row that a
later write replaced or deleted is dead, and searches exclude it with an IDSelector (HNSW cannot remove, and
sealed files are never written). Finding an id's row in a sealed segment goes through a sorted array of 64-bit
id hashes, mapped from the file like everything else of the segment, so a worker holds no per-id Python object
for sealed rows: a million-row segment costs a worker about one byte per row (its dead-row mask).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from common.segments import SegmentInfo
from worker.index import flat, search_parameters, set_blas_threshold
from worker.payload import GrowingPayload, PayloadIndex

RERANK_EXTRA = 8  # extra Flat candidates re-scored, so near-ties at the k-th place resolve the same way


def id_keys(ids: Iterable[str]) -> np.ndarray:
    """64-bit keys of ids (blake2b: the same in every process, unlike hash())."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little")
                        for i in ids), dtype=np.uint64)


@dataclass
class Candidates:
    """One segment's best rows for each query: scores and rows, -1 where it has fewer."""

    scores: np.ndarray
    rows: np.ndarray


def exact_scores(metric_type: int, candidates: np.ndarray, q: np.ndarray) -> np.ndarray:
    if metric_type == faiss.METRIC_L2:
        return ((candidates - q[:, None, :]) ** 2).sum(-1)
    return (candidates * q[:, None, :]).sum(-1)


def rerank(metric_type: int, q: np.ndarray, rows: np.ndarray, vectors_of: Any, k: int) -> Candidates:
    """Exact Flat scores that do not depend on the batch. FAISS computes a batch of queries through BLAS and a lone
    query without, and the two round differently, so near-ties could swap between a coalesced and a lone search.
    Re-scoring the top k + RERANK_EXTRA candidates row by row makes ids and scores the same however the queries were
    batched (and however the rows are split into segments)."""
    valid = rows >= 0
    candidates = vectors_of(np.where(valid, rows, 0).ravel()).reshape(*rows.shape, -1)
    scores = exact_scores(metric_type, candidates, q)
    key = scores if metric_type == faiss.METRIC_L2 else -scores
    order = np.lexsort((rows, np.where(valid, key, np.inf)))[:, :k]
    return Candidates(np.take_along_axis(scores, order, -1), np.where(
        np.take_along_axis(valid, order, -1), np.take_along_axis(rows, order, -1), -1))


class Segment:
    """What sealed and growing segments share: an index, a dead-row mask, search."""

    index: faiss.Index
    exact: bool  # a Flat index: candidates are re-scored row by row (rerank)
    payload: PayloadIndex | GrowingPayload  # the rows' metadata by field, for filters

    def __init__(self) -> None:
        self._selector: tuple[Any, ...] | None = None

    @property
    def rows(self) -> int:
        return int(self.index.ntotal)

    @property
    def dead_count(self) -> int:
        raise NotImplementedError

    @property
    def live(self) -> int:
        return self.rows - self.dead_count

    def dead_rows(self) -> np.ndarray:
        raise NotImplementedError

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def metadata_at(self, row: int) -> str | None:
        raise NotImplementedError

    def live_mask(self) -> np.ndarray:
        live = np.ones(self.rows, dtype=bool)
        live[self.dead_rows()] = False
        return live

    def selector(self) -> faiss.IDSelector | None:
        if not self.dead_count:
            return None
        if self._selector is None:
            self._selector = bitmap_selector(self.live_mask())
        return self._selector[0]

    def search(self, q: np.ndarray, k: int, params: dict[str, int], match: np.ndarray | None = None,
               exact_below: int = 0) -> tuple[Candidates, bool]:
        """The best k rows per query, among the rows `match` allows (a mask: a filter's rows) if given; and
        whether they were found by scoring the matching rows one by one instead of through the index. An
        approximate index runs that exact plan when fewer than `exact_below` rows match, and whenever its own
        search found fewer than k of at least k matching rows: a filter never costs hits."""
        allowed = self.live_mask() & match if match is not None else None
        count = int(allowed.sum()) if allowed is not None else self.live
        if count == 0:
            empty = np.full((len(q), 0), -1, dtype=np.int64)
            return Candidates(empty.astype(np.float32), empty), False
        if allowed is not None and not self.exact and count < exact_below:
            return self.brute_force(q, k, np.flatnonzero(allowed)), True
        selector = bitmap_selector(allowed) if allowed is not None else None
        sp = search_parameters(self.index, params, selector[0] if selector else self.selector())
        k_eff = min(k + RERANK_EXTRA if self.exact else k, self.rows)
        set_blas_threshold(self.index.d)
        scores, rows = self.index.search(q, k_eff, params=sp)
        if self.exact:
            return rerank(self.index.metric_type, q, rows, self.vectors, k), False
        if allowed is not None and ((rows >= 0).sum(axis=1) < min(k, count)).any():
            return self.brute_force(q, k, np.flatnonzero(allowed)), True
        return Candidates(scores, rows), False

    def brute_force(self, q: np.ndarray, k: int, rows: np.ndarray) -> Candidates:
        """Exact scores of `rows` (few: a filter's matches), best k per query."""
        vectors = self.vectors(rows)
        dots = q @ vectors.T
        if self.index.metric_type == faiss.METRIC_L2:
            scores = np.maximum((q * q).sum(1)[:, None] + (vectors * vectors).sum(1)[None, :] - 2 * dots, 0)
            key = scores
        else:
            scores, key = dots, -dots
        top = min(k, len(rows))
        part = np.argpartition(key, top - 1, axis=1)[:, :top] if top < len(rows) else \
            np.tile(np.arange(len(rows)), (len(q), 1))
        order = np.take_along_axis(part, np.argsort(np.take_along_axis(key, part, 1), axis=1, kind="stable"), 1)
        return Candidates(np.take_along_axis(scores, order, 1).astype(np.float32), rows[order])


class SealedSegment(Segment):
    """A segment from the store: index, raw vectors, ids and id keys all mapped read-only from its files."""

    def __init__(self, info: SegmentInfo, index: faiss.Index, mapped: bool, vectors: np.ndarray,
                 id_bytes: np.ndarray, id_offsets: np.ndarray, keys: np.ndarray, key_rows: np.ndarray,
                 deleted: list[str]) -> None:
        super().__init__()
        self.info = info
        self.index = index
        self.mapped = mapped
        self.exact = isinstance(index, faiss.IndexFlat)
        self.raw = vectors  # the vectors as written: exact for any spec (PQ codes are not)
        self.id_bytes = id_bytes
        self.id_offsets = id_offsets
        self.keys = keys  # sorted id keys ...
        self.key_rows = key_rows  # ... and the row of each
        self.deleted = deleted  # ids this segment's range deleted: dead in older segments
        self.dead = np.zeros(self.rows, dtype=bool)
        self._dead_count = 0
        self.meta_bytes: np.ndarray = np.zeros(0, np.uint8)  # row -> metadata JSON text, like the ids
        self.meta_offsets: np.ndarray = np.zeros(self.rows + 1, np.int64)
        self.payload: PayloadIndex = PayloadIndex({})

    @property
    def dead_count(self) -> int:
        return self._dead_count

    def dead_rows(self) -> np.ndarray:
        return np.flatnonzero(self.dead)

    def live_mask(self) -> np.ndarray:
        return ~self.dead

    def id_at(self, row: int) -> str:
        return bytes(self.id_bytes[self.id_offsets[row]:self.id_offsets[row + 1]]).decode()

    def ids(self) -> list[str]:
        blob, offsets = bytes(self.id_bytes), self.id_offsets.tolist()
        return [blob[offsets[i]:offsets[i + 1]].decode() for i in range(self.rows)]

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.raw[rows], dtype=np.float32)

    def find(self, ids: Sequence[str], keys: np.ndarray | None = None) -> np.ndarray:
        """The live row of each id, -1 where it has none here."""
        keys = id_keys(ids) if keys is None else keys
        out = np.full(len(ids), -1, dtype=np.int64)
        if not self.rows or not len(keys):
            return out
        at = np.searchsorted(self.keys, keys)
        hit = np.flatnonzero((at < len(self.keys)) & (self.keys[np.minimum(at, len(self.keys) - 1)] == keys))
        for i in hit.tolist():  # a key match is an id match but for a 64-bit collision: checked
            j = int(at[i])
            while j < len(self.keys) and self.keys[j] == keys[i]:
                row = int(self.key_rows[j])
                if not self.dead[row] and self.id_at(row) == ids[i]:
                    out[i] = row
                    break
                j += 1
        return out

    def reopened(self) -> SealedSegment:
        """The same mapped files with no dead rows: dead rows depend on the newer segments and the log tail, which
        the copy that opens it works out again."""
        fresh = SealedSegment(self.info, self.index, self.mapped, self.raw, self.id_bytes, self.id_offsets,
                              self.keys, self.key_rows, self.deleted)
        fresh.meta_bytes, fresh.meta_offsets, fresh.payload = self.meta_bytes, self.meta_offsets, self.payload
        return fresh

    def metadata_at(self, row: int) -> str | None:
        text = bytes(self.meta_bytes[self.meta_offsets[row]:self.meta_offsets[row + 1]])
        return text.decode() if text else None

    def bury_overlap(self, newer: SealedSegment) -> None:
        """Mark dead the rows whose ids a newer segment wrote again (upserts) or deleted."""
        candidates = np.flatnonzero(np.isin(self.keys, newer.keys)) if len(newer.keys) else np.zeros(0, np.int64)
        rows = []
        for p in candidates:  # only the ids written in both: upserts across segments
            row = int(self.key_rows[p])
            vid = self.id_at(row)
            j = int(np.searchsorted(newer.keys, self.keys[p]))
            while j < len(newer.keys) and newer.keys[j] == self.keys[p]:
                if newer.id_at(int(newer.key_rows[j])) == vid:
                    rows.append(row)
                    break
                j += 1
        self.bury(np.array(rows, dtype=np.int64))
        if newer.deleted:
            self.bury(self.find(newer.deleted))

    def bury(self, rows: np.ndarray) -> None:
        rows = rows[rows >= 0]
        if len(rows):
            fresh = ~self.dead[rows]
            self.dead[rows] = True
            self._dead_count += int(fresh.sum())
            self._selector = None

    @property
    def file_bytes(self) -> int:
        return self.info.bytes


@dataclass
class GrowingSegment(Segment):
    """The log after the newest seal, in an exact Flat index of this process's own."""

    dim: int
    metric: str
    ids: list[str | None] = field(default_factory=list)  # row -> external id (None once dead)
    position: dict[str, int] = field(default_factory=dict)  # live id -> row
    metadata: list[str | None] = field(default_factory=list)  # row -> metadata JSON text
    payload: GrowingPayload = field(default_factory=GrowingPayload)
    dead_flags: bytearray = field(default_factory=bytearray)  # row -> 1 once dead
    deleted: set[str] = field(default_factory=set)  # ids whose last write here is a delete (see SealedSegment)
    written_rows: int = 0  # rows added and ids deleted by the writes applied here: what a seal of them covers

    def __post_init__(self) -> None:
        super().__init__()
        self.index = flat(self.dim, self.metric)
        self.exact = True

    @property
    def dead_count(self) -> int:
        return self.rows - len(self.position)

    def dead_rows(self) -> np.ndarray:
        return np.flatnonzero(np.frombuffer(bytes(self.dead_flags), dtype=bool))

    def live_mask(self) -> np.ndarray:
        return ~np.frombuffer(bytes(self.dead_flags), dtype=bool)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        return self.index.reconstruct_batch(np.asarray(rows, dtype=np.int64))

    def metadata_at(self, row: int) -> str | None:
        return self.metadata[row]

    def add(self, ids: list[str], vectors: np.ndarray, metadata: list[str | None] | None = None) -> None:
        """Append rows whose ids are not live here (the caller buried them first). In bulk, not row by row: a
        seal replays a whole upload through here, and a per-row Python step cost seconds per million rows."""
        start = self.rows
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.ids.extend(ids)
        self.metadata.extend(metadata if metadata is not None else [None] * len(ids))
        self.dead_flags.extend(bytes(len(ids)))
        self.position.update(zip(ids, range(start, start + len(ids)), strict=True))
        if self.deleted:
            self.deleted.difference_update(ids)
        if metadata is not None and any(metadata):
            for offset, text in enumerate(metadata):
                if text:
                    self.payload.add(start + offset, text)
        self._selector = None

    def bury_many(self, ids: list[str]) -> list[str]:
        """Bury the live rows of `ids` here; returns the ids that had none (in order). Checked as one set
        intersection first: the ids of a fresh upload are new, and need no step each."""
        live = self.position.keys() & ids if self.position else set()
        if not live:
            return ids
        for vid in live:
            self.bury(vid)
        return [vid for vid in ids if vid not in live]

    def bury(self, vid: str) -> bool:
        row = self.position.pop(vid, None)
        if row is None:
            return False
        self.ids[row] = None
        self.dead_flags[row] = 1
        self._selector = None
        return True

    def live_rows(self) -> tuple[list[str], np.ndarray, list[str | None]]:
        """Live ids, their vectors and metadata, in log order: what a seal of this segment keeps."""
        if not self.position:
            return [], np.zeros((0, self.dim), dtype=np.float32), []
        if len(self.position) == self.rows:  # no dead row (an upload into a new collection): every row, as is
            return list(self.ids), self.index.reconstruct_n(0, self.rows), list(self.metadata)  # type: ignore[arg-type]
        rows = sorted(self.position.values())
        return ([self.ids[r] for r in rows], self.vectors(np.array(rows, dtype=np.int64)),  # type: ignore[misc]
                [self.metadata[r] for r in rows])


def bitmap_selector(allowed: np.ndarray) -> tuple[Any, np.ndarray]:
    """A FAISS selector of the rows `allowed` marks, and the bitmap it reads (keep both alive)."""
    bits = np.packbits(allowed, bitorder="little")
    return faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits)), bits


def merge(per_segment: list[Candidates], k: int, larger_is_closer: bool) -> tuple[np.ndarray, np.ndarray,
                                                                                   np.ndarray]:
    """The best k over all segments per query: (scores, segment index, row), -1 rows where fewer. Ties go to the
    older segment, then the lower row, which is log order: the order a single index would have given."""
    scores = np.concatenate([c.scores for c in per_segment], axis=1)
    rows = np.concatenate([c.rows for c in per_segment], axis=1)
    segs = np.concatenate([np.full(c.rows.shape, i, dtype=np.int64) for i, c in enumerate(per_segment)], axis=1)
    valid = rows >= 0
    key = np.where(valid, -scores if larger_is_closer else scores, np.inf)
    order = np.lexsort((rows, segs, key))[:, :k]
    take = lambda a: np.take_along_axis(a, order, -1)  # noqa: E731
    return take(scores), take(np.where(valid, segs, -1)), take(np.where(valid, rows, -1))
