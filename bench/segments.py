"""The segments section of `make bench` (issue #14), also alone: `python -m bench --only segments`.

What sealed segments are for, measured in one run on this host, each phase while the others are idle:

- **build once** (W = `seg_build_workers`, 2): an HNSW32 collection of `seg_hnsw_n` rows uploaded as one `.npy`;
  the upload seals when its last part lands (production settings: `VECQ_SEAL_EVERY_ROWS` 100,000). Timed from the
  upload's acknowledgment to every worker having answered a search after the manifest lists the segment, against
  one in-process `faiss` add of the same rows in the same order on one OpenMP thread (bench/segment_baseline.py,
  run in the same run while the stack is idle), whose ids the sealed collection must give back.
- **cold start**: the workers stopped, one started again: from launching its process to the first search it
  serves on that collection, with the child's own start and its `load_s`.
- **memory** (W = `seg_memory_workers`, 4): the same sealed collection loaded by W fresh worker children. Each
  child's RssAnon (/proc/PID/status) and Pss (/proc/PID/smaps_rollup) are read after it started and before it
  loads (the test-only `VECQ_TEST_START_DELAY_S` holds the load back for that; nothing else changes), then after
  it loaded the collection and served a bounded search load, so that the segment's pages it needs are mapped in.
  The sums of (after - before) over the children are compared with one copy of the segment's `index.faiss`.
- **trained**: IVF specs of `seg_n` rows uploaded and sealed (trained once, on the sample vecq draws). The ingest
  rate is from the upload's first byte to its acknowledgment, when every row is durable in the log and searched
  (exactly, in the growing segment) by every search after it: what the issue's "ingest" goal measures, the build
  having its own goal. Reported beside it: the rate to every worker searching the trained segment, and the time
  from the acknowledgment to then over an in-process train + add of the same rows; recall@k against in-process
  FAISS trained on the same sample with the same `nprobe`.
- **search speed**: the same rows twice, one collection sealed, one with every row in the growing segment
  (automatic seals out of reach for this phase), QPS at `seg_levels`, alternating, each `repeats` times.

Every load is bounded in requests and seconds; every wait has a deadline; the stack is the bench's own
(vecq.stack.Stack, loopback only) and is stopped at the end.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis

from bench import cpu, data, loadgen, report
from bench.loadgen import LoadSpec
from bench.service import NO_AUTO_SEAL, Vecq

ROOT = Path(__file__).resolve().parent.parent

# Issue #14's goals, as ratios or limits.
GOALS = {"anon_ratio": 0.3, "pss_ratio": 1.3, "build_ratio": 1.3, "cold_start_s": 2.0, "recall_delta": 0.01,
         "ingest_per_s": 100_000.0, "speed_ratio": 0.9}


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] segments: {msg}", file=sys.stderr, flush=True)


def production_seal_env(rows: int | None) -> dict[str, str]:
    """The seal settings a deployment has by default (common/settings.py), `rows` overriding the row threshold."""
    from common.settings import Settings

    fields = Settings.model_fields
    return {"VECQ_SEAL_EVERY_ROWS": str(rows or fields["seal_every_rows"].default),
            "VECQ_SEAL_EVERY_BYTES": str(fields["seal_every_bytes"].default),
            "VECQ_TRAIN_SAMPLE_ROWS": str(fields["train_sample_rows"].default)}


TRAINED = re.compile(r"IVF|PQ|SQ|PCA|OPQ|RaBitQ|ITQ")  # specs FAISS must train before an add (for the bench's specs)


def centroid_rows(spec: str) -> int:
    """Rows a trained spec needs before vecq seals it: 39 per centroid of the largest k-means in it, at least
    1,000 (worker/index.py training_rows); 0 for a spec without training."""
    if not TRAINED.search(spec):
        return 0
    m = re.search(r"IVF(\d+)", spec)
    nlist = int(m.group(1)) if m else 0
    bits = [int(b) for b in re.findall(r"x(\d+)", spec)] or ([8] if re.search(r"PQ\d+", spec) else [0])
    centroids = max(nlist, *(2**b if b else 0 for b in bits))
    return max(1000, 39 * centroids)


def train_rows(spec: str, sample_rows: int) -> int:
    """The sample vecq trains `spec` on: max(VECQ_TRAIN_SAMPLE_ROWS, centroid_rows) (worker/sealing.py template),
    all rows if the collection has fewer. Checked against the manifest's `trained_rows` before it is relied on."""
    return max(sample_rows, centroid_rows(spec))


def slug(spec: str) -> str:
    return "seg-" + re.sub(r"[^a-z0-9]+", "-", spec.lower()).strip("-")


# /proc readings ------------------------------------------------------------------------------------------
def proc_memory(pid: int) -> dict[str, int]:
    """Bytes: RssAnon, RssFile (status); Pss, Pss_Anon, Pss_File (smaps_rollup). Empty off Linux."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmRSS"):
                out[key] = int(value.split()[0]) * 1024
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, value = line.partition(":")
            if key in ("Pss", "Pss_Anon", "Pss_File", "Rss"):
                out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def mapped_files(pid: int, under: Path) -> dict[str, dict[str, int]]:
    """Resident and proportional bytes of every file under `under` that the process maps (/proc/PID/smaps), by
    file name: how much of a segment's files a worker has actually paged in, and its share of them."""
    out: dict[str, dict[str, int]] = {}
    prefix, current = str(under), None
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        head = line.split(None, 5)
        if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):  # a mapping's header line
            path = head[5].strip() if len(head) == 6 else ""
            current = out.setdefault(Path(path).name, {"rss": 0, "pss": 0}) if path.startswith(prefix) else None
        elif current is not None and line.startswith(("Rss:", "Pss:")):
            current[line[:3].lower()] += int(line.split()[1]) * 1024
    return out


