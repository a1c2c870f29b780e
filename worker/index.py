"""One collection's FAISS index copy inside one worker process, and how WAL entries change it.

Positions (FAISS's sequential ids) are assigned in log order, one `add` call per WAL entry, so every
copy that applies the same entries builds the same index. Upserts and deletes leave tombstones that
search excludes with an IDSelector, which works for Flat and HNSW alike (HNSW cannot remove).
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from common.codec import ZERO_LSN, Lsn, index_description_problem, normalized
from common.collections import Collection
from common.errors import InvalidInput
from common.wal import Entry

RERANK_EXTRA = 8  # extra Flat candidates re-scored, so near-ties at the k-th place resolve the same way

# FAISS takes its BLAS path for flat search when nq * d reaches one process-wide threshold; what pays off is a
# number of queries (on the benchmark machine: BLAS loses below 4 queries, wins 2x at 8), so the threshold is
# set from that count and the collection's dim before each search.
_blas_min_queries = 4


def use_blas_from(queries: int) -> None:
    global _blas_min_queries
    _blas_min_queries = max(1, int(queries))

_METRICS = {"l2": faiss.METRIC_L2, "ip": faiss.METRIC_INNER_PRODUCT, "cosine": faiss.METRIC_INNER_PRODUCT}


def build_index(dim: int, metric: str, description: str) -> faiss.Index:
    """An empty index, or InvalidInput naming `index` when FAISS refuses the description or needs training."""
    problem = index_description_problem(description)
    if problem:  # checked here too: any Python producer can send vecq.create_collection without the API
        raise InvalidInput(problem, "index")
    try:
        index = faiss.index_factory(dim, description, _METRICS[metric])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "refused"
        raise InvalidInput(f"FAISS cannot build index {description!r}: {first}", "index") from None
    if not index.is_trained:
        raise InvalidInput(f"index {description!r} needs training, which vecq does not support yet", "index")
    if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        raise InvalidInput("IDMap is managed by vecq; give the index without it", "index")
    return index


def search_parameters(index: faiss.Index, params: dict[str, Any], selector: faiss.IDSelector | None):
    """Per-query parameters as SearchParameters, never by mutating the shared index."""
    unknown = set(params) - {"efSearch", "nprobe"}
    if unknown:
        raise InvalidInput(f"unknown search parameter {sorted(unknown)[0]!r}", f"params.{sorted(unknown)[0]}")
    if isinstance(index, faiss.IndexHNSW):
        if "nprobe" in params:
            raise InvalidInput("nprobe applies to IVF indexes only", "params.nprobe")
        sp = faiss.SearchParametersHNSW()
        if "efSearch" in params:
            sp.efSearch = int(params["efSearch"])
    elif isinstance(index, faiss.IndexIVF):
        if "efSearch" in params:
            raise InvalidInput("efSearch applies to HNSW indexes only", "params.efSearch")
        sp = faiss.SearchParametersIVF()
        if "nprobe" in params:
            sp.nprobe = int(params["nprobe"])
    else:
        if params:
            name = sorted(params)[0]
            raise InvalidInput(f"{name} does not apply to this index", f"params.{name}")
        if selector is None:
            return None
        sp = faiss.SearchParameters()
    if selector is not None:
        sp.sel = selector
    return sp


def reseed_hnsw(index: faiss.Index, ntotal: int) -> None:
    """HNSW draws each new node's level from an RNG that write_index does not save, so a copy loaded from a
    snapshot would draw other levels than the copy that wrote it and the graphs (and results) would drift
    apart. Seeding it from the position before every add makes levels a function of the log alone."""
    if isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.rng = faiss.RandomGenerator(12345 + ntotal)  # 12345: faiss's own default seed


class CollectionIndex:
    def __init__(self, col: Collection, index: faiss.Index | None = None) -> None:
        self.col = col
        self.index = index if index is not None else build_index(col.dim, col.metric, col.index)
        self.ids: list[str | None] = []  # position -> external id (None once tombstoned)
        self.position: dict[str, int] = {}  # live external id -> position
        self.dead: set[int] = set()
        self.applied: Lsn = ZERO_LSN
        self.trim_mark: Lsn = ZERO_LSN
        self._selector: tuple[Any, Any] | None = None  # (IDSelectorNot, IDSelectorBatch): both kept alive

    @property
    def count(self) -> int:
        return len(self.position)

    @property
    def rebuilt_by_snapshots(self) -> bool:
        """HNSW built by many adds (one per WAL entry) is a worse graph than one add of everything (recall@10
        0.955 vs 0.985 at efSearch 64 on 100k x 128 in `make bench`): snapshots rebuild it in one add, and
        every copy then reloads that graph."""
        return isinstance(self.index, faiss.IndexHNSW)

    def apply(self, entry: Entry) -> None:
        if entry.op == "add":
            self._add(entry.ids, np.frombuffer(entry.vectors, dtype="<f4").reshape(-1, self.col.dim))
        elif entry.op == "del":
            for vid in entry.ids:
                pos = self.position.pop(vid, None)
                if pos is not None:
                    self._bury(pos)
        self.applied = entry.lsn

    def _add(self, ids: list[str], vectors: np.ndarray) -> None:
        start = self.index.ntotal
        for vid in ids:
            old = self.position.get(vid)
            if old is not None:
                self._bury(old)
        reseed_hnsw(self.index, start)
        self.index.add(vectors)
        self.ids.extend(ids)
        for offset, vid in enumerate(ids):
            self.position[vid] = start + offset

    def _bury(self, pos: int) -> None:
        self.dead.add(pos)
        self.ids[pos] = None
        self._selector = None

    def selector(self) -> faiss.IDSelector | None:
        if not self.dead:
            return None
        if self._selector is None:
            dead = np.fromiter(self.dead, dtype=np.int64, count=len(self.dead))
            batch = faiss.IDSelectorBatch(len(dead), faiss.swig_ptr(dead))
            self._selector = (faiss.IDSelectorNot(batch), batch)
        return self._selector[0]

    def prepare_queries(self, queries: np.ndarray) -> np.ndarray:
        if queries.shape[1] != self.col.dim:
            raise InvalidInput(f"query dimension {queries.shape[1]} != collection's {self.col.dim}", "vectors")
        return normalized(queries) if self.col.metric == "cosine" else np.ascontiguousarray(queries)

    def search(self, queries: np.ndarray, k: int, params: dict[str, Any]) -> list[list[tuple[str, float, int]]]:
        """Best-first (id, score, position) per query; never a -1 or a tombstone."""
        q = self.prepare_queries(queries)
        sp = search_parameters(self.index, params, self.selector())
        if self.index.ntotal == 0 or not self.position:
            return [[] for _ in range(len(q))]
        exact = isinstance(self.index, faiss.IndexFlat)
        k_eff = min(k + RERANK_EXTRA if exact else k, self.index.ntotal)
        faiss.cvar.distance_compute_blas_threshold = _blas_min_queries * self.col.dim
        distances, labels = self.index.search(q, k_eff, params=sp)
        if exact:
            distances, labels = self._rerank(q, labels, k)
        out: list[list[tuple[str, float, int]]] = []
        for drow, lrow in zip(distances, labels, strict=True):
            hits = []
            for d, pos in zip(drow.tolist(), lrow.tolist(), strict=True):
                if pos < 0:
                    continue
                vid = self.ids[pos]
                if vid is not None:
                    hits.append((vid, d, pos))
            out.append(hits)
        return out

    def _rerank(self, q: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact Flat scores that do not depend on the batch. FAISS computes a batch of queries through BLAS
        (nq >= blas_min_queries) and a lone query without, and the two round differently, so near-ties could
        swap between a coalesced and a lone search. Recomputing the top k + RERANK_EXTRA candidates row by row
        makes ids and scores the same however the queries were batched."""
        valid = labels >= 0
        candidates = self.index.reconstruct_batch(np.where(valid, labels, 0).ravel()).reshape(*labels.shape, -1)
        if self.index.metric_type == faiss.METRIC_L2:
            scores = ((candidates - q[:, None, :]) ** 2).sum(-1)
            key = scores
        else:
            scores = (candidates * q[:, None, :]).sum(-1)
            key = -scores
        order = np.lexsort((labels, np.where(valid, key, np.inf)))[:, :k]
        return np.take_along_axis(scores, order, -1), np.take_along_axis(labels, order, -1)

    def vector(self, pos: int) -> list[float]:
        return self.index.reconstruct(int(pos)).tolist()

    def live_vectors(self) -> tuple[list[str], np.ndarray]:
        """Live ids and their vectors in position order: what a compacted snapshot keeps."""
        positions = sorted(self.position.values())
        if not positions:
            return [], np.zeros((0, self.col.dim), dtype=np.float32)
        every = self.index.reconstruct_n(0, self.index.ntotal)
        ids = [self.ids[p] for p in positions]
        return ids, every[positions]  # type: ignore[return-value]

    def compacted(self) -> CollectionIndex:
        """A copy without tombstones: live vectors re-added in position order."""
        fresh = CollectionIndex(self.col)
        ids, vectors = self.live_vectors()
        if ids:
            fresh._add(ids, vectors)  # type: ignore[arg-type]
        fresh.applied, fresh.trim_mark = self.applied, self.trim_mark
        return fresh
