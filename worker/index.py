"""FAISS for vecq: what a collection's index spec can do, how to build it, and per-search parameters.

Only worker processes import faiss. A spec is any `index_factory` description that supports `add` and search
with an IDSelector (deletes and upserts are tombstones excluded by one), trained specs included: they are
trained on the collection's own rows when its first segment is sealed (worker/sealing.py). Until then, and for
every write after the newest seal, rows are searched exactly in a growing Flat segment (worker/segment.py).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import faiss
import numpy as np

from common.codec import index_description_problem
from common.errors import InvalidInput

SWIG: Any = faiss  # what faiss has and its stubs lack (SearchParametersHNSW, RandomGenerator)

METRICS = {"l2": faiss.METRIC_L2, "ip": faiss.METRIC_INNER_PRODUCT, "cosine": faiss.METRIC_INNER_PRODUCT}
TRAIN_SEED = 1234  # the training sample is drawn with a fixed seed, so every build of the same rows is the same
KMEANS_POINTS_PER_CENTROID = 39  # below this FAISS warns that k-means is under-trained

# FAISS takes its BLAS path for flat search when nq * d reaches one process-wide threshold; what pays off is a
# number of queries (on the benchmark machine: BLAS loses below 4 queries, wins 2x at 8), so the threshold is
# set from that count and the collection's dim before each search.
_blas_min_queries = 4


def use_blas_from(queries: int) -> None:
    global _blas_min_queries
    _blas_min_queries = max(1, int(queries))


def set_blas_threshold(dim: int) -> None:
    faiss.cvar.distance_compute_blas_threshold = _blas_min_queries * dim


def factory(dim: int, metric: str, spec: str) -> faiss.Index:
    """An empty index, or InvalidInput naming `index` when FAISS refuses the description."""
    problem = index_description_problem(spec)
    if problem:  # checked here too: any Python producer can send vecq.create_collection without the API
        raise InvalidInput(problem, "index")
    try:
        index = faiss.index_factory(dim, spec, METRICS[metric])
    except RuntimeError as exc:
        raise InvalidInput(f"FAISS cannot build index {spec!r}: {_faiss_reason(exc)}", "index") from None
    if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        raise InvalidInput("IDMap is managed by vecq; give the index without it", "index")
    for part in (innermost(index), getattr(innermost(index), "storage", None)):
        if part is not None and hasattr(faiss.downcast_index(part), "do_polysemous_training"):
            # Polysemous training (seconds of simulated annealing) serves polysemous search, which vecq never
            # runs: the index_factory default made every PQ probe and seal pay for it.
            polysemous: Any = faiss.downcast_index(part)  # a PQ of some kind: the attribute is its own
            polysemous.do_polysemous_training = False
    return index


def _faiss_reason(exc: BaseException) -> str:
    text = str(exc).strip()
    last = text.splitlines()[-1] if text else "refused"
    return last.split("Error: ", 1)[-1][:200]


def innermost(index: faiss.Index) -> faiss.Index:
    """The index that does the searching, under pre-transforms (PCA, OPQ) and refinement."""
    index = faiss.downcast_index(index)
    while True:
        if isinstance(index, faiss.IndexPreTransform):
            index = faiss.downcast_index(index.index)
        elif isinstance(index, faiss.IndexRefine):
            index = faiss.downcast_index(index.base_index)
        else:
            return index


@dataclass(frozen=True)
class SpecKind:
    """What vecq needs to know of a spec, read off an empty index of it."""

    family: str  # "flat" (exact: ids and scores re-scored row by row), "hnsw", "ivf" or "other"
    trains: bool
    train_rows: int  # rows needed to train it (0 if it needs no training)
    nlist: int = 0

    @property
    def params(self) -> frozenset[str]:
        return frozenset({"hnsw": {"efSearch"}, "ivf": {"nprobe"}}.get(self.family, set()))


@lru_cache(maxsize=256)
def spec_kind(dim: int, metric: str, spec: str) -> SpecKind:
    index = factory(dim, metric, spec)
    inner = innermost(index)
    exact = isinstance(index, faiss.IndexFlat)
    family = ("flat" if exact else "hnsw" if isinstance(inner, faiss.IndexHNSW)
              else "ivf" if isinstance(inner, faiss.IndexIVF) else "other")
    nlist = int(inner.nlist) if isinstance(inner, faiss.IndexIVF) else 0
    return SpecKind(family=family, trains=not index.is_trained, train_rows=training_rows(spec, nlist)
                    if not index.is_trained else 0, nlist=nlist)


def largest_kmeans(spec: str, nlist: int) -> int:
    """Centroids of the largest k-means training runs: IVF lists, or 2^bits per PQ sub-quantizer (8 bits unless
    `PQmxb` says otherwise; OPQ trains a PQ of 8 bits for its rotation), or residual quantizers' `xb`."""
    bits = [int(b or 8) for _, b in re.findall(r"PQ(\d+)(?:x(\d+))?", spec)]
    bits += [int(b) for b in re.findall(r"(?:RQ|LSQ)\d+x(\d+)", spec)]
    return max(nlist, 1, *(2**b for b in bits))


