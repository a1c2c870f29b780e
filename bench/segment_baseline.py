"""In-process FAISS for the segments section (`python -m bench.segment_baseline CFG OUT`): the index a seal builds,
built here without vecq's code, in a child process of its own so the benchmark's process never imports faiss.

A seal (worker/sealing.py) takes the live rows of the growing segment in log order; for a trained spec it trains
an empty index once on `training_sample(n, max(VECQ_TRAIN_SAMPLE_ROWS, 39 x centroids))` of them (worker/index.py:
every row if there are no more than that, else that many row numbers drawn without replacement by numpy's
default_rng(1234), sorted; polysemous training off, as vecq's factory has it); then it adds every row in one
call, HNSW levels seeded with 12345 + 0. This replicates each step with plain faiss and numpy, one OpenMP thread
(as the workers run), and times the train and the add separately: the add is the yardstick of "build once", train
+ add that of a trained seal.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

TRAIN_SEED = 1234  # worker/index.py TRAIN_SEED
HNSW_SEED = 12345  # worker/index.py reseed_hnsw: 12345 + rows already in the index (0 for a segment)


def sample_rows(np: Any, n: int, wanted: int) -> Any:
    if n <= wanted:
        return np.arange(n)
    return np.sort(np.random.default_rng(TRAIN_SEED).choice(n, size=wanted, replace=False))


def innermost(faiss: Any, index: Any) -> Any:
    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexPreTransform | faiss.IndexRefine):
        index = faiss.downcast_index(index.index if isinstance(index, faiss.IndexPreTransform) else index.base_index)
    return index


def measure(cfg: dict[str, Any]) -> dict[str, Any]:
    os.environ["OMP_NUM_THREADS"] = "1"  # before faiss is imported, as worker/__init__.py does
    import faiss
    import numpy as np

    faiss.omp_set_num_threads(1)
    n, k = int(cfg["n"]), int(cfg["k"])
    order = np.load(cfg["order"])  # position -> row: the segment's rows in log order
    if len(order) != n:
        raise ValueError(f"order has {len(order)} rows, expected {n}")
    vectors = np.ascontiguousarray(np.load(cfg["vectors"], mmap_mode="r")[:n][order], dtype=np.float32)
    queries = np.load(cfg["queries"])
    index = faiss.index_factory(vectors.shape[1], cfg["index"], faiss.METRIC_L2)
    for part in (innermost(faiss, index), getattr(innermost(faiss, index), "storage", None)):
        # vecq turns polysemous training off (worker/index.py factory: it serves no search vecq runs); left on
        # here, a PQ's training took 10x vecq's (151 s for IVF1024,PQ32 on 65k rows) and was no yardstick
        if part is not None and hasattr(faiss.downcast_index(part), "do_polysemous_training"):
            faiss.downcast_index(part).do_polysemous_training = False
    out: dict[str, Any] = {"index": cfg["index"], "rows": n, "threads": 1}

    t0 = time.perf_counter()
    if not index.is_trained:
        sample = sample_rows(np, n, int(cfg["train_rows"]))
        index.train(np.ascontiguousarray(vectors[sample]))
        out["train_rows"] = len(sample)
    out["train_s"] = round(time.perf_counter() - t0, 3)
    inner = innermost(faiss, index)
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.rng = faiss.RandomGenerator(HNSW_SEED + 0)
    t0 = time.perf_counter()
    index.add(vectors)
    out["add_s"] = round(time.perf_counter() - t0, 3)
    out["add_per_s"] = round(n / out["add_s"], 1) if out["add_s"] else None

    params: Any = None
    if isinstance(inner, faiss.IndexHNSW) and cfg.get("ef_search"):
        params = faiss.SearchParametersHNSW()
        params.efSearch = int(cfg["ef_search"])
    elif isinstance(inner, faiss.IndexIVF) and cfg.get("nprobe"):
        params = faiss.SearchParametersIVF()
        params.nprobe = min(int(cfg["nprobe"]), int(inner.nlist))
    t0 = time.perf_counter()
    _, labels = index.search(queries, k, params=params)
    out["search_s"] = round(time.perf_counter() - t0, 3)
    rows = np.where(labels >= 0, order[np.maximum(labels, 0)], -1)
    rows_path = Path(cfg["out_dir"]) / "rows.npy"
    np.save(rows_path, rows)
    out["rows_path"] = str(rows_path)
    return out


def main(argv: list[str]) -> int:
    cfg = json.loads(Path(argv[0]).read_text())
    Path(argv[1]).write_text(json.dumps(measure(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
