"""`python -m bench.writes --quick` end to end: a private stack, closed-loop single-vector writes with write
coalescing off and on. Checks that the figures are there and consistent, never timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_writes_benchmark_writes_sane_figures(tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VECQ_")}
    proc = subprocess.run([sys.executable, "-m", "bench.writes", "--quick", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "writes.json").read_text())
    assert "| c | off writes/s | on writes/s |" in (out / "writes.md").read_text()
    assert set(res["levels"]) == {"off", "on"}
    for mode, levels in res["levels"].items():
        assert [lv["concurrency"] for lv in levels] == list(res["config"]["concurrency"])
        for lv in levels:
            assert lv["errors"] == 0 and lv["writes"] > 0 and lv["writes_per_s"] > 0, (mode, lv)
            assert 0 < lv["p50_ms"] <= lv["p99_ms"]
            assert lv["redis_calls_per_write"] > 0 and "xadd" in lv["redis_calls_by_command"]
            assert lv["cpu_ms"]["api"] > 0
    # Every write is one log entry, coalesced or not; a coalesced level publishes fewer jobs than it has writes.
    top_on, top_off = res["levels"]["on"][-1], res["levels"]["off"][-1]
    assert top_off["redis_calls_by_command"]["lpush"] >= 0.9
    assert top_on["redis_calls_by_command"].get("lpush", 0) < top_off["redis_calls_by_command"]["lpush"]
