"""`python -m bench` (`make bench`): vecq against in-process FAISS and a naive FastAPI + FAISS server, then the
sealed-segments section (issue #14: memory, build once, cold start, trained specs, search speed sealed/unsealed).

    make bench                                  # N=100k, D=128, Flat and HNSW32, 2 workers; then segments
    make bench BENCH_ARGS="--quick"             # small sizes: a smoke run
    python -m bench --only segments             # the segments section alone, merged into bench/results/latest.*
    python -m bench --only filtered             # filtered search (issue #15) alone: bench/results/filtered.*
    python -m bench --only latency              # a lone search's latency budget (issue #18): bench/results/latency.*
    python -m bench --only writes               # single-vector writes, coalescing off and on: bench/results/writes.*
    python -m bench --only main --n 200000 --index Flat --concurrency 1,16,64 --duration 8
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from bench.run import ROOT, Config

QUICK = {"n": 5000, "dim": 32, "queries": 200, "concurrency": [1, 8, 64], "duration": 1.0, "requests": 500,
         "warmup": 0.3, "tune": False, "naive_default_threads": False, "collect_timeout": 60.0,
         "tune_concurrency": [64], "tune_blas": [4, 1000], "tune_omp": [1], "tune_delay": [20.0],
         "repeats": 1,
         # segments: trained specs scaled down (IVF32, PQ8x4: 1,248 rows to train, in a second), rows sealed by the
         # upload from 5,000, short phases
         "seg_n": 12_000, "seg_hnsw_n": 12_000, "seg_flat_n": 12_000, "seg_trained": ["IVF32,PQ8x4", "IVF32,Flat"],
         "seg_nprobe": 8, "seg_seal_every_rows": 5000, "seg_cold_trials": 1, "seg_start_delay_s": 2.0,
         "seg_touch_requests": 200, "seg_touch_s": 1.0, "seg_timeout": 120.0}


def ints(text: str) -> list[int]:
    return [int(x) for x in text.replace(" ", "").split(",") if x]


def names(text: str) -> list[str]:
    out = [x for x in text.replace(" ", "").split(",") if x]
    unknown = set(out) - {"build", "trained", "speed"}
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown phase(s) {sorted(unknown)}: build, trained, speed")
    return out


def floats(text: str) -> list[float]:
    return [float(x) for x in text.replace(" ", "").split(",") if x]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Config()
    p.add_argument("--n", type=int, help=f"database vectors (default {d.n:,}; --quick {QUICK['n']:,})")
    p.add_argument("--dim", type=int, help=f"dimension (default {d.dim})")
    p.add_argument("--queries", type=int, help=f"query vectors (default {d.queries})")
    p.add_argument("--k", type=int, help=f"neighbours per query (default {d.k})")
    p.add_argument("--index", action="append", dest="indexes", metavar="SPEC",
                   help="FAISS index_factory spec, repeatable (default: Flat and HNSW32)")
    p.add_argument("--workers", type=int, help=f"vecq worker processes (default {d.workers})")
    p.add_argument("--api-processes", type=int, dest="api_processes",
                   help=f"vecq API processes, uvicorn --workers (default {d.api_processes})")
    p.add_argument("--concurrency", type=ints, help="closed-loop clients per level, e.g. 1,8,64,256")
    p.add_argument("--duration", type=float, help=f"measured seconds per load level, at most (default {d.duration})")
    p.add_argument("--requests", type=int, help=f"measured requests per load level, at most (default {d.requests})")
    p.add_argument("--warmup", type=float, help=f"unmeasured seconds before each level (default {d.warmup})")
    p.add_argument("--repeats", type=int, help=f"runs of each repeated level, median reported (default {d.repeats})")
    p.add_argument("--repeat-levels", type=ints, dest="repeat_levels", help="levels run --repeats times (64)")
    p.add_argument("--seed", type=int, help="data seed (default 0)")
    p.add_argument("--ef-search", type=int, dest="ef_search", help=f"HNSW efSearch everywhere (default {d.ef_search})")
    p.add_argument("--batch", type=int, help=f"vectors per JSON ingest request (default {d.batch:,})")
    p.add_argument("--tune", action=argparse.BooleanOptionalAction, default=None,
                   help="measure worker FAISS settings and the API's coalescing settings; on unless --quick")
    p.add_argument("--tune-concurrency", type=ints, dest="tune_concurrency", help="levels of the tuning runs (1,64)")
    p.add_argument("--tune-omp", type=ints, dest="tune_omp", help="VECQ_OMP_THREADS values to try (1,2)")
    p.add_argument("--tune-blas", type=ints, dest="tune_blas", help="VECQ_BLAS_MIN_QUERIES values (1,4,16,1000)")
    p.add_argument("--tune-inflight", type=ints, dest="tune_inflight",
                   help="VECQ_COALESCE_MAX_INFLIGHT values (per API process) to try (1,2)")
    p.add_argument("--tune-delay", type=floats, dest="tune_delay",
                   help="VECQ_COALESCE_MAX_DELAY_MS values to try (5,10,20,40)")
    p.add_argument("--only", choices=["main", "segments", "filtered", "latency", "writes"],
                   help="one part: main (everything but segments), segments (merged into an existing latest.json), "
                   "filtered (filtered search, issue #15: bench/results/filtered.*), latency (a lone search's "
                   "latency budget, issue #18: bench/results/latency.*) or writes (single-vector writes, "
                   "coalescing off and on: bench/results/writes.*)")
    p.add_argument("--lat-profile", action="store_true", dest="lat_profile",
                   help="latency: also write py-spy flamegraphs of the API and the workers (latency-*.svg)")
    p.add_argument("--seg-n", type=int, dest="seg_n", help=f"segments: rows of the trained collections ({d.seg_n:,})")
    p.add_argument("--seg-hnsw-n", type=int, dest="seg_hnsw_n",
                   help=f"segments: rows of the HNSW32 collection (build once, cold start, memory; "
                   f"{d.seg_hnsw_n:,}; 0: --seg-n)")
    p.add_argument("--seg-flat-n", type=int, dest="seg_flat_n",
                   help=f"segments: rows of the search-speed collections ({d.seg_flat_n:,})")
    p.add_argument("--seg-trained", action="append", dest="seg_trained", metavar="SPEC",
                   help="segments: a trained spec, repeatable (IVF1024,PQ32 and IVF1024,Flat)")
    p.add_argument("--seg-speed-index", action="append", dest="seg_speed_indexes", metavar="SPEC",
                   help="segments: a spec for sealed vs growing search speed, repeatable (Flat)")
    p.add_argument("--seg-nprobe", type=int, dest="seg_nprobe", help=f"segments: IVF nprobe ({d.seg_nprobe})")
    p.add_argument("--seg-levels", type=ints, dest="seg_levels", help="segments: search-speed concurrency (1,64)")
    p.add_argument("--seg-build-workers", type=int, dest="seg_build_workers",
                   help=f"segments: workers of every phase but memory ({d.seg_build_workers})")
    p.add_argument("--seg-memory-workers", type=int, dest="seg_memory_workers",
                   help=f"segments: workers of the memory phase ({d.seg_memory_workers})")
    p.add_argument("--seg-phases", type=names, dest="seg_phases",
                   help="segments: the phases to run, of build (build once, cold start, memory), trained, speed "
                   "(default: all); a partial run replaces the whole section, so give it its own --out")
    p.add_argument("--quick", action="store_true", help="small sizes and short levels: a smoke run")
    p.add_argument("--render", type=Path, metavar="JSON",
                   help="only rewrite the table, goals and plot of an earlier run's JSON (into --out)")
    p.add_argument("--out", type=Path, help="results directory (default bench/results; --quick: bench/results/quick)")
    return p


def config(argv: list[str]) -> Config:
    args = parser().parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("quick", "render", "lat_profile")}
    base = {**QUICK, **given} if args.quick else given
    if args.quick and args.out is None:  # a smoke run never replaces the committed full results
        base["out"] = ROOT / "bench" / "results" / "quick"
    cfg = Config(**base)
    cfg.command = "python -m bench" + ("" if not argv else " " + shlex.join(argv))
    if not cfg.out.is_absolute():
        cfg.out = Path.cwd() / cfg.out
    if not cfg.indexes:
        raise SystemExit("give at least one --index")
    return cfg


def merged(result: dict, previous: Path) -> dict:
    """A segments-only run replaces the segments section of the results already in the directory and keeps the
    rest, which came from an earlier run (each section records its own run: command, time, machine)."""
    import json

    if not previous.exists():
        return result
    old = json.loads(previous.read_text())
    old["segments"] = result["segments"]
    print(f"segments section merged into {previous} (other sections from the run started at "
          f"{old.get('started_at')})", file=sys.stderr)
    return old


def main(argv: list[str] | None = None) -> int:
    import json

    from bench import report
    from bench.run import run

    argv = sys.argv[1:] if argv is None else argv
    cfg = config(argv)
    args = parser().parse_args(argv)
    render = args.render
    if cfg.only == "filtered":
        from bench import filtered

        filtered.run(bool(args.quick), cfg.out)
        return 0
    if cfg.only == "latency":
        from bench import latency

        latency.run(bool(args.quick), cfg.out, flamegraphs=args.lat_profile)
        return 0
    if cfg.only == "writes":
        from bench import writes

        writes.run(bool(args.quick), cfg.out)
        return 0
    result = json.loads(render.read_text()) if render else run(cfg)
    if not render and cfg.only == "segments":
        result = merged(result, cfg.out / "latest.json")
    paths = report.write(result, cfg.out)
    print(f"\nwrote {', '.join(str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p) for p in paths.values())}",
          file=sys.stderr)
    if not render and cfg.only is None:  # the whole benchmark: the filtered-search section too
        from bench import filtered

        filtered.run(bool(args.quick), cfg.out)
        from bench import latency, writes

        latency.run(bool(args.quick), cfg.out)
        writes.run(bool(args.quick), cfg.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
