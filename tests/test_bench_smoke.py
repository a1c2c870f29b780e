"""`python -m bench --quick` end to end at tiny sizes: a private stack, the naive server, the load generator, the
segments section, and the results they write. Checks shape and correctness (recall and ids), never timings."""

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
    argv = [sys.executable, "-m", "bench", "--quick", "--only", "main", "--index", "Flat", "--n", "2000",
            "--queries", "60", "--concurrency", "1,8", "--duration", "0.5", "--requests", "100", "--warmup", "0.1",
            "--out", str(out)]
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


def test_quick_segments_section_measures_every_goal_and_merges_into_earlier_results(tmp_path: Path) -> None:
    """`--only segments --quick`: build once, cold start, memory (4 workers), trained specs, sealed vs growing
    search; the section lands in the results already in the directory, which keep their other sections."""
    out = tmp_path / "results"
    out.mkdir()
    earlier = {"config": {"workers": 2}, "machine": {}, "started_at": 1.0, "marker": "an earlier run"}
    (out / "latest.json").write_text(json.dumps(earlier))
    env = {k: v for k, v in os.environ.items() if k != "VECQ_REDIS_URL"}
    argv = [sys.executable, "-m", "bench", "--quick", "--only", "segments", "--out", str(out)]
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    res = json.loads((out / "latest.json").read_text())
    assert res["marker"] == "an earlier run" and "indexes" not in res  # merged: nothing else was run or dropped
    seg = res["segments"]
    assert seg["run"]["machine"]["faiss_cpu"] and seg["run"]["duration_s"] > 0
    queries = seg["config"]["queries"]

    build = seg["build_once"]
    assert build["rows"] == seg["config"]["hnsw_n"] and build["segment"]["rows"] == build["rows"]
    assert build["inprocess"]["add_s"] > 0 and build["seconds_ack_to_all_workers"] > 0
    assert build["seal_job_s"] > 0  # the seal job's own time, from its record
    assert all(c["mapped_bytes"] > 0 and c["growing_rows"] == 0 for c in build["copies"])
    # The sealed segment is the very index one in-process add of the same rows in log order builds.
    assert build["identical_ids"]["identical"] == build["identical_ids"]["compared"] == queries
    assert build["recall"] == build["recall_inprocess"] > 0.9

    cold = seg["cold_start"]
    assert cold["trials"] and all(t["seconds_from_launch"] > t["seconds_from_child_start"] > 0 for t in cold["trials"])
    assert all(t["load_s"] is not None and t["sealed_rows"] == build["rows"] for t in cold["trials"])

    mem = seg["memory"]
    assert len(mem["per_worker"]) == mem["workers"] == 4
    for w in mem["per_worker"]:
        assert w["before"]["before_load"] and w["before"]["RssAnon"] > 0 and w["after"]["Pss"] > 0
        assert 0 < w["index_resident"] <= mem["index_file_bytes"] + 4096  # it searched the mapped file (whole pages)
        assert w["mapped_bytes"] > 0
    assert mem["anon_sum"] == sum(w["anon_delta"] for w in mem["per_worker"])

    trained = seg["trained"]
    assert set(trained) == set(seg["config"]["trained"]) == {"IVF32,PQ8x4", "IVF32,Flat"}
    for t in trained.values():
        # Same training sample, same nprobe: the same index, so the same ids.
        assert t["identical_ids"]["identical"] == t["identical_ids"]["compared"] == queries
        assert t["recall_delta"] == 0 and t["train_rows"] == t["rows"] and t["ingest_per_s"] > t["sealed_per_s"] > 0
        assert t["seal_job_s"] > 0

    speed = seg["speed"]["Flat"]
    assert set(speed["ratios"]) == {"1", "64"}
    assert speed["identical_ids"]["identical"] == speed["identical_ids"]["compared"] == queries
    for kind in ("sealed", "growing"):
        assert all(lv["requests"] > 0 and lv["errors"] == 0 for lv in speed["levels"][kind].values())
    assert [c["sealed_rows"] for c in speed["copies"]["growing"]] == [0, 0]

    goals = [g for g in res["goals"] if g["issue"] == 14 and g["target"] != "reported"]
    assert len(goals) == 2 + 1 + 2 + 2 * 2 + 2 and all(isinstance(g["met"], bool) for g in goals)
    reported = [g for g in res["goals"] if g["issue"] == 14 and g["target"] == "reported"]
    assert len(reported) == 2 and all(g["met"] is None and g["measured"] > 0 for g in reported)  # trained builds
    md = (out / "latest.md").read_text()
    assert "Sealed segments (issue #14)" in md and "| #14 |" in md
