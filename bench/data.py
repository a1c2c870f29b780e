"""Seeded clustered data, exact ground truth and recall. numpy only: the benchmark's own process never imports
faiss, so nothing it forks or spawns can inherit OpenMP state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Dataset:
    vectors: np.ndarray  # (n, dim) float32; the id of row i is str(i)
    queries: np.ndarray  # (nq, dim) float32, drawn like the data but not from it
    truth: np.ndarray  # (nq, k) int64: exact nearest rows by squared L2, best first


def clustered(n: int, dim: int, nq: int, seed: int, clusters: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs around random centres: near neighbours are meaningful (unlike uniform noise) and approximate
    indexes have something to get wrong. Queries come from the same mixture."""
    rng = np.random.default_rng(seed)
    clusters = clusters or max(8, int(np.sqrt(n) // 2))
    centres = rng.normal(0.0, 1.0, size=(clusters, dim)).astype(np.float32)

    def draw(count: int) -> np.ndarray:
        which = rng.integers(0, clusters, size=count)
        return (centres[which] + rng.normal(0.0, 0.35, size=(count, dim))).astype(np.float32)

    return draw(n), draw(nq)


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int, block: int = 128) -> np.ndarray:
    """Exact top-k rows by squared L2, in float64 so that rounding cannot reorder neighbours."""
    data = vectors.astype(np.float64)
    norms = np.einsum("ij,ij->i", data, data)
    k = min(k, len(data))
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), block):
        q = queries[start : start + block].astype(np.float64)
        dist = norms[None, :] - 2.0 * (q @ data.T)  # + |q|^2, the same for every row of a query
        part = np.argpartition(dist, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(dist, part, axis=1).argsort(axis=1, kind="stable")
        out[start : start + block] = np.take_along_axis(part, order, axis=1)
    return out


def make(n: int, dim: int, nq: int, k: int, seed: int) -> Dataset:
    vectors, queries = clustered(n, dim, nq, seed)
    return Dataset(vectors, queries, exact_top_k(vectors, queries, k))


def recall_at_k(found: dict[int, list[int]] | np.ndarray, truth: np.ndarray, k: int) -> float | None:
    """Mean |found ∩ true top-k| / k over the queries answered (`found`: query -> rows, best first)."""
    rows = found.items() if isinstance(found, dict) else enumerate(found.tolist())
    scores = [len(set(list(hits)[:k]) & set(truth[q, :k].tolist())) / k for q, hits in rows]
    return round(float(np.mean(scores)), 6) if scores else None


def as_rows(ids: dict[int, list[str]]) -> dict[int, list[int]]:
    return {q: [int(i) for i in hits] for q, hits in ids.items()}


def same_ids(a: dict[int, list[int]], b: dict[int, list[int]], samples: int = 3) -> dict[str, Any]:
    """How many queries answered by both got exactly the same ids in the same order (and a few that did not)."""
    common = sorted(set(a) & set(b))
    differ = [q for q in common if list(a[q]) != list(b[q])]
    return {"compared": len(common), "identical": len(common) - len(differ),
            "fraction": round((len(common) - len(differ)) / len(common), 6) if common else 0.0,
            "differ": [{"query": q, "a": list(a[q]), "b": list(b[q])} for q in differ[:samples]]}
