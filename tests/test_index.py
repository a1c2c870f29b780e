"""Unit tests of one index copy (worker/index.py): FAISS in this process, no Redis, no Celery."""

from __future__ import annotations

import numpy as np
import pytest

from common.codec import normalized
from common.collections import Collection
from common.errors import InvalidInput
from common.wal import Entry
from worker.index import CollectionIndex, build_index, use_blas_from


def _copy(metric: str, index: str = "Flat", dim: int = 64) -> CollectionIndex:
    return CollectionIndex(Collection("t", "u" * 32, dim, metric, index, 0.0))


def _add(copy: CollectionIndex, lsn: str, ids: list[str], vectors: np.ndarray) -> None:
    copy.apply(Entry(lsn, "add", ids, np.ascontiguousarray(vectors, dtype="<f4").tobytes(), "job"))


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_batched_and_lone_flat_searches_agree_exactly(metric: str) -> None:
    """Coalesced searches run as one FAISS call (the BLAS path); a lone one does not. Ids and scores must
    not depend on that."""
    use_blas_from(4)
    rng = np.random.default_rng(0)
    copy = _copy(metric)
    data = rng.standard_normal((20_000, 64)).astype(np.float32)
    data[5] = data[4]  # an exact tie
    _add(copy, "1-0", [str(i) for i in range(len(data))], normalized(data) if metric == "cosine" else data)
    queries = rng.standard_normal((100, 64)).astype(np.float32)
    queries[0] = data[4]
    batch = copy.search(queries, 10, {})
    assert batch == [copy.search(queries[i : i + 1], 10, {})[0] for i in range(100)]
    assert [h[0] for h in batch[0][:2]] == ["4", "5"]


@pytest.mark.parametrize("index", ["Flat", "HNSW16"])
def test_upsert_and_delete_leave_tombstones_that_search_skips(index: str) -> None:
    rng = np.random.default_rng(1)
    copy = _copy("l2", index, dim=8)
    data = rng.standard_normal((50, 8)).astype(np.float32)
    _add(copy, "1-0", [f"v{i}" for i in range(50)], data)
    _add(copy, "2-0", ["v0"], data[:1] + 100)
    copy.apply(Entry("3-0", "del", ["v1"], b"", "job"))
    assert copy.count == 49 and copy.dead == {0, 1} and copy.applied == "3-0"
    hits = copy.search(data[:2], 5, {})
    assert all(h[0] not in ("v1",) for row in hits for h in row)
    assert hits[0][0][0] != "v0"
    assert copy.search(data[:1] + 100, 1, {})[0][0][0] == "v0"
    compact = copy.compacted()
    assert not compact.dead and compact.count == 49 and compact.index.ntotal == 49


def test_k_beyond_count_never_returns_minus_one() -> None:
    copy = _copy("l2", dim=4)
    assert copy.search(np.ones((2, 4), np.float32), 5, {}) == [[], []]
    _add(copy, "1-0", ["a", "b"], np.eye(2, 4, dtype=np.float32))
    assert [h[0] for h in copy.search(np.ones((1, 4), np.float32), 50, {})[0]] == ["a", "b"]


@pytest.mark.parametrize(("description", "field"), [("NoSuch", "index"), ("IVF16,Flat", "index"),
                                                    ("IVF99999999,Flat", "index"), ("IDMap,Flat", "index")])
def test_build_index_refusals_name_the_field(description: str, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        build_index(8, "l2", description)
    assert info.value.field == field


def test_search_parameters_must_fit_the_index() -> None:
    flat = _copy("l2", dim=4)
    _add(flat, "1-0", ["a"], np.ones((1, 4), np.float32))
    with pytest.raises(InvalidInput) as info:
        flat.search(np.ones((1, 4), np.float32), 1, {"efSearch": 8})
    assert info.value.field == "params.efSearch"
    hnsw = _copy("l2", "HNSW16", dim=4)
    _add(hnsw, "1-0", ["a"], np.ones((1, 4), np.float32))
    assert hnsw.search(np.ones((1, 4), np.float32), 1, {"efSearch": 8})[0][0][0] == "a"
