"""`python -m bench --quick` end to end at tiny sizes: a private stack, the naive server, the load generator, and
the results it writes. Checks shape and correctness (recall and ids), never timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_writes_results_and_matches_in_process_recall(tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if k != "VECQ_REDIS_URL"}
    argv = [sys.executable, "-m", "bench", "--quick", "--index", "Flat", "--n", "2000", "--queries", "60",
            "--concurrency", "1,8", "--duration", "0.5", "--requests", "100", "--warmup", "0.1", "--out", str(out)]
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    res = json.loads((out / "latest.json").read_text())
    assert (out / "latest.png").stat().st_size > 10_000
    assert "| vecq, coalescing on |" in (out / "latest.md").read_text()
    assert "| vecq, coalescing on |" in proc.stdout  # the table goes to stdout too
    assert {"config", "machine", "loadgen_ceiling", "ingest_npy", "indexes", "goals", "duration_s"} <= set(res)
    assert res["machine"]["nproc"] >= 1 and res["machine"]["faiss_cpu"]
    assert set(res["loadgen_ceiling"]) == {"1", "8"}

    flat = res["indexes"]["Flat"]
    inproc, naive, vecq = flat["inprocess"], flat["naive"], flat["vecq"]
    assert inproc["single"]["qps"] > 0 and inproc["add_per_s"] > 0
    assert {b["threads"] for b in inproc["batched"].values()} >= {1}
    assert vecq["ingest"]["json"]["vectors"] == 2000
    for system in (naive, vecq["coalesce_off"], vecq["coalesce_on"]):
        assert set(system["levels"]) == {"1", "8"}
        for level in system["levels"].values():
            assert level["requests"] > 0 and level["errors"] == 0
            assert level["p50_ms"] <= level["p99_ms"]
    for mode in ("coalesce_off", "coalesce_on"):
        assert vecq[mode]["poll"]["requests"] > 0 and vecq[mode]["poll"]["errors"] == 0
        assert vecq[mode]["answered"] == 60
        # Flat is exact: vecq must return what FAISS returns in-process, id for id.
        assert vecq[mode]["recall"] == inproc["recall_single"] > 0.9
    same = vecq["identical_ids"]["off_vs_inprocess"]
    assert (same["compared"], same["identical"], same["differ"]) == (60, 60, [])
    assert naive["recall"] == inproc["recall_one_add"] == inproc["recall_single"]  # Flat: build order is moot
    assert vecq["identical_ids"]["on_vs_off"]["compared"] == 60
    assert any(g["goal"].startswith("Flat, coalesce on: recall") and g["met"] for g in res["goals"])
