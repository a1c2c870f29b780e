"""Single-vector writes (issue #16's soak writes 200 of them a second beside the searches): `python -m bench.writes`.

    python -m bench.writes              # c=1, 8, 32, 128 with write coalescing off and on, about 2 minutes
    python -m bench.writes --quick      # small levels, well under a minute (tests/test_bench_writes_smoke.py)
    python -m bench --only writes       # the same, from the benchmark's entry point

One stack (2 workers, 1 API process, a Flat 128-d collection); each level is a closed loop of clients each
POSTing one vector with `?wait=30` (an upsert: rows are reused, so long levels also replace ids), bounded in
requests and seconds (bench/loadgen.py, a process of its own). For each level, with `VECQ_COALESCE_WRITES` off
and on (the API restarted between): writes/s, p50/p99, the CPU per write of the API, the workers (children
included) and Redis, and Redis calls per write (INFO commandstats over the level, Lua's own calls included).
The ratio on/off at each level is the figure to read: absolute rates move with the machine. Results:
`writes.md` and `writes.json` in the output directory.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import loadgen, report
from bench.loadgen import LoadSpec
from bench.service import Vecq

ROOT = Path(__file__).resolve().parent.parent
DIM = 128


@dataclass
class Config:
    concurrency: tuple[int, ...] = (1, 8, 32, 128)
    max_requests: int = 6000
    max_seconds: float = 6.0
    warmup: float = 1.0
    rows: int = 20_000  # distinct vectors (and ids) the levels write in turn
    workers: int = 2


QUICK = Config(concurrency=(16,), max_requests=300, max_seconds=1.0, warmup=0.2, rows=500)


def level(vecq: Vecq, rows_path: Path, concurrency: int, cfg: Config) -> dict[str, Any]:
    before = vecq.redis_calls()
    spec = LoadSpec(url=f"{vecq.url}/v1/collections/w/vectors?wait=30", mode="write", concurrency=concurrency,
                    max_requests=cfg.max_requests, max_seconds=cfg.max_seconds, warmup_s=cfg.warmup,
                    queries_path=str(rows_path), watch=vecq.pids())
    result = loadgen.run(spec)
    after = vecq.redis_calls()
    # The warm-up's calls are in the delta too: divided by every write sent, measured or not.
    sent = max(1, result.requests + result.warmup_requests)
    calls = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    per_write = {name: round(n / sent, 2) for name, n in sorted(calls.items(), key=lambda kv: -kv[1])
                 if n / sent >= 0.05}
    cpu = (result.cpu or {}).get("per_request", {})
    return {"concurrency": concurrency, "writes_per_s": result.qps, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
            "writes": result.requests, "errors": result.errors, "error_samples": result.error_samples,
            "cpu_ms": {k.removesuffix("_ms"): v for k, v in cpu.items() if k != "loadgen_ms"},
            "redis_calls_per_write": round(sum(calls.values()) / sent, 1), "redis_calls_by_command": per_write}


def run(quick: bool, out_dir: Path) -> dict[str, Any]:
    cfg = QUICK if quick else Config()
    rng = np.random.default_rng(0)
    started = time.time()
    out: dict[str, Any] = {"config": asdict(cfg), "machine": report.machine(), "levels": {}}
    with tempfile.TemporaryDirectory(prefix="vecq-bench-writes-") as tmp:
        rows_path = Path(tmp) / "rows.npy"
        np.save(rows_path, rng.random((cfg.rows, DIM), dtype=np.float32))
        vecq = Vecq(Path(tmp) / "stack", workers=cfg.workers)
        try:
            vecq.start()
            vecq.create("w", DIM, "Flat")
            for mode, coalesce in (("off", "0"), ("on", "1")):
                vecq.start_api({"VECQ_COALESCE_WRITES": coalesce})
                out["levels"][mode] = [level(vecq, rows_path, c, cfg) for c in cfg.concurrency]
                print(f"writes, coalescing {mode}: " + ", ".join(
                    f"c={lv['concurrency']} {lv['writes_per_s']}/s" for lv in out["levels"][mode]), file=sys.stderr)
        finally:
            vecq.stop()
    out["seconds"] = round(time.time() - started, 1)
    write_report(out, out_dir)
    return out


def _cpu_total(lv: dict[str, Any]) -> float:
    return sum(v for v in lv["cpu_ms"].values() if v is not None)


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = ["# Single-vector writes: coalescing off and on", "",
             "`python -m bench.writes` (`python -m bench --only writes`) — "
             f"{res['seconds']} s. **Machine**: {m.get('cpu')}, {m.get('nproc')} cores, Python {m.get('python')}. "
             "One stack: 2 workers, 1 API process, a Flat 128-d collection; closed-loop clients each POST one vector "
             "with `?wait=30`. CPU per write is the API, the workers (children included) and Redis together.", "",
             "| c | off writes/s | on writes/s | on/off | off p50 ms | on p50 ms | off CPU ms/write | on CPU ms/write "
             "| off Redis calls/write | on Redis calls/write |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for off, on in zip(res["levels"]["off"], res["levels"]["on"], strict=True):
        ratio = on["writes_per_s"] / off["writes_per_s"] if off["writes_per_s"] else float("nan")
        lines.append(f"| {off['concurrency']} | {off['writes_per_s']:,} | {on['writes_per_s']:,} | {ratio:.2f}x "
                     f"| {off['p50_ms']} | {on['p50_ms']} | {_cpu_total(off):.2f} | {_cpu_total(on):.2f} "
                     f"| {off['redis_calls_per_write']} | {on['redis_calls_per_write']} |")
    top = res["levels"]["on"][-1]
    lines += ["", f"Redis calls per write by command at c={top['concurrency']}, coalescing on: "
              f"`{json.dumps(top['redis_calls_by_command'])}`; off: "
              f"`{json.dumps(res['levels']['off'][-1]['redis_calls_by_command'])}`.", ""]
    return "\n".join(lines)


def write_report(res: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "writes.json").write_text(json.dumps(res, indent=1))
    (out_dir / "writes.md").write_text(markdown(res))
    print(f"wrote {out_dir / 'writes.md'}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.writes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small levels: a smoke run")
    p.add_argument("--out", type=Path, default=None, help="output directory (default bench/results, --quick: "
                                                          "bench/results/quick)")
    args = p.parse_args(argv)
    out = args.out or (ROOT / "bench" / "results" / ("quick" if args.quick else ""))
    run(args.quick, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
