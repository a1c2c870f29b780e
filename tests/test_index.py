"""Unit tests of one collection copy (worker/collection_copy.py, worker/segment.py, worker/sealing.py's builders):
FAISS and segment files in this process, no Redis, no Celery."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from common import segments
from common.codec import normalized
from common.collections import Collection
from common.errors import InvalidInput
from common.segments import Manifest, SegmentInfo
from common.wal import Entry
from worker import index as worker_index
from worker import sealing
from worker.collection_copy import CollectionCopy
from worker.index import probe, spec_kind, use_blas_from
from worker.segment_files import SegmentRows

faiss.omp_set_num_threads(1)  # as in the workers; OpenMP threads spin against the other test processes here


def _col(metric: str = "l2", index: str = "Flat", dim: int = 64) -> Collection:
    return Collection("t", "u" * 32, dim, metric, index, 0.0)


def _add(lsn: str, ids: list[str], vectors: np.ndarray) -> Entry:
    return Entry(lsn, "add", ids, np.ascontiguousarray(vectors, dtype="<f4").tobytes(), "job")


def _seal(store: Path, copy: CollectionCopy, log: list[Entry]) -> CollectionCopy:
    """What the seal job does, without Redis: the growing part becomes a segment; the copy reopens and replays
    the log after it."""
    col, manifest = copy.col, copy.manifest
    ids, vectors, metadata = copy.growing.live_rows()
    tmpl = sealing.template(store, col, copy, manifest, vectors, 1000)
    assert tmpl is not None
    info = sealing.write_segment(store, col, tmpl, SegmentRows(ids, vectors, sorted(copy.growing.deleted), metadata),
                                 manifest.sealed_lsn, copy.applied)
    new = Manifest(gen=manifest.gen + 1, sealed_lsn=copy.applied, segments=(*manifest.segments, info),
                   trained=tmpl.name, trained_rows=tmpl.rows)
    fresh = CollectionCopy.open(store, col, new, {s.info.id: s for s in copy.sealed})
    for entry in log:
        fresh.apply(entry)
    return fresh


def _replay(col: Collection, log: list[Entry]) -> CollectionCopy:
    copy = CollectionCopy(col, Manifest(), [])
    for entry in log:
        copy.apply(entry)
    return copy


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_batched_and_lone_flat_searches_agree_exactly(metric: str) -> None:
    """Coalesced searches run as one FAISS call (the BLAS path); a lone one does not. Ids and scores must
    not depend on that."""
    use_blas_from(4)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((20_000, 64)).astype(np.float32)
    data[5] = data[4]  # an exact tie
    copy = _replay(_col(metric), [_add("1-0", [str(i) for i in range(len(data))],
                                       normalized(data) if metric == "cosine" else data)])
    queries = rng.standard_normal((100, 64)).astype(np.float32)
    queries[0] = data[4]
    batch = copy.search(queries, 10, {})
    assert batch == [copy.search(queries[i : i + 1], 10, {})[0] for i in range(100)]
    assert [h[0] for h in batch[0][:2]] == ["4", "5"]


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_flat_results_identical_across_three_seals_with_upserts_and_deletes(tmp_path: Path, metric: str) -> None:
    """Three sealed segments plus a growing one, with upserts and deletes that touch every segment, answer with
    exactly the ids and scores of one index that applied the whole log (what vecq gave before segments)."""
    rng = np.random.default_rng(7)
    col = _col(metric, dim=16)
    log: list[Entry] = []
    copy = CollectionCopy(col, Manifest(), [])
    seq = 0

    def write(entry: Entry) -> None:
        log.append(entry)
        copy.apply(entry)

    for phase in range(4):
        for _ in range(5):
            seq += 1
            ids = [f"v{int(i)}" for i in rng.choice(3000, size=200, replace=False)]  # upserts across segments
            write(_add(f"{seq}-0", ids, rng.standard_normal((200, 16)).astype(np.float32)))
            seq += 1
            write(Entry(f"{seq}-0", "del", [f"v{int(i)}" for i in rng.choice(3000, size=30)], b"", "job"))
        if phase < 3:
            tail: list[Entry] = []
            copy = _seal(tmp_path, copy, tail)
    assert len(copy.sealed) == 3 and copy.growing.rows > 0
    assert all(s.dead_count > 0 for s in copy.sealed[:2])
    reference = _replay(col, log)
    assert copy.count == reference.count
    queries = rng.standard_normal((50, 16)).astype(np.float32)
    got = [[(vid, score) for vid, score, _ in row] for row in copy.search(queries, 10, {})]
    want = [[(vid, score) for vid, score, _ in row] for row in reference.search(queries, 10, {})]
    assert got == want
    for vid in ("v1", "v2", "v3", "v2999"):
        loc, ref = copy.locate(vid), reference.locate(vid)
        assert (loc is None) == (ref is None)
        if loc is not None and ref is not None:
            assert copy.vector(loc) == reference.vector(ref)


def test_compaction_keeps_every_live_row_and_drops_the_dead(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    col = _col("l2", dim=8)
    copy = CollectionCopy(col, Manifest(), [])
    copy.apply(_add("1-0", [f"a{i}" for i in range(100)], rng.standard_normal((100, 8))))
    copy = _seal(tmp_path, copy, [])
    copy.apply(_add("2-0", [f"a{i}" for i in range(50)], rng.standard_normal((50, 8))))
    copy.apply(Entry("3-0", "del", ["a99"], b"", "job"))
    copy = _seal(tmp_path, copy, [])
    assert copy.sealed[0].dead_count == 51 and sealing.compaction_due(copy, 8, 0.2)
    ids: list[str] = []
    metadata: list[str | None] = []
    parts = []
    for segment in copy.sealed:
        live = np.flatnonzero(~segment.dead)
        ids += [segment.ids()[i] for i in live.tolist()]
        metadata += [segment.metadata_at(i) for i in live.tolist()]
        parts.append(segment.vectors(live))
    tmpl = sealing.template(tmp_path, col, copy, copy.manifest, np.concatenate(parts), 1000)
    assert tmpl is not None
    info = sealing.write_segment(tmp_path, col, tmpl, SegmentRows(ids, np.concatenate(parts), [], metadata),
                                 "0-0", "3-0")
    merged = CollectionCopy.open(tmp_path, col, Manifest(gen=9, sealed_lsn="3-0", segments=(info,)))
    assert merged.count == copy.count == 99 and merged.sealed[0].dead_count == 0
    queries = rng.standard_normal((5, 8)).astype(np.float32)
    assert [[h[:2] for h in row] for row in merged.search(queries, 20, {})] == \
        [[h[:2] for h in row] for row in copy.search(queries, 20, {})]


@pytest.mark.parametrize("spec", ["IVF16,Flat", "IVF8,PQ4", "OPQ4,IVF8,PQ4x4", "IVF8,SQ8", "PCA8,Flat",
                                  "HNSW16,SQ8", "RaBitQ"])
def test_trained_specs_are_accepted_and_trained_on_the_collections_rows(tmp_path: Path, spec: str) -> None:
    col = _col("l2", spec, dim=16)
    kind = probe(16, "l2", spec)
    assert kind.trains != ("HNSW16," in spec and "SQ" not in spec) or kind.trains
    rng = np.random.default_rng(5)
    data = rng.standard_normal((max(kind.train_rows, 2000), 16)).astype(np.float32)
    copy = _replay(col, [_add("1-0", [f"r{i}" for i in range(len(data))], data)])
    sealed = _seal(tmp_path, copy, [])
    assert sealed.sealed[0].rows == len(data) and sealed.count == len(data)
    if kind.trains:
        assert sealed.manifest.trained is not None
    hits = sealed.search(data[:20], 5, {"nprobe": 8} if "IVF" in spec else {})
    assert sum(row[0][0] == f"r{i}" for i, row in enumerate(hits)) >= 10  # the row itself is mostly first


@pytest.mark.parametrize("spec", ["NSG32", "LSH", "PQ4", "NoSuch", "IVF99999999,Flat", "IDMap,Flat"])
def test_specs_that_cannot_serve_are_refused_naming_index(spec: str) -> None:
    with pytest.raises(InvalidInput) as info:
        probe(16, "l2", spec)
    assert info.value.field == "index"


def test_pq_specs_skip_polysemous_training() -> None:
    """FAISS's index_factory turns on polysemous training for PQ (an annealing after k-means that only polysemous
    search uses, which vecq never runs): it made creating an `IVF1024,PQ32` collection at dim 128 take 72 s of a
    worker here, past the create request's default wait. vecq's factory (the probe's and every seal's) turns it
    off, and the probe still trains and adds."""
    for spec in ("IVF8,PQ4", "OPQ4,IVF8,PQ4x4", "HNSW16,PQ4"):
        raw = faiss.index_factory(16, spec)
        inner = worker_index.innermost(raw)
        inner = faiss.downcast_index(inner.storage) if isinstance(inner, faiss.IndexHNSW) else inner
        assert inner.do_polysemous_training  # FAISS's default
        ours = worker_index.factory(16, "l2", spec)  # kept: the inner indexes are owned by it
        made = worker_index.innermost(ours)
        made = faiss.downcast_index(made.storage) if isinstance(made, faiss.IndexHNSW) else made
        assert not made.do_polysemous_training
        assert probe(16, "l2", spec).trains


def test_a_trained_spec_waits_for_enough_rows_to_train(tmp_path: Path) -> None:
    col = _col("l2", "IVF64,Flat", dim=8)
    assert spec_kind(8, "l2", "IVF64,Flat").train_rows == 39 * 64
    copy = _replay(col, [_add("1-0", ["a", "b"], np.eye(2, 8, dtype=np.float32))])
    assert sealing.template(tmp_path, col, copy, copy.manifest, np.eye(2, 8, dtype=np.float32), 1000) is None
    assert [h[0] for h in copy.search(np.eye(1, 8, dtype=np.float32), 2, {"nprobe": 4})[0]] == ["a", "b"]


def test_k_beyond_count_never_returns_minus_one() -> None:
    copy = _replay(_col("l2", dim=4), [])
    assert copy.search(np.ones((2, 4), np.float32), 5, {}) == [[], []]
    copy.apply(_add("1-0", ["a", "b"], np.eye(2, 4, dtype=np.float32)))
    assert [h[0] for h in copy.search(np.ones((1, 4), np.float32), 50, {})[0]] == ["a", "b"]


def test_search_parameters_must_fit_the_index() -> None:
    flat = _replay(_col("l2", dim=4), [_add("1-0", ["a"], np.ones((1, 4), np.float32))])
    with pytest.raises(InvalidInput) as info:
        flat.search(np.ones((1, 4), np.float32), 1, {"efSearch": 8})
    assert info.value.field == "params.efSearch"
    hnsw = _replay(_col("l2", "HNSW16", dim=4), [_add("1-0", ["a"], np.ones((1, 4), np.float32))])
    assert hnsw.search(np.ones((1, 4), np.float32), 1, {"efSearch": 8})[0][0][0] == "a"


def test_filtered_ivf_at_full_nprobe_equals_brute_force(tmp_path: Path) -> None:
    """IVF-Flat searched with nprobe = nlist and a filter returns exactly the brute-force top k among the
    matching rows (sealed segment and growing one alike)."""
    from common import filters

    rng = np.random.default_rng(12)
    col = _col("l2", "IVF16,Flat", dim=8)
    data = rng.standard_normal((3000, 8)).astype(np.float32)
    metas = [f'{{"g": {i % 7}}}' for i in range(3000)]
    copy = _replay(col, [Entry("1-0", "add", [f"r{i}" for i in range(2500)], data[:2500].tobytes(), "j",
                               metas[:2500])])
    copy = _seal(tmp_path, copy, [])
    copy.apply(Entry("2-0", "add", [f"r{i}" for i in range(2500, 3000)], data[2500:].tobytes(), "j", metas[2500:]))
    where = filters.parse({"g": {"$in": [2, 5]}})
    queries = rng.standard_normal((20, 8)).astype(np.float32)
    hits, _ = copy.find(queries, 10, {"nprobe": 16}, where)
    rows = np.array([i for i in range(3000) if i % 7 in (2, 5)])
    d = ((data[rows][None, :, :] - queries[:, None, :]) ** 2).sum(-1)
    want = [[f"r{rows[j]}" for j in np.argsort(row, kind="stable")[:10]] for row in d]
    assert [[h[0] for h in row] for row in hits] == want


def _info(segment_id: str, first_lsn: str, lsn: str) -> SegmentInfo:
    return SegmentInfo(id=segment_id, first_lsn=first_lsn, lsn=lsn, rows=1, deleted=0, bytes=1, spec="Flat",
                       mapped=True, built_at=0.0, build_s=0.0)


def test_a_seal_and_a_compaction_commit_onto_each_other_in_either_order() -> None:
    s1, s2, s3 = _info("s1", "0-0", "1-0"), _info("s2", "1-0", "2-0"), _info("s3", "2-0", "3-0")
    merged = _info("m", "0-0", "2-0")
    base = Manifest(gen=4, sealed_lsn="2-0", segments=(s1, s2))
    sealed_first = segments.after_seal(base, base, s3, "3-0", None, 0)
    merged_then = segments.after_merge(sealed_first, base, merged)
    merged_first = segments.after_merge(base, base, merged)
    sealed_then = segments.after_seal(merged_first, base, s3, "3-0", None, 0)
    assert merged_then == sealed_then == Manifest(gen=4, sealed_lsn="3-0", segments=(merged, s3))
    assert segments.after_merge(base, base, None).segments == ()  # nothing live left in them
    assert segments.after_seal(base, base, None, "3-0", None, 0).segments == (s1, s2)  # a range with nothing to keep
    with pytest.raises(segments.Superseded):  # a twin delivery sealed as far already: nothing left to do
        segments.after_seal(sealed_first, base, s3, "3-0", None, 0)
    with pytest.raises(segments.ManifestChanged):  # another seal moved sealed_lsn, not as far: this one is stale
        segments.after_seal(sealed_first, base, _info("s4", "2-0", "4-0"), "4-0", None, 0)
    with pytest.raises(segments.Superseded):  # the segments it merged are gone (merged by a twin)
        segments.after_merge(merged_first, base, merged)
