"""One benchmark run: data, the three systems (in-process FAISS, the naive server, vecq), tuning, results.

Order matters on a small machine: each phase runs while the others are idle, and every FAISS call happens in a
child process (the in-process baseline, the naive server, the workers); this process only holds numpy arrays.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import cpu, data, loadgen, naive_server, report
from bench.loadgen import LoadSpec
from bench.service import Vecq

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Config:
    n: int = 100_000
    dim: int = 128
    queries: int = 1000
    k: int = 10
    indexes: list[str] = field(default_factory=lambda: ["Flat", "HNSW32"])
    workers: int = 2
    api_processes: int = 2  # uvicorn --workers: on 2 cores, two event loops keep both workers fed
    concurrency: list[int] = field(default_factory=lambda: [1, 8, 64, 256])
    duration: float = 5.0  # measured seconds per load level (at most)
    requests: int = 5000  # measured requests per load level (at most)
    warmup: float = 1.0  # unmeasured seconds before each level
    repeats: int = 3  # runs of each level in `repeat_levels`; the run with the median QPS is reported
    repeat_levels: list[int] = field(default_factory=lambda: [64])  # the goals' level: ±10% run to run here
    seed: int = 0
    ef_search: int = 64
    batch: int = 10_000  # vectors per JSON ingest request
    tune: bool = True
    tune_concurrency: list[int] = field(default_factory=lambda: [1, 64])
    tune_omp: list[int] = field(default_factory=lambda: [1, 2])
    tune_blas: list[int] = field(default_factory=lambda: [1, 4, 16, 1000])  # VECQ_BLAS_MIN_QUERIES
    tune_inflight: list[int] = field(default_factory=lambda: [1, 2])  # per API process
    tune_delay: list[float] = field(default_factory=lambda: [5.0, 10.0, 20.0, 40.0])  # VECQ_COALESCE_MAX_DELAY_MS
    naive_default_threads: bool = True
    collect_timeout: float = 120.0
    out: Path = ROOT / "bench" / "results"
    command: str = ""
    only: str | None = None  # "main" (everything but segments) or "segments"; None: both
    # The segments section (bench/segments.py, issue #14)
    seg_n: int = 1_000_000  # rows of the trained collections
    # rows of the HNSW32 collection (build once, cold start, memory); 0: seg_n. 500k, not 1M: one HNSW32 build of
    # 1M x 128 on one thread takes 4+ minutes here, and the section builds it twice (vecq, in-process)
    seg_hnsw_n: int = 500_000
    seg_flat_n: int = 100_000  # rows of the search-speed collections
    seg_trained: list[str] = field(default_factory=lambda: ["IVF1024,PQ32", "IVF1024,Flat"])
    seg_speed_indexes: list[str] = field(default_factory=lambda: ["Flat"])
    seg_nprobe: int = 32
    seg_build_workers: int = 2
    seg_memory_workers: int = 4
    seg_seal_every_rows: int = 0  # 0: the production default (VECQ_SEAL_EVERY_ROWS)
    seg_levels: list[int] = field(default_factory=lambda: [1, 64])
    seg_cold_trials: int = 2
    seg_start_delay_s: float = 4.0  # a memory-phase worker child waits this long before loading (test-only setting)
    seg_touch_requests: int = 3000  # searches served before the memory is read "after" (bounded by seg_touch_s too)
    seg_touch_s: float = 10.0
    seg_timeout: float = 1800.0  # longest wait for a seal
    # which phases of the segments section run: build (build once, cold start, memory), trained, speed; a partial
    # run is for measuring one goal quickly (write it to its own --out: it would replace the whole section)
    seg_phases: list[str] = field(default_factory=lambda: ["build", "trained", "speed"])


def collection_name(spec: str) -> str:
    return "bench-" + re.sub(r"[^a-z0-9]+", "-", spec.lower()).strip("-")


def cpu_note(res: dict[str, Any]) -> str:
    c = res.get("cpu")
    if not c:
        return ""
    per = ", ".join(f"{k[:-3]} {v}" for k, v in c["per_request"].items() if v is not None)
    calls = res.get("redis_calls_per_request", {}).get("total")
    return (f"; CPU ms/request: {per}; other processes {c['others_cores']} cores"
            + (f"; Redis calls/request {calls}" if calls is not None else ""))


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Run:
    def __init__(self, cfg: Config, tmp: Path) -> None:
        self.cfg = cfg
        self.tmp = tmp
        self.vecq = Vecq(tmp / "vecq", cfg.workers, api_processes=cfg.api_processes)
        self.ds: data.Dataset | None = None
        self.watch: dict[str, list[int]] = {}  # whose CPU the load levels account (bench.cpu)

    # Helpers -----------------------------------------------------------------------------------------------
    def level(self, url: str, c: int, template: dict[str, Any] | None = None, mode: str = "post",
              seconds: float | None = None) -> dict[str, Any]:
        spec = LoadSpec(url=url, mode=mode, concurrency=c, max_requests=self.cfg.requests,
                        max_seconds=seconds or self.cfg.duration, warmup_s=self.cfg.warmup,
                        queries_path=str(self.tmp / "queries.npy"), template=template or {}, watch=self.watch)
        count_redis = "redis" in self.watch and mode != "get"  # a vecq level
        before = self.vecq.redis_calls() if count_redis else {}
        res = loadgen.run(spec).summary()
        if count_redis:
            after = self.vecq.redis_calls()
            done = res["requests"] + res["warmup_requests"] + res["errors"]
            calls = {k: (n - before.get(k, 0)) / done for k, n in after.items() if done and n > before.get(k, 0)}
            res["redis_calls_per_request"] = {"total": round(sum(calls.values()), 2),
                                              **{k: round(v, 2) for k, v in sorted(calls.items(), key=lambda x: -x[1])}}
        return res

    def levels(self, url: str, template: dict[str, Any], what: str) -> dict[str, dict[str, Any]]:
        out = {}
        for c in self.cfg.concurrency:
            runs = [self.level(url, c, template) for _ in range(self.cfg.repeats if c in self.cfg.repeat_levels else 1)]
            out[str(c)] = res = sorted(runs, key=lambda r: r["qps"])[len(runs) // 2]
            if len(runs) > 1:
                res["qps_runs"] = [r["qps"] for r in runs]
            say(f"  {what} c={c}: {res['qps']} QPS, p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms{cpu_note(res)}"
                + (f" (median of {', '.join(str(r['qps']) for r in runs)})" if len(runs) > 1 else "")
                + (f", {res['errors']} errors {res['error_samples'][:1]}" if res["errors"] else ""))
        return out

    def collect(self, url: str, template: dict[str, Any], c: int) -> dict[int, list[int]]:
        """Every query once, its hit ids back: the recall run."""
        spec = LoadSpec(url=url, concurrency=c, max_requests=self.cfg.queries, max_seconds=self.cfg.collect_timeout,
                        warmup_s=0, queries_path=str(self.tmp / "queries.npy"), template=template, collect=True)
        res = loadgen.run(spec)
        if res.errors:
            say(f"  recall run: {res.errors} errors, e.g. {res.error_samples[:1]}")
        return data.as_rows(res.ids)

    def template(self, spec: str) -> dict[str, Any]:
        body: dict[str, Any] = {"k": self.cfg.k}
        if "HNSW" in spec.upper():  # the same efSearch everywhere, or recall is not comparable
            body["params"] = {"efSearch": self.cfg.ef_search}
        return body

    def recall(self, rows: dict[int, list[int]] | np.ndarray) -> float | None:
        assert self.ds is not None
        return data.recall_at_k(rows, self.ds.truth, self.cfg.k)

    # Phases ------------------------------------------------------------------------------------------------
    def inprocess(self, spec: str, order_path: Path, sizes: list[int]) -> dict[str, Any]:
        out_dir = self.tmp / f"inprocess-{collection_name(spec)}"
        out_dir.mkdir(exist_ok=True)
        cfg_path, out_path = out_dir / "cfg.json", out_dir / "out.json"
        cfg_path.write_text(json.dumps({
            "vectors": str(self.tmp / "vectors.npy"), "queries": str(self.tmp / "queries.npy"),
            "order": str(order_path), "sizes": sizes, "index": spec, "k": self.cfg.k, "ef_search": self.cfg.ef_search,
            "max_seconds": max(30.0, 4 * self.cfg.duration), "out_dir": str(out_dir)}))
        proc = subprocess.run([sys.executable, "-m", "bench.inprocess", str(cfg_path), str(out_path)], cwd=ROOT,
                              capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"in-process baseline failed: {proc.stderr[-2000:]}")
        res = json.loads(out_path.read_text())
        single_rows, batch_rows = np.load(res.pop("single_rows")), np.load(res.pop("batch_rows"))
        plain_rows = np.load(res.pop("plain_rows"))
        res["recall_single"] = self.recall(single_rows)
        res["recall_batched"] = self.recall(batch_rows)
        res["recall_one_add"] = self.recall(plain_rows)
        res["single_vs_batched_identical"] = data.same_ids(dict(enumerate(single_rows.tolist())),
                                                            dict(enumerate(batch_rows.tolist())))
        res["_single_rows"] = dict(enumerate(single_rows.tolist()))
        res["_plain_rows"] = dict(enumerate(plain_rows.tolist()))
        return res

    def naive(self, spec: str, naive_cfg: Path) -> dict[str, Any]:
        out: dict[str, Any] = {"design": "FastAPI + FAISS in one uvicorn process, def handler (thread pool), "
                                         "index built with one add", "omp_threads": 1}
        started = time.perf_counter()
        proc, url = naive_server.start(naive_cfg, self.tmp / f"naive-{collection_name(spec)}.log", omp_threads=1)
        self.watch = {"naive": cpu.tree(proc.pid)}
        try:
            out["load_s"] = round(time.perf_counter() - started, 3)
            tmpl = {"k": self.cfg.k}
            out["levels"] = self.levels(f"{url}/search", tmpl, "naive")
            rows = self.collect(f"{url}/search", tmpl, c=8)
            out["recall"] = self.recall(rows)
            out["_rows"] = rows
        finally:
            proc.stop()
        if self.cfg.naive_default_threads and spec == "Flat":
            proc, url = naive_server.start(naive_cfg, self.tmp / "naive-default.log", omp_threads=None)
            self.watch = {"naive": cpu.tree(proc.pid)}
            try:
                c = max(x for x in self.cfg.concurrency if x <= 64)
                res = self.level(f"{url}/search", c, {"k": self.cfg.k})
                out["default_omp_threads"] = {"concurrency": c, **res}
                say(f"  naive, default OpenMP threads, c={c}: {res['qps']} QPS, p50 {res['p50_ms']} ms")
            finally:
                proc.stop()
        return out

    def vecq_search(self, spec: str, name: str) -> dict[str, Any]:
        url = f"{self.vecq.url}/v1/collections/{name}/search"
        tmpl = self.template(spec)
        out: dict[str, Any] = {}
        for mode, flag in (("coalesce_off", "0"), ("coalesce_on", "1")):
            if self.vecq.api_env.get("VECQ_COALESCE") != flag:
                self.vecq.start_api({"VECQ_COALESCE": flag})
            url = f"{self.vecq.url}/v1/collections/{name}/search"
            self.watch = self.vecq.pids()
            say(f" vecq {mode.replace('_', ' ')}")
            res: dict[str, Any] = {"levels": self.levels(url, tmpl, f"vecq {mode}")}
            c_poll = max(x for x in self.cfg.concurrency if x <= 64)
            res["poll"] = {"concurrency": c_poll, **self.level(url, c_poll, tmpl, mode="poll")}
            say(f"  vecq {mode} POST-then-poll c={c_poll}: {res['poll']['qps']} QPS, p50 {res['poll']['p50_ms']} ms")
            rows = self.collect(url, tmpl, c=max(x for x in self.cfg.concurrency if x <= 64))
            res["recall"] = self.recall(rows)
            res["answered"] = len(rows)
            res["_rows"] = rows
            out[mode] = res
        return out

    def index(self, spec: str) -> dict[str, Any]:
        assert self.ds is not None
        name = collection_name(spec)
        say(f"{spec}: ingest into vecq ({self.cfg.n} x {self.cfg.dim}, JSON batches of {self.cfg.batch})")
        self.vecq.create(name, self.cfg.dim, spec)
        ingest = self.vecq.ingest_json(name, self.ds.vectors, self.cfg.batch)
        say(f"  JSON ingest: {ingest['vectors_per_s']} vectors/s ({ingest['seconds']} s, {ingest['mb']} MB)")
        warm = self.vecq.warm(name, {"vector": self.ds.queries[0], **self.template(spec)})
        say(f"  every worker replayed the log into its growing segment and answered after {warm['seconds']} s")
        # Sealed before measuring, as production would after an ingest: the collection is then one segment of its
        # spec, built with one add of every row in log order, mapped by every worker; the growing segment is empty.
        sealed = self.vecq.seal(name)
        rewarm = self.vecq.warm(name, {"vector": self.ds.queries[0], **self.template(spec)})
        say(f"  sealed {sealed.get('rows')} rows at {sealed['lsn']} in {sealed.get('seconds')} s; every worker "
            f"searched the segment after {rewarm['seconds']} s")
        order, parts = self.vecq.row_order(name)
        if parts != [self.cfg.n] or sorted(order.tolist()) != list(range(self.cfg.n)):
            raise RuntimeError(f"expected one segment holding every row once, found parts {parts}")
        order_path = self.tmp / f"order-{name}.npy"
        np.save(order_path, order)
        sizes = parts  # one add of every row, in log order: what the seal built

        say(f"{spec}: in-process FAISS")
        inproc = self.inprocess(spec, order_path, sizes)
        say(f"  add {inproc['add_per_s']}/s; 1 query/call {inproc['single']['qps']} QPS (p50 "
            f"{inproc['single']['p50_ms']} ms); batched " + ", ".join(
                f"{b['threads']}t {b['qps']} QPS" for b in inproc["batched"].values())
            + f"; recall {inproc['recall_single']} (built with one add: {inproc['recall_one_add']})")

        say(f"{spec}: naive server")
        naive_cfg = self.tmp / f"naive-{name}.json"
        naive_cfg.write_text(json.dumps({"vectors": str(self.tmp / "vectors.npy"), "index": spec,
                                         "ef_search": self.cfg.ef_search}))
        naive = self.naive(spec, naive_cfg)

        say(f"{spec}: vecq search")
        vq = self.vecq_search(spec, name)
        inproc_rows, plain_rows = inproc.pop("_single_rows"), inproc.pop("_plain_rows")
        naive_rows = naive.pop("_rows")
        on_rows, off_rows = vq["coalesce_on"].pop("_rows"), vq["coalesce_off"].pop("_rows")
        ids = {"on_vs_inprocess": data.same_ids(on_rows, inproc_rows),
               "off_vs_inprocess": data.same_ids(off_rows, inproc_rows),
               "on_vs_off": data.same_ids(on_rows, off_rows),
               "naive_vs_inprocess_one_add": data.same_ids(naive_rows, plain_rows)}
        say(f"  recall@{self.cfg.k}: in-process {inproc['recall_single']}, naive {naive['recall']}, vecq off "
            f"{vq['coalesce_off']['recall']}, on {vq['coalesce_on']['recall']}; identical ids on/off "
            f"{ids['on_vs_off']['fraction']}, off/in-process {ids['off_vs_inprocess']['fraction']}")
        return {"index": spec, "collection": name, "segments": len(parts), "inprocess": inproc, "naive": naive,
                "vecq": {"ingest": {"json": ingest}, "warm": warm, "seal": sealed, "rewarm": rewarm, **vq,
                         "identical_ids": ids}}

    def tune_row(self, url: str, tmpl: dict[str, Any], settings: dict[str, int]) -> dict[str, Any]:
        row: dict[str, Any] = {**settings, "levels": {}}
        for c in self.cfg.tune_concurrency:
            row["levels"][str(c)] = res = self.level(url, c, tmpl)
            say(f"  {' '.join(f'{k}={v}' for k, v in settings.items())} c={c}: {res['qps']} QPS, "
                f"p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms{cpu_note(res)}")
        return row

    def api_rows(self, name: str, tmpl: dict[str, Any], setting: str, values: list[Any]) -> list[dict[str, Any]]:
        """One tuning row per value of an API setting (coalescing on), the API restarted with each."""
        rows = []
        for value in values:
            self.vecq.start_api({"VECQ_COALESCE": "1", f"VECQ_{setting.upper()}": str(value)})
            self.watch = self.vecq.pids()
            rows.append(self.tune_row(f"{self.vecq.url}/v1/collections/{name}/search", tmpl, {setting: value}))
        return rows

    def tuning(self, name: str, spec: str) -> dict[str, Any]:
        """Coalescing on. Workers: OpenMP threads x the BLAS threshold; then, with the worker defaults, the API's
        batches in flight per lane (VECQ_COALESCE_MAX_INFLIGHT)."""
        assert self.ds is not None
        say(f"tuning worker settings on {spec}")
        if self.vecq.api_env.get("VECQ_COALESCE") != "1":
            self.vecq.start_api({"VECQ_COALESCE": "1"})
        url = f"{self.vecq.url}/v1/collections/{name}/search"
        tmpl = self.template(spec)
        warm_body = {"vector": self.ds.queries[0], **tmpl}
        rows = []
        for omp in self.cfg.tune_omp:
            for blas in self.cfg.tune_blas:
                self.vecq.restart_workers({"VECQ_OMP_THREADS": str(omp), "VECQ_BLAS_MIN_QUERIES": str(blas)})
                self.vecq.warm(name, warm_body)
                self.watch = self.vecq.pids()
                rows.append(self.tune_row(url, tmpl, {"omp_threads": omp, "blas_min_queries": blas}))
        self.vecq.restart_workers({})
        self.vecq.warm(name, warm_body)
        inflight_rows = self.api_rows(name, tmpl, "coalesce_max_inflight", self.cfg.tune_inflight)
        delay_rows = self.api_rows(name, tmpl, "coalesce_max_delay_ms", self.cfg.tune_delay)
        self.vecq.start_api({"VECQ_COALESCE": "1"})
        top = str(max(self.cfg.tune_concurrency))
        best = max(rows, key=lambda r: r["levels"][top]["qps"])
        out: dict[str, Any] = {
            "index": spec, "coalesce": True, "concurrency": self.cfg.tune_concurrency, "rows": rows,
            "best_at": int(top), "best": {"omp_threads": best["omp_threads"],
                                          "blas_min_queries": best["blas_min_queries"],
                                          "qps": best["levels"][top]["qps"]},
            "inflight_rows": inflight_rows, "delay_rows": delay_rows}
        if inflight_rows:
            best_n = max(inflight_rows, key=lambda r: r["levels"][top]["qps"])
            out["best_inflight"] = {"coalesce_max_inflight": best_n["coalesce_max_inflight"],
                                    "qps": best_n["levels"][top]["qps"]}
        return out

    # The whole run -----------------------------------------------------------------------------------------
    def go(self) -> dict[str, Any]:
        cfg = self.cfg
        started = time.time()
        result: dict[str, Any] = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
                                  "machine": report.machine(), "started_at": started,
                                  "load_before": list(_loadavg())}
        if cfg.only != "segments":
            self.main(result)
        if cfg.only != "main":
            from bench.segments import Segments

            result["segments"] = Segments(cfg, self.tmp).go()
        result["duration_s"] = round(time.time() - started, 1)
        result["load_after"] = list(_loadavg())
        return result

    def main(self, result: dict[str, Any]) -> None:
        """Everything but the segments section: in-process FAISS, the naive server, vecq, tuning."""
        cfg = self.cfg
        say(f"data: {cfg.n} x {cfg.dim} clustered (seed {cfg.seed}), {cfg.queries} queries, exact top-{cfg.k}")
        self.ds = data.make(cfg.n, cfg.dim, cfg.queries, cfg.k, cfg.seed)
        np.save(self.tmp / "vectors.npy", self.ds.vectors)
        np.save(self.tmp / "queries.npy", self.ds.queries)
        say(f"vecq stack: embedded Redis, {cfg.workers} workers, {cfg.api_processes} API processes")
        self.vecq.start(api_env={"VECQ_COALESCE": "1"})
        try:
            say("load generator ceiling against the API's /healthz")
            self.watch = self.vecq.pids()
            result["loadgen_ceiling"] = {}
            for c in cfg.concurrency:
                result["loadgen_ceiling"][str(c)] = res = self.level(f"{self.vecq.url}/healthz", c, mode="get")
                say(f"  c={c}: {res['qps']} req/s, p50 {res['p50_ms']} ms")
            say("npy upload (ingest rate only; a scratch collection)")
            self.vecq.create("bench-npy", cfg.dim, "Flat")
            result["ingest_npy"] = self.vecq.ingest_npy("bench-npy", self.ds.vectors)
            self.vecq.delete("bench-npy")
            say(f"  npy ingest: {result['ingest_npy'].get('vectors_per_s', result['ingest_npy'].get('status'))}")
            result["indexes"] = {}
            tune_spec = "Flat" if "Flat" in cfg.indexes else cfg.indexes[0]
            for spec in cfg.indexes:
                result["indexes"][spec] = self.index(spec)
                if spec != tune_spec:  # keeps worker restarts (tuning) from reloading it
                    self.vecq.delete(collection_name(spec))
            if cfg.tune:
                result["tuning"] = self.tuning(collection_name(tune_spec), tune_spec)
        except Exception:
            say("failed; last lines of the stack's logs:\n" + self.vecq.logs())
            raise
        finally:
            self.vecq.stop()


def _loadavg() -> tuple[float, float, float]:
    import os

    return os.getloadavg()


def run(cfg: Config) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vecq-bench-") as tmp:
        return Run(cfg, Path(tmp)).go()