def training_rows(spec: str, nlist: int) -> int:
    """Rows to train on: 39 points per centroid of the largest k-means in the spec, at least 1,000 for the rest
    (SQ ranges, PCA rotations)."""
    return max(1000, KMEANS_POINTS_PER_CENTROID * largest_kmeans(spec, nlist))


def probe(dim: int, metric: str, spec: str) -> SpecKind:
    """Refuse, naming `index`, a spec that cannot serve: every spec must train (if it needs to), add, search with
    an IDSelector, and be written and read back. Tried on a small index of the same shape (IVF lists cut to 16, so
    that training takes milliseconds), before the collection exists."""
    kind = spec_kind(dim, metric, spec)
    small = re.sub(r"IVF(\d+)", lambda m: f"IVF{min(int(m.group(1)), 16)}", spec)
    index = factory(dim, metric, small)
    # As many rows as the largest k-means has centroids (FAISS refuses fewer), not 39 per centroid: the probe
    # checks what the spec can do, not how well it is trained, and runs on every collection's creation.
    rows = max(64, largest_kmeans(small, min(kind.nlist, 16))) if kind.trains else 64
    if rows * dim * 4 > 512 * 1024 * 1024:
        raise InvalidInput(f"index {spec!r} at dim {dim} needs {rows:,} rows to train: too many", "index")
    data = np.random.default_rng(TRAIN_SEED).standard_normal((rows, dim)).astype(np.float32)
    if metric == "cosine":
        data /= np.linalg.norm(data, axis=1, keepdims=True)
    try:
        if kind.trains:
            index.train(data)
        index.add(data)
        keep = faiss.IDSelectorNot(faiss.IDSelectorRange(0, 1))
        _, labels = index.search(data[:2], 3, params=search_parameters(index, {}, keep))
        if (labels == 0).any():
            raise RuntimeError("the selector was ignored")
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "probe.faiss")
            faiss.write_index(index, path)
            read_back(path)
    except RuntimeError as exc:
        raise InvalidInput(f"index {spec!r} cannot serve vecq (search with deletes, add, save): "
                           f"{_faiss_reason(exc)}", "index") from None
    return kind


def read_back(path: str) -> tuple[faiss.Index, bool]:
    """Open a segment's index read-only, mapped from the file when FAISS can (then its codes and graph live in
    the page cache, shared by every process on the host); else read into this process. Returns (index, mapped)."""
    try:
        return faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC), True
    except RuntimeError:
        return faiss.read_index(path, faiss.IO_FLAG_READ_ONLY), False


def check_params(kind: SpecKind, params: dict[str, Any]) -> dict[str, int]:
    """The per-request parameters this spec takes, or InvalidInput naming the one it does not."""
    for name in sorted(params):
        if name not in {"efSearch", "nprobe"}:
            raise InvalidInput(f"unknown search parameter {name!r}", f"params.{name}")
        if name not in kind.params:
            applies = "HNSW" if name == "efSearch" else "IVF"
            raise InvalidInput(f"{name} applies to {applies} indexes only", f"params.{name}")
    return {k: int(v) for k, v in params.items()}


