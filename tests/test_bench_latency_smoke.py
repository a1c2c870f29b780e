"""`python -m bench --only latency --quick` end to end: a private stack, the bare Celery worker and FastAPI server,
the lone loops, the MONITOR trace, py-spy on the API and the workers, the c=64 load. Checks that the figures are
there and sane (positive, ordered, every hop traced), never timings against goals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_latency_section_writes_sane_figures(tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if k != "VECQ_REDIS_URL"}
    proc = subprocess.run([sys.executable, "-m", "bench", "--only", "latency", "--quick", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "latency.json").read_text())
    md = (out / "latency.md").read_text()
    assert "## Latency budget of a lone search (issue #18)" in md and "### Stages of a lone search" in md
    assert res["machine"]["nproc"] >= 1

    lone = res["lone"]
    for kind in ("floor", "celery_noop", "search"):
        assert lone[kind]["n"] > 0 and 0 < lone[kind]["p50_ms"] <= lone[kind]["p99_ms"], kind
    assert lone["search"]["p50_ms"] > lone["floor"]["p50_ms"]  # a search is an HTTP request and more
    assert lone["worker_search_took"]["p50_ms"] > 0
    assert all(v >= 0 for v in lone["cpu_ms_per_search"].values()) and lone["cpu_ms_per_search"]["api"] > 0

    redis_calls = res["redis"]
    assert redis_calls["per_search_total"] > 0 and redis_calls["per_noop_total"] > 0
    assert redis_calls["per_search"].get("lpush", 0) >= 0.9  # one publish per lone search: nothing coalesced

    trace = res["trace"]
    assert trace["traced"] >= trace["searches"] * 0.8, trace  # every hop of (almost) every search was seen
    assert all(s["p50_ms"] >= 0 and s["mean_ms"] >= 0 for s in trace["stages"].values())
    assert trace["round_trips_per_search"] > 0

    profile = res["profile"]
    for part in ("api", "worker_child", "worker_main"):
        assert profile[part]["samples"] > 0, (part, profile["py_spy"])
    assert any("api/" in r["function"] for r in profile["api"]["top_vecq_inclusive"])

    load = res["load"]
    assert load["vecq_api_cpu_ms"] > 0 and load["bare_api_cpu_ms"] > 0 and load["ratio"] > 0
    assert all(r["errors"] == 0 for rounds in load["rounds"].values() for r in rounds)
    assert [g["goal"] for g in res["goals"]] and all(isinstance(g["met"], bool) for g in res["goals"])
