"""Unit: the filtered-search plan of an approximate segment (worker/segment.py Segment.search) against
VECQ_FILTER_EXACT_BELOW, documented as "scores the matching rows one by one when fewer than this match".
FAISS and segment files in this process, no Redis, no Celery."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common import filters
from common.collections import Collection
from common.segments import Manifest
from common.wal import Entry
from tests.test_index import _seal
from worker.collection_copy import CollectionCopy


def test_exact_plan_only_when_fewer_rows_than_the_threshold_match(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    data = rng.standard_normal((400, 8)).astype(np.float32)
    ids = [f"r{i}" for i in range(len(data))]
    entry = Entry("1-0", "add", ids, np.ascontiguousarray(data, dtype="<f4").tobytes(), "job",
                  [json.dumps({"t": i % 4}) for i in range(len(data))])
    copy = CollectionCopy(Collection("t", "u" * 32, 8, "l2", "HNSW32", 0.0), Manifest(), [])
    copy.apply(entry)
    sealed = _seal(tmp_path, copy, [])
    f = filters.parse({"t": 1})  # 100 of the 400 sealed rows
    assert sealed.count_matching(f) == 100
    q = data[:1]
    plans = {below: sealed.find(q, 5, {"efSearch": 64}, f, exact_below=below)[1] for below in (0, 100, 101)}
    assert plans == {0: "index", 100: "index", 101: "exact"}  # 100 rows are not fewer than 100
    hits, _ = sealed.find(q, 5, {"efSearch": 64}, f, exact_below=101)
    assert all(int(h[0][1:]) % 4 == 1 for h in hits[0]) and len(hits[0]) == 5