@dataclass
class Window:
    """CPU of our processes and of the rest of the machine over a stretch of wall time (bench.cpu.Meter). The
    benchmark's own process counts as ours, and so does every child it reaped meanwhile (a finished child's
    /proc entry is gone, but its CPU is in this process's RUSAGE_CHILDREN)."""

    groups: dict[str, list[int]]
    meter: cpu.Meter = field(init=False)
    reaped: float = field(init=False)

    def __post_init__(self) -> None:
        self.groups = {**self.groups, "bench": [os.getpid()]}
        self.reaped = _children_seconds()
        self.meter = cpu.Meter(self.groups).start()

    def stop(self) -> dict[str, Any] | None:
        res = self.meter.stop(1, {"reaped children": _children_seconds() - self.reaped})
        if res is None:
            return None
        return {"cores": res["cores"], "machine_busy_cores": res["machine_busy_cores"],
                "others_cores": res["others_cores"], "cpus": res["cpus"]}


def _children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Segments:
    def __init__(self, cfg: Any, tmp: Path) -> None:
        self.cfg = cfg
        self.tmp = tmp / "segments"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.prod_env = {**production_seal_env(cfg.seg_seal_every_rows), "VECQ_LOG_JSON": "0"}
        self.vecq = Vecq(self.tmp / "vecq", cfg.seg_build_workers, api_processes=cfg.api_processes,
                         env=dict(self.prod_env))
        self.vectors = np.zeros((0, cfg.dim), np.float32)
        self.queries = np.zeros((0, cfg.dim), np.float32)
        self.truth: dict[int, np.ndarray] = {}

    # Helpers ---------------------------------------------------------------------------------------------
    @property
    def hnsw_n(self) -> int:
        return int(self.cfg.seg_hnsw_n or self.cfg.seg_n)

    def template(self, spec: str) -> dict[str, Any]:
        body: dict[str, Any] = {"k": self.cfg.k}
        if "HNSW" in spec.upper():
            body["params"] = {"efSearch": self.cfg.ef_search}
        elif "IVF" in spec.upper():
            body["params"] = {"nprobe": self.cfg.seg_nprobe}
        return body

    def url(self, name: str) -> str:
        return f"{self.vecq.url}/v1/collections/{name}/search"

    def level(self, name: str, spec: str, c: int) -> dict[str, Any]:
        cfg = self.cfg
        spec_ = LoadSpec(url=self.url(name), concurrency=c, max_requests=cfg.requests, max_seconds=cfg.duration,
                         warmup_s=cfg.warmup, queries_path=str(self.tmp / "queries.npy"), template=self.template(spec),
                         watch=self.vecq.pids())
        return loadgen.run(spec_).summary()

    def collect(self, name: str, spec: str) -> dict[int, list[int]]:
        """Every query once, its hit ids back (bounded by the query count and `collect_timeout`)."""
        spec_ = LoadSpec(url=self.url(name), concurrency=8, max_requests=len(self.queries),
                         max_seconds=self.cfg.collect_timeout, warmup_s=0, queries_path=str(self.tmp / "queries.npy"),
                         template=self.template(spec), collect=True)
        res = loadgen.run(spec_)
        if res.errors:
            say(f"  recall run on {name}: {res.errors} errors, e.g. {res.error_samples[:1]}")
        return data.as_rows(res.ids)

    def recall(self, rows: dict[int, list[int]] | np.ndarray, n: int) -> float | None:
        return data.recall_at_k(rows, self.truth[n], self.cfg.k)

    def search_once(self, name: str, spec: str, wait: float = 60) -> dict[str, Any]:
        body = orjson.dumps({"vector": self.queries[0], **self.template(spec)}, option=orjson.OPT_SERIALIZE_NUMPY)
        resp = self.vecq.client.post(f"/v1/collections/{name}/search", content=body, params={"wait": wait},
                                     headers={"content-type": "application/json"})
        if resp.status_code != 200:
            raise RuntimeError(f"search on {name}: HTTP {resp.status_code} {resp.text[:300]}")
        return dict(resp.json())

    def warm_all(self, name: str, spec: str, timeout: float = 600) -> dict[str, Any]:
        """Search (2 per worker at a time) until every worker has answered: with strong consistency each answer
        comes after its worker caught up with the manifest, i.e. mapped the newest segments. Returns when the
        first and the last worker answered (time.perf_counter)."""
        seen: dict[str, float] = {}
        started = time.perf_counter()
        deadline = started + timeout
        with ThreadPoolExecutor(2 * self.vecq.workers) as pool:
            while len(seen) < self.vecq.workers:
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"only {len(seen)} of {self.vecq.workers} workers answered on {name}")
                for res in pool.map(lambda _: self.search_once(name, spec), range(2 * self.vecq.workers)):
                    seen.setdefault(res["worker"], time.perf_counter())
        return {"first_at": min(seen.values()), "all_at": max(seen.values()), "workers": sorted(seen),
                "seconds": round(max(seen.values()) - started, 3)}

    def wait_sealed(self, name: str, rows: int, timeout: float) -> tuple[float, dict[str, Any]]:
        """Poll the collection (the API reads the manifest in Redis; no worker is involved) until its segments
        hold `rows` rows. Returns (time.perf_counter of the first poll that saw it, the collection)."""
        deadline = time.perf_counter() + timeout
        while True:
            info = self.vecq.collection(name)
            if info["sealed_rows"] >= rows:
                return time.perf_counter(), info
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{name}: {info['sealed_rows']} of {rows} rows sealed after {timeout:.0f} s")
            time.sleep(0.05)

    def copies(self, name: str, rows: int, sealed: bool, timeout: float = 15) -> list[dict[str, Any]]:
        """Every worker's copy of `name` from /v1/workers (heartbeats: up to one interval late), once every copy
        is as expected: all rows sealed and an empty growing segment, or all rows growing."""
        deadline = time.perf_counter() + timeout
        while True:
            views = self.vecq.workers_view()
            out = []
            for w in views:
                for c in w["collections"]:
                    if c["name"] == name:
                        out.append({"worker": w["worker"], "pid": w["pid"], "memory": w.get("memory"), **c})
            want = (rows, 0) if sealed else (0, rows)
            if len(out) == self.vecq.workers and all((c["sealed_rows"], c["growing_rows"]) == want for c in out):
                return out
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{name}: worker copies not as expected ({want} sealed/growing rows): {out}")
            time.sleep(0.25)

    def baseline(self, spec: str, n: int, order: np.ndarray, *, train: int = 0) -> dict[str, Any]:
        """In-process FAISS in a child process (bench/segment_baseline.py), its CPU metered."""
        out_dir = self.tmp / f"baseline-{slug(spec)}"
        out_dir.mkdir(exist_ok=True)
        np.save(out_dir / "order.npy", order)
        cfg_path, out_path = out_dir / "cfg.json", out_dir / "out.json"
        cfg_path.write_text(json.dumps({
            "vectors": str(self.tmp / "vectors.npy"), "queries": str(self.tmp / "queries.npy"),
            "order": str(out_dir / "order.npy"), "n": n, "index": spec, "k": self.cfg.k, "train_rows": train,
            "ef_search": self.cfg.ef_search, "nprobe": self.cfg.seg_nprobe, "out_dir": str(out_dir)}))
        with open(out_dir / "stderr.log", "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "bench.segment_baseline", str(cfg_path), str(out_path)],
                                    cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
            window = Window({})  # the child is reaped before the window closes: its CPU counts as reaped
            try:
                rc = proc.wait(timeout=3600)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise
            cpu_use = window.stop()
        if rc != 0:
            raise RuntimeError(f"in-process baseline failed: {(out_dir / 'stderr.log').read_text()[-2000:]}")
        res = json.loads(out_path.read_text())
        res["cpu"] = cpu_use
        # vecq leaves out what FAISS marks -1 (fewer than k hits, as IVF can with a small nprobe)
        res["_rows"] = {q: [r for r in hits if r >= 0] for q, hits in enumerate(np.load(res.pop("rows_path")).tolist())}
        return res

    def last_seal(self, name: str) -> dict[str, Any]:
        """The newest seal job of `name` that sealed rows: its own seconds and its stages' (which one to work on),
        from its record (the public API)."""
        listed = self.vecq.client.get("/v1/jobs", params={"collection": name, "type": "seal", "limit": 50})
        for job in listed.json().get("jobs", []) if listed.status_code == 200 else []:
            result = self.vecq.client.get(f"/v1/jobs/{job['job_id']}").json().get("result") or {}
            if result.get("sealed") and result.get("rows"):
                return {"seal_s": float(result["seconds"]), "seal_stages": result.get("stages", {})}
        return {"seal_s": None, "seal_stages": {}}

    def redis_view(self, name: str) -> dict[str, Any]:
        """From Redis: the collection's uid and the manifest's trained template; the last seal's own seconds."""
        from common import collections, segments

        assert self.vecq.stack is not None
        r = redis.Redis.from_url(self.vecq.stack.redis_url or "", decode_responses=True)
        try:
            col = collections.get(r, name)
            manifest = segments.read(r, col)
        finally:
            r.close()
        return {"uid": col.uid, "trained_rows": manifest.trained_rows, "trained": manifest.trained,
                **self.last_seal(name)}

    def auto_seal_rows(self, spec: str) -> int:
        """Rows from which an upload seals when its last part lands (worker/tasks.py maybe_seal)."""
        rows, size = int(self.prod_env["VECQ_SEAL_EVERY_ROWS"]), int(self.prod_env["VECQ_SEAL_EVERY_BYTES"])
        return max(1, min(rows, size // (4 * self.cfg.dim)), centroid_rows(spec))

    def index_file(self, name: str, segment: dict[str, Any]) -> int:
        uid = self.redis_view(name)["uid"]
        return (self.vecq.segment_store / name / uid / segment["id"] / "index.faiss").stat().st_size

    def upload_sealed(self, name: str, spec: str, n: int) -> dict[str, Any]:
        """Create `name`, upload rows [0, n) as one .npy (ids = row numbers), wait for the seal the upload's last
        part requests, then for every worker to answer on the segment. Times are time.perf_counter stamps."""
        self.vecq.create(name, self.cfg.dim, spec)
        stamps: dict[str, float] = {}
        window = Window(self.vecq.pids())
        upload = self.vecq.ingest_npy(name, self.vectors[:n], id_prefix="", stamps=stamps)
        if "vectors_per_s" not in upload:
            raise RuntimeError(f"upload into {name} refused: {upload}")
        if n < self.auto_seal_rows(spec):  # below the threshold an upload does not seal: ask, as a user would
            self.vecq.seal(name)
        sealed_at, info = self.wait_sealed(name, n, timeout=self.cfg.seg_timeout)
        warm = self.warm_all(name, spec)
        cpu_use = window.stop()
        return {"upload": upload, "started": stamps["started"], "acked": stamps["acked"], "sealed_at": sealed_at,
                "first_at": warm["first_at"], "all_at": warm["all_at"], "workers": warm["workers"], "info": info,
                "cpu": cpu_use}

    # Phases ----------------------------------------------------------------------------------------------
    def build_once(self) -> dict[str, Any]:
        n, spec, name = self.hnsw_n, "HNSW32", slug("HNSW32")
        say(f"build once: {spec} {n:,} x {self.cfg.dim}, one .npy upload, {self.vecq.workers} workers")
        up = self.upload_sealed(name, spec, n)
        info = up["info"]
        if len(info["segments"]) != 1:
            raise RuntimeError(f"{name}: expected one segment after the upload, found {info['segments']}")
        segment = info["segments"][0]
        build_s = up["all_at"] - up["acked"]
        view = self.redis_view(name)
        copies = self.copies(name, n, sealed=True)
        say(f"  upload {up['upload']['seconds']} s ({up['upload']['vectors_per_s']:,.0f} vectors/s); acknowledged -> "
            f"manifest lists the segment {up['sealed_at'] - up['acked']:.2f} s (seal job {view['seal_s']} s, "
            f"segment build+write {segment['build_s']} s) -> every worker searching it {build_s:.2f} s")
        rows = self.collect(name, spec)
        order, parts = self.vecq.row_order(name)
        if parts != [n]:
            raise RuntimeError(f"{name}: segment parts {parts}, expected [{n}]")
        say(f"  in-process: one faiss add of the same {n:,} rows in the same order, 1 thread")
        base = self.baseline(spec, n, order)
        base_rows = base.pop("_rows")
        ratio = build_s / base["add_s"]
        out = {
            "index": spec, "rows": n, "workers": self.vecq.workers, "collection": name,
            "upload": up["upload"], "seconds_ack_to_sealed": round(up["sealed_at"] - up["acked"], 3),
            "seconds_ack_to_all_workers": round(build_s, 3),
            "seconds_ack_to_first_worker": round(up["first_at"] - up["acked"], 3),
            "seal_job_s": view["seal_s"], "seal_stages": view["seal_stages"], "segment": segment,
            "index_file_bytes": self.index_file(name, segment),
            "copies": copies, "cpu": up["cpu"], "inprocess": base, "ratio": round(ratio, 3),
            "recall": self.recall(rows, n), "recall_inprocess": self.recall(base_rows, n),
            "identical_ids": data.same_ids(rows, base_rows)}
        say(f"  in-process add {base['add_s']} s -> ratio {ratio:.3f} (goal <= {GOALS['build_ratio']}); "
            f"recall@{self.cfg.k} vecq {out['recall']}, in-process {out['recall_inprocess']}, identical ids "
            f"{out['identical_ids']['identical']}/{out['identical_ids']['compared']}")
        return out

    def cold_start(self, name: str, spec: str) -> dict[str, Any]:
        """Stop every worker, launch one, and time its first answer on `name` (sent at launch, queued meanwhile)."""
        assert self.vecq.stack is not None
        trials = []
        for trial in range(self.cfg.seg_cold_trials):
            self.vecq.stop_workers()
            launched = time.time()
            proc = self.vecq.stack.start_worker(1, extra_env=self.vecq.worker_env)
            res = self.search_once(name, spec, wait=120)
            answered = time.time()
            view = next((w for w in self.vecq.workers_view() if w["worker"] == res["worker"]), None)
            deadline = time.perf_counter() + 15
            while view is None or not any(c["name"] == name for c in view["collections"]):
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"worker {res['worker']} never reported its copy of {name}")
                time.sleep(0.2)
                view = next((w for w in self.vecq.workers_view() if w["worker"] == res["worker"]), None)
            copy = next(c for c in view["collections"] if c["name"] == name)
            child = [p for p in cpu.tree(proc.pid) if p != proc.pid]
            if view["pid"] not in child:
                raise RuntimeError(f"the first answer came from {res['worker']}, not the restarted worker {child}")
            trials.append({"trial": trial + 1, "seconds_from_launch": round(answered - launched, 3),
                           "seconds_from_child_start": round(answered - view["started_at"], 3),
                           "seconds_launch_to_child_start": round(view["started_at"] - launched, 3),
                           "load_s": copy["load_s"], "sealed_rows": copy["sealed_rows"],
                           "growing_rows": copy["growing_rows"], "mapped_bytes": copy["mapped_bytes"],
                           "took_ms": res.get("took_ms")})
            say(f"  cold start {trial + 1}: first search {trials[-1]['seconds_from_launch']} s after launch, "
                f"{trials[-1]['seconds_from_child_start']} s after the worker child started, load_s {copy['load_s']}")
        worst = max(trials, key=lambda t: t["seconds_from_launch"])
        return {"collection": name, "trials": trials, "worst": worst}

    def memory(self, name: str, spec: str, rows: int, index_bytes: int, segment_bytes: int) -> dict[str, Any]:
        assert self.vecq.stack is not None
        w_count, delay = self.cfg.seg_memory_workers, self.cfg.seg_start_delay_s
        say(f"memory: {w_count} fresh workers load the sealed {spec} ({rows:,} rows); /proc read before and after")
        self.vecq.stop_workers()
        env = {**self.vecq.worker_env, "VECQ_ENABLE_TEST_TASKS": "1", "VECQ_TEST_START_DELAY_S": str(delay)}
        self.vecq.workers = w_count
        for i in range(w_count):
            self.vecq.stack.start_worker(i + 1, extra_env=env)
        before: dict[int, dict[str, Any]] = {}
        deadline = time.perf_counter() + 180
        while len(before) < w_count:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"only {len(before)} of {w_count} worker children seen before their load")
            beats = self.heartbeats()
            for w in self.vecq.stack.workers:
                for pid in cpu.tree(w.pid):
                    beat = beats.get(pid)
                    if pid != w.pid and pid not in before and beat is not None and not beat.get("collections"):
                        reading = proc_memory(pid)
                        at = time.time()
                        before[pid] = {**reading, "read_at": at, "started_at": beat["started_at"],
                                       "before_load": at < float(beat["started_at"]) + delay}
            time.sleep(0.05)
        if not all(b["before_load"] for b in before.values()):
            raise RuntimeError(f"a 'before' reading may have come after its worker's load: {before}")
        self.vecq.stack.wait_ready(timeout=300, workers=w_count)
        self.warm_all(name, spec)
        touch = LoadSpec(url=self.url(name), concurrency=8, max_requests=self.cfg.seg_touch_requests,
                         max_seconds=self.cfg.seg_touch_s, warmup_s=0, queries_path=str(self.tmp / "queries.npy"),
                         template=self.template(spec))
        touched = loadgen.run(touch).summary()
        copies = self.copies(name, rows, sealed=True)
        by_pid = {c["pid"]: c for c in copies}
        per_worker = []
        store = self.vecq.segment_store
        for pid, b in sorted(before.items()):
            a = proc_memory(pid)
            files = mapped_files(pid, store)
            c = by_pid.get(pid, {})
            per_worker.append({
                "pid": pid, "before": {k: v for k, v in b.items() if k not in ("read_at", "started_at")},
                "after": a, "anon_delta": a.get("RssAnon", 0) - b.get("RssAnon", 0),
                "pss_delta": a.get("Pss", 0) - b.get("Pss", 0), "file_delta": a.get("RssFile", 0) - b.get("RssFile", 0),
                "segment_files": files, "index_resident": files.get("index.faiss", {}).get("rss", 0),
                "segment_pss": sum(f["pss"] for f in files.values()),
                "load_s": c.get("load_s"), "mapped_bytes": c.get("mapped_bytes"), "index_bytes": c.get("index_bytes"),
                "reported_memory": c.get("memory")})
        anon = sum(w["anon_delta"] for w in per_worker)
        pss = sum(w["pss_delta"] for w in per_worker)
        out = {"collection": name, "index": spec, "rows": rows, "workers": w_count, "index_file_bytes": index_bytes,
               "segment_bytes": segment_bytes, "touch_load": touched, "per_worker": per_worker,
               "anon_sum": anon, "pss_sum": pss, "anon_ratio": round(anon / index_bytes, 4),
               "pss_ratio": round(pss / index_bytes, 4),
               "segment_pss_sum": sum(w["segment_pss"] for w in per_worker),
               "index_resident_fraction": round(sum(w["index_resident"] for w in per_worker) / (w_count * index_bytes),
                                                4),
               "worst_case_pss_ratio": round((anon + segment_bytes) / index_bytes, 4)}
        say(f"  anon {anon / 2**20:,.1f} MiB over {w_count} workers = {out['anon_ratio']} x the index file "
            f"({index_bytes / 2**20:,.1f} MiB; goal <= {GOALS['anon_ratio']}); PSS {pss / 2**20:,.1f} MiB = "
            f"{out['pss_ratio']} x (goal <= {GOALS['pss_ratio']}), of which the segment's files "
            f"{out['segment_pss_sum'] / 2**20:,.1f} MiB; index.faiss paged in per worker: "
            f"{out['index_resident_fraction']:.0%}")
        return out

    def heartbeats(self) -> dict[int, dict[str, Any]]:
        """Live worker children's heartbeats, by pid (the first is written before the child loads anything)."""
        from common import keys

        assert self.vecq.stack is not None
        r = redis.Redis.from_url(self.vecq.stack.redis_url or "")
        try:
            wids = [w.decode() for w in r.zrange(keys.WORKERS, 0, -1)]
            raw = r.mget([keys.heartbeat(w) for w in wids]) if wids else []
        finally:
            r.close()
        beats = [json.loads(x) for x in raw if x]
        return {int(b["pid"]): b for b in beats if b.get("pid")}

    def trained(self, spec: str) -> dict[str, Any]:
        n, name = self.cfg.seg_n, slug(spec)
        sample = train_rows(spec, int(self.prod_env["VECQ_TRAIN_SAMPLE_ROWS"]))
        say(f"trained: {spec} {n:,} x {self.cfg.dim}, one .npy upload, sealed (trained on {min(n, sample):,} rows)")
        up = self.upload_sealed(name, spec, n)
        info = up["info"]
        view = self.redis_view(name)
        if view["trained_rows"] != min(n, sample):
            raise RuntimeError(f"{name}: vecq trained on {view['trained_rows']} rows, the bench expected "
                               f"{min(n, sample)}: the in-process replica would not be the same")
        seconds = up["all_at"] - up["started"]
        rows = self.collect(name, spec)
        order, parts = self.vecq.row_order(name)
        if sum(parts) != n or len(parts) != 1:
            raise RuntimeError(f"{name}: segment parts {parts}, expected [{n}]")
        base = self.baseline(spec, n, order, train=sample)
        base_rows = base.pop("_rows")
        out = {"index": spec, "rows": n, "workers": self.vecq.workers, "nprobe": self.cfg.seg_nprobe,
               "train_rows": view["trained_rows"], "upload": up["upload"],
               "seconds_first_byte_to_all_workers": round(seconds, 3),
               "seconds_first_byte_to_first_worker": round(up["first_at"] - up["started"], 3),
               "seconds_upload": round(up["acked"] - up["started"], 3),
               "seconds_ack_to_sealed": round(up["sealed_at"] - up["acked"], 3), "seal_job_s": view["seal_s"],
               "seal_stages": view["seal_stages"],
               "segments": info["segments"], "ingest_per_s": round(n / (up["acked"] - up["started"]), 1),
               "sealed_per_s": round(n / seconds, 1), "cpu": up["cpu"],
               "inprocess": base, "recall": self.recall(rows, n), "recall_inprocess": self.recall(base_rows, n),
               "identical_ids": data.same_ids(rows, base_rows)}
        out["recall_delta"] = round(abs(out["recall"] - out["recall_inprocess"]), 6) \
            if out["recall"] is not None and out["recall_inprocess"] is not None else None
        out["build_ratio"] = round((up["all_at"] - up["acked"]) / (base["train_s"] + base["add_s"]), 3)
        say(f"  ingest {out['ingest_per_s']:,.0f} vectors/s (durable and searchable); "
            f"first byte -> every worker searching the segment {seconds:.2f} s = {out['sealed_per_s']:,.0f} "
            f"vectors/s (upload {out['seconds_upload']} s, seal job {view['seal_s']} s {view['seal_stages']}; "
            f"in-process train {base['train_s']} s + add {base['add_s']} s); recall@{self.cfg.k} nprobe "
            f"{self.cfg.seg_nprobe}: vecq "
            f"{out['recall']}, in-process {out['recall_inprocess']}, identical ids "
            f"{out['identical_ids']['identical']}/{out['identical_ids']['compared']}")
        self.vecq.delete(name)
        return out

    def speed(self, spec: str) -> dict[str, Any]:
        n = self.cfg.seg_flat_n
        sealed, growing = slug(spec) + "-sealed", slug(spec) + "-growing"
        say(f"search speed: {spec} {n:,} x {self.cfg.dim}, sealed against all rows in the growing segment")
        for name in (sealed, growing):
            self.vecq.create(name, self.cfg.dim, spec)
            self.vecq.ingest_npy(name, self.vectors[:n], id_prefix="")
        seal = self.vecq.seal(sealed)
        self.warm_all(sealed, spec)
        self.warm_all(growing, spec)
        copies = {"sealed": self.copies(sealed, n, sealed=True), "growing": self.copies(growing, n, sealed=False)}
        levels: dict[str, dict[str, Any]] = {"sealed": {}, "growing": {}}
        for c in self.cfg.seg_levels:
            runs: dict[str, list[dict[str, Any]]] = {"sealed": [], "growing": []}
            pair = [("sealed", sealed), ("growing", growing)]
            for rep in range(self.cfg.repeats):  # alternating (AB BA AB ...): a busy spell or a drift hits both
                for kind, name in (pair if rep % 2 == 0 else pair[::-1]):
                    runs[kind].append(self.level(name, spec, c))
            for kind, rs in runs.items():
                med = sorted(rs, key=lambda r: r["qps"])[len(rs) // 2]
                levels[kind][str(c)] = {**med, "qps_runs": [r["qps"] for r in rs]}
            s, g = levels["sealed"][str(c)], levels["growing"][str(c)]
            say(f"  c={c}: sealed {s['qps']} QPS (p50 {s['p50_ms']} ms), growing {g['qps']} QPS (p50 {g['p50_ms']} "
                f"ms): {s['qps'] / g['qps']:.3f}x (runs {s['qps_runs']} / {g['qps_runs']})")
        rows_s, rows_g = self.collect(sealed, spec), self.collect(growing, spec)
        out = {"index": spec, "rows": n, "workers": self.vecq.workers, "seal": seal, "copies": copies,
               "levels": levels, "ratios": {c: round(levels["sealed"][c]["qps"] / levels["growing"][c]["qps"], 4)
                                            for c in levels["sealed"]},
               "recall": {"sealed": self.recall(rows_s, n), "growing": self.recall(rows_g, n)},
               "identical_ids": data.same_ids(rows_s, rows_g)}
        for name in (sealed, growing):
            self.vecq.delete(name)
        return out

    # The section ------------------------------------------------------------------------------------------
    def go(self) -> dict[str, Any]:
        cfg = self.cfg
        started = time.time()
        sizes = sorted({n for phase, n in (("build", self.hnsw_n), ("trained", cfg.seg_n), ("speed", cfg.seg_flat_n))
                        if phase in cfg.seg_phases})
        n_max = max(sizes)
        say(f"data: {n_max:,} x {cfg.dim} clustered (seed {cfg.seed}), {cfg.queries} queries, exact top-{cfg.k}")
        self.vectors, self.queries = data.clustered(n_max, cfg.dim, cfg.queries, cfg.seed)
        for n in sizes:
            self.truth[n] = data.exact_top_k(self.vectors[:n], self.queries, cfg.k)
        np.save(self.tmp / "vectors.npy", self.vectors)
        np.save(self.tmp / "queries.npy", self.queries)
        out: dict[str, Any] = {
            "run": {"command": cfg.command, "started_at": started, "machine": report.machine(),
                    "load_before": list(_loadavg())},
            "config": {"hnsw_n": self.hnsw_n, "trained_n": cfg.seg_n, "flat_n": cfg.seg_flat_n, "dim": cfg.dim,
                       "queries": cfg.queries, "k": cfg.k, "ef_search": cfg.ef_search, "nprobe": cfg.seg_nprobe,
                       "trained": list(cfg.seg_trained), "speed_indexes": list(cfg.seg_speed_indexes),
                       "phases": list(cfg.seg_phases), "build_workers": cfg.seg_build_workers,
                       "memory_workers": cfg.seg_memory_workers,
                       "api_processes": cfg.api_processes, "levels": list(cfg.seg_levels), "repeats": cfg.repeats,
                       "duration": cfg.duration, "requests": cfg.requests, "warmup": cfg.warmup,
                       "worker_env": self.prod_env}}
        say(f"stack: embedded Redis, {cfg.seg_build_workers} workers, {cfg.api_processes} API processes, "
            f"production seal settings {self.prod_env}")
        self.vecq.start(api_env={"VECQ_COALESCE": "1"})
        try:
            if "build" in cfg.seg_phases:
                build = out["build_once"] = self.build_once()
                out["cold_start"] = self.cold_start(build["collection"], "HNSW32")
                out["memory"] = self.memory(build["collection"], "HNSW32", build["rows"], build["index_file_bytes"],
                                            int(build["segment"]["bytes"]))
                self.vecq.delete(build["collection"])
                self.vecq.restart_workers(self.vecq.worker_env, count=cfg.seg_build_workers)
            if "trained" in cfg.seg_phases:
                out["trained"] = {spec: self.trained(spec) for spec in cfg.seg_trained}
            if "speed" in cfg.seg_phases:
                self.vecq.restart_workers(NO_AUTO_SEAL, count=cfg.seg_build_workers)
                out["speed"] = {spec: self.speed(spec) for spec in cfg.seg_speed_indexes}
        except Exception:
            say("failed; last lines of the stack's logs:\n" + self.vecq.logs())
            raise
        finally:
            self.vecq.stop()
        out["run"]["duration_s"] = round(time.time() - started, 1)
        out["run"]["load_after"] = list(_loadavg())
        say(f"done in {out['run']['duration_s']} s")
        return out


def _loadavg() -> tuple[float, float, float]:
    import os

    return os.getloadavg()


# Goals and the Markdown section (bench/report.py calls these) ---------------------------------------------
def _mib(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**20:,.1f}"


def goals(seg: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue #14's goals from a segments section, as rows of report.goals."""
    out: list[dict[str, Any]] = []

    def add(goal: str, target: str, value: float | str | None, met: bool | None) -> None:
        out.append({"issue": 14, "goal": goal, "target": target,
                    "measured": round(value, 4) if isinstance(value, float) else value, "met": met})

    mem = seg.get("memory")
    if mem:
        what = f"{mem['index']} {mem['rows']:,} x {seg['config']['dim']}, sealed, {mem['workers']} workers"
        add(f"{what}: sum over workers of anon memory after - before loading it / one copy of index.faiss",
            f"<= {GOALS['anon_ratio']}", mem["anon_ratio"], mem["anon_ratio"] <= GOALS["anon_ratio"])
        add(f"{what}: sum over workers of PSS after - before loading it / one copy of index.faiss",
            f"<= {GOALS['pss_ratio']}", mem["pss_ratio"], mem["pss_ratio"] <= GOALS["pss_ratio"])
    build = seg.get("build_once")
    if build:
        add(f"{build['index']} {build['rows']:,}, {build['workers']} workers: upload acknowledged -> every worker "
            "searching the sealed segment / one in-process add (1 thread)", f"<= {GOALS['build_ratio']}",
            build["ratio"], build["ratio"] <= GOALS["build_ratio"])
    cold = seg.get("cold_start")
    if cold:
        worst = cold["worst"]
        add(f"cold start: launching a worker process -> its first search served (worst of {len(cold['trials'])})",
            f"<= {GOALS['cold_start_s']} s", worst["seconds_from_launch"],
            worst["seconds_from_launch"] <= GOALS["cold_start_s"])
        child = max(t["seconds_from_child_start"] for t in cold["trials"])
        add("cold start: the worker child's start -> its first search served (the load, load_s "
            f"{max(t['load_s'] or 0 for t in cold['trials'])} s, and the search)", f"<= {GOALS['cold_start_s']} s",
            child, child <= GOALS["cold_start_s"])
    for spec, t in (seg.get("trained") or {}).items():
        if t["recall_delta"] is not None:
            add(f"{spec} {t['rows']:,}: recall@k difference, vecq vs in-process FAISS (same training sample, nprobe "
                f"{t['nprobe']})", f"<= {GOALS['recall_delta']}", t["recall_delta"],
                t["recall_delta"] <= GOALS["recall_delta"])
        add(f"{spec} {t['rows']:,}: ingest, upload's first byte -> every row durable in the log and searchable "
            "(vectors/s)", f">= {GOALS['ingest_per_s']:,.0f}", t["ingest_per_s"],
            t["ingest_per_s"] >= GOALS["ingest_per_s"])
        if "build_ratio" in t:  # no goal of the issue's: how far the trained build is from FAISS's own
            add(f"{spec} {t['rows']:,}: upload acknowledged -> every worker searching the trained segment / "
                "in-process train + add (1 thread)", "reported", t["build_ratio"], None)
    for spec, sp in (seg.get("speed") or {}).items():
        for c, ratio in sp["ratios"].items():
            add(f"{spec} {sp['rows']:,}, c={c}: QPS sealed / QPS all in the growing segment",
                f">= {GOALS['speed_ratio']}", ratio, ratio >= GOALS["speed_ratio"])
    return out


def table(seg: dict[str, Any]) -> str:
    run, cfg = seg["run"], seg["config"]
    m = run["machine"]
    lines = [f"### Sealed segments (issue #14): `{run['command']}`, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(run['started_at']))}, {run.get('duration_s')} s", "",
             f"{m['nproc']} CPUs ({m['cpu']}), {m['ram_gb']} GB RAM, {m['os']}, Python {m['python']}, faiss-cpu "
             f"{m['faiss_cpu']}, {m['redis_server']}; load average {run['load_before'][0]:.2f} before, "
             f"{(run.get('load_after') or [0])[0]:.2f} after. The cores are shared: other processes on the machine "
             "may have run during the measurements (their share is given per phase as `others` cores).", ""]
    build = seg.get("build_once")
    if build:
        base, c = build["inprocess"], build.get("cpu") or {}
        seg_info = build["segment"]
        lines += [f"**Build once**: {build['index']}, {build['rows']:,} x {cfg['dim']}, {build['workers']} workers, "
                  f"one .npy upload ({build['upload']['mb']} MB, {build['upload']['seconds']} s). Acknowledged -> the "
                  f"manifest lists the segment: {build['seconds_ack_to_sealed']} s (the seal job: "
                  f"{build['seal_job_s']} s, of which build + write {seg_info['build_s']} s) -> every worker searching "
                  f"it: **{build['seconds_ack_to_all_workers']} s**; in-process `add` of the same rows in the same "
                  f"order, 1 thread: **{base['add_s']} s** ({_f(base['add_per_s'])} vectors/s): "
                  f"**{build['ratio']}x**. Segment {_mib(seg_info['bytes'])} MiB, index.faiss "
                  f"{_mib(build['index_file_bytes'])} MiB, mapped by every worker: "
                  f"{all(x['mapped_bytes'] for x in build['copies'])}. Recall@{cfg['k']} (efSearch "
                  f"{cfg['ef_search']}): vecq {build['recall']}, in-process {build['recall_inprocess']}; identical ids "
                  f"{build['identical_ids']['identical']}/{build['identical_ids']['compared']}. The workers' "
                  "RssAnon right after (one of them replayed the log and built the segment): " + ", ".join(
                      f"{_mib((x.get('memory') or {}).get('anon'))}" for x in build["copies"]) + " MiB. Others: "
                  f"{c.get('others_cores', '-')} cores during the upload and seal, "
                  f"{(base.get('cpu') or {}).get('others_cores', '-')} during the in-process add.", ""]
    cold = seg.get("cold_start")
    if cold:
        lines += ["**Cold start** (every worker stopped, one launched, a search sent at launch and queued until it "
                  "serves it): " + "; ".join(
                      f"{t['seconds_from_launch']} s from launch ({t.get('seconds_launch_to_child_start')} s of it "
                      "before the worker child started: Python, Celery and faiss imports, the fork), "
                      f"{t['seconds_from_child_start']} s from the worker child's start, load_s {t['load_s']}"
                      for t in cold["trials"]) + ".", ""]
    mem = seg.get("memory")
    if mem:
        lines += [f"**Memory**: {mem['index']} {mem['rows']:,} rows sealed, {mem['workers']} fresh workers; "
                  f"index.faiss {_mib(mem['index_file_bytes'])} MiB, the segment's files "
                  f"{_mib(mem['segment_bytes'])} MiB. Before: each child after its start, before its load; after: the "
                  "collection loaded, every worker warmed and "
                  f"{mem['touch_load']['requests']} searches served (c=8), MiB:", "",
                  "| worker child | RssAnon before | after | delta | Pss before | after | delta | RssFile delta | "
                  "index.faiss paged in | segment files' Pss | load_s |", "|---|" + "---:|" * 10]
        for w in mem["per_worker"]:
            b, a = w["before"], w["after"]
            lines.append(f"| {w['pid']} | {_mib(b.get('RssAnon'))} | {_mib(a.get('RssAnon'))} | "
                         f"{_mib(w['anon_delta'])} | {_mib(b.get('Pss'))} | {_mib(a.get('Pss'))} | "
                         f"{_mib(w['pss_delta'])} | {_mib(w['file_delta'])} | {_mib(w['index_resident'])} | "
                         f"{_mib(w['segment_pss'])} | {w['load_s']} |")
        lines += [f"| **sum** | | | **{_mib(mem['anon_sum'])}** ({mem['anon_ratio']}x) | | | "
                  f"**{_mib(mem['pss_sum'])}** ({mem['pss_ratio']}x) | | | **{_mib(mem['segment_pss_sum'])}** | |",
                  "",
                  f"Of the PSS, the segment's mapped files (/proc/PID/smaps): {_mib(mem['segment_pss_sum'])} MiB in "
                  "all; the rest is code and data pages the first searches brought in. Each worker had "
                  f"{mem['index_resident_fraction']:.0%} of index.faiss paged in on average (PSS counts only what is "
                  "paged in). Were every page of every segment file paged in by every worker, PSS would be at most the "
                  "anon sum + one copy of the files (shared, whatever W): "
                  f"{mem['worst_case_pss_ratio']}x index.faiss.", ""]
    trained = seg.get("trained") or {}
    if trained:
        lines += [f"**Trained specs**, {next(iter(trained.values()))['workers']} workers, nprobe {cfg['nprobe']}:", "",
                  "| index | rows | trained on | upload s | ingest vectors/s | ack -> sealed s (seal job) | first "
                  "byte -> every worker searching s | sealed vectors/s | in-process train s | in-process add s | "
                  "recall vecq | recall in-process | identical ids | others (cores) |", "|---|" + "---:|" * 13]
        for spec, t in trained.items():
            base = t["inprocess"]
            lines.append(f"| {spec} | {t['rows']:,} | {t['train_rows']:,} | {t['seconds_upload']} | "
                         f"{_f(t['ingest_per_s'])} | {t['seconds_ack_to_sealed']} ({t['seal_job_s']}) | "
                         f"{t['seconds_first_byte_to_all_workers']} | {_f(t.get('sealed_per_s'))} | "
                         f"{base['train_s']} | {base['add_s']} | {t['recall']} | {t['recall_inprocess']} | "
                         f"{t['identical_ids']['identical']}/{t['identical_ids']['compared']} | "
                         f"{(t.get('cpu') or {}).get('others_cores', '-')} |")
        lines.append("")
    speed = seg.get("speed") or {}
    for spec, sp in speed.items():
        lines += [f"**Search speed**, {spec} {sp['rows']:,} x {cfg['dim']}, {sp['workers']} workers, coalescing on: "
                  "one collection sealed (one segment, empty growing segment), one with every row in the growing "
                  f"segment; alternating, the median of {cfg['repeats']} runs (all runs in parentheses). Identical ids "
                  f"sealed vs growing: {sp['identical_ids']['identical']}/{sp['identical_ids']['compared']}; recall "
                  f"{sp['recall']['sealed']} / {sp['recall']['growing']}.", "",
                  "| c | sealed QPS | growing QPS | sealed / growing | sealed p50 ms | growing p50 ms | "
                  "others (cores) |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for c, ratio in sp["ratios"].items():
            s, g = sp["levels"]["sealed"][c], sp["levels"]["growing"][c]
            others = max((x.get("cpu") or {}).get("others_cores") or 0 for x in (s, g))
            lines.append(f"| {c} | {_f(s['qps'])} ({', '.join(_f(q, 0) for q in s['qps_runs'])}) | {_f(g['qps'])} "
                         f"({', '.join(_f(q, 0) for q in g['qps_runs'])}) | {ratio:.3f}x | {_f(s['p50_ms'], 2)} | "
                         f"{_f(g['p50_ms'], 2)} | {others:.2f} |")
        lines.append("")
    return "\n".join(lines)


def _f(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"