def search_parameters(index: faiss.Index, params: dict[str, int], selector: faiss.IDSelector | None) -> Any:
    """Per-query parameters as SearchParameters, never by mutating the shared (and mapped) index. The wrappers
    (pre-transform, refine) pass theirs down to the index inside, whose class must match its own."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        inner = search_parameters(index.index, params, selector)
        if inner is None:
            return None
        sp: Any = faiss.SearchParametersPreTransform()  # SWIG objects the stubs describe only in part
        sp.index_params = inner
        sp.keep_alive = inner  # SWIG does not hold the inner object
        return sp
    if isinstance(index, faiss.IndexRefine):
        inner = search_parameters(index.base_index, params, selector)
        sp = faiss.IndexRefineSearchParameters()
        if inner is not None:
            sp.base_index_params = inner
            sp.keep_alive = inner
        if selector is not None:
            sp.sel = selector
        return sp
    if isinstance(index, faiss.IndexHNSW):
        sp = SWIG.SearchParametersHNSW()
        if "efSearch" in params:
            sp.efSearch = params["efSearch"]
    elif isinstance(index, faiss.IndexIVF):
        sp = faiss.SearchParametersIVF()
        if "nprobe" in params:
            sp.nprobe = min(params["nprobe"], int(index.nlist))
    elif selector is None:
        return None
    else:
        sp = faiss.SearchParameters()
    if selector is not None:
        sp.sel = selector
    return sp


def reseed_hnsw(index: faiss.Index, ntotal: int) -> None:
    """HNSW draws each new node's level from an RNG; seeding it from the position before the add makes a built
    segment a function of its rows alone, so a seal redone after a crash builds the very same graph."""
    inner = innermost(index)
    if isinstance(inner, faiss.IndexHNSW):
        hnsw: Any = inner.hnsw
        hnsw.rng = SWIG.RandomGenerator(12345 + ntotal)  # 12345: faiss's own default seed


def training_sample(n: int, wanted: int) -> np.ndarray:
    """Row numbers of the training sample: all rows, or `wanted` of them drawn with a fixed seed, in order."""
    if n <= wanted:
        return np.arange(n)
    return np.sort(np.random.default_rng(TRAIN_SEED).choice(n, size=wanted, replace=False))


def trained_empty(dim: int, metric: str, spec: str, vectors: np.ndarray, sample_rows: int) -> faiss.Index:
    """An empty index of `spec`, trained on a sample of `vectors`: the template every segment is built from."""
    index = factory(dim, metric, spec)
    if not index.is_trained:
        index.train(np.ascontiguousarray(vectors[training_sample(len(vectors), sample_rows)]))
    return index


def build(template: faiss.Index, vectors: np.ndarray, threads: int = 0) -> faiss.Index:
    """A segment's index: a copy of the (trained) empty template with all its rows added in one call, on
    `threads` OpenMP threads (0: every core) if the result does not depend on them. An HNSW graph does (threads
    insert nodes in whatever order they get to them), and a seal redone after a crash must build the same graph:
    HNSW keeps this thread's count."""
    index = faiss.clone_index(template)
    reseed_hnsw(index, 0)
    if len(vectors):
        parallel = not isinstance(innermost(index), faiss.IndexHNSW)
        count = (threads or os.cpu_count() or 1) if parallel else faiss.omp_get_max_threads()
        with openmp_threads(count):
            index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


@contextmanager
def openmp_threads(threads: int) -> Iterator[None]:
    """Run FAISS on `threads` OpenMP threads for a while (this thread only: faiss.omp_set_num_threads sets the
    calling thread's count), then back to what it was: the searches after a seal keep VECQ_OMP_THREADS."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def flat(dim: int, metric: str) -> faiss.IndexFlat:
    return faiss.IndexFlat(dim, METRICS[metric])
