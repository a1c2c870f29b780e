"""`python -m bench.soak` (`make soak`): issue #16's soak test. A stack like `vecq up` (embedded Redis with AOF,
2 workers, 2 API processes, everything on 127.0.0.1 in a temp dir) under searches, writes, one bulk ingest and
chaos for `--minutes` (10), then checks what it promised and exits non-zero if it broke a promise.

    make soak                                   # 10 minutes, HNSW32, 100k x 128 + a 200k .npy ingest
    make soak SOAK_ARGS="--quick"               # ~2 minutes, small sizes and rates: a smoke run
    python -m bench.soak --minutes 5 --index Flat

For the whole run:
- searches, open loop, at `--search-fraction` (70 %) of the c=64 closed-loop peak measured just before;
- writers: `--write-rate` (200/s) single-vector upserts, new ids and updates of acknowledged ones, with metadata;
- one `--ingest-rows` (200k) .npy upload, early on;
- chaos: SIGKILL of a worker's pool child every `--chaos-every` s (60), once SIGKILL of a whole worker (its
  process group) and a new worker in its place, once Redis stopped (SIGTERM) and started again on its port and AOF.
Seals and a compaction happen on their own (VECQ_SEAL_EVERY_ROWS, VECQ_COMPACT_MAX_SEGMENTS set low).

Asserted at the end: no HTTP 5xx but 503 + Retry-After while Redis is down (429s counted apart); every acknowledged
write present exactly once with its last acknowledged vector and metadata (counts in Redis and in every worker's
index, every acknowledged id read back, no superseded row found); API RSS and Redis used_memory within +10 % over
the last 5 minutes (--quick: the last half), and Redis used_memory less the data (the live ids' `docs` fields, which
the writers' new ids grow, and the log not yet sealed, a sawtooth each seal trims) and less the growth of the write
batches' done markers (kept hours, asserted to expire) likewise. Output:
bench/results/soak.{md,json,png} (--quick: bench/results/quick).

The load runs in a child process of its own (`--driver`, asyncio + aiohttp), so this process's GIL never sits
between the server and the measured requests; this one drives the chaos, the ingest and the memory samples.
Every loop is bounded in count and time, SIGALRM bounds the whole run, and everything started is killed in a
`finally` (Stack.stop, the driver's process group).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import redis

from bench import data as bench_data
from bench.cpu import machine_seconds, tree
from common.settings import Settings
from common.status import TERMINAL, JobStatus
from vecq.stack import Stack

ROOT = Path(__file__).resolve().parent.parent
WRITES_SETTLE_S = 10.0  # writers run this long before the peak is measured under them
WRITES_LEAD_S = 30.0  # and start this long before t0: settle, the peak (a few seconds), margin
LOOPBACK = "127.0.0.1"


@dataclass
class Config:
    minutes: float = 10.0
    quick: bool = False
    n: int = 100_000
    dim: int = 128
    index: str = "HNSW32"
    ef_search: int = 64
    k: int = 10
    queries: int = 1000
    ingest_rows: int = 200_000
    write_rate: float = 200.0
    update_fraction: float = 0.2  # writes that replace an acknowledged id instead of adding a new one
    search_fraction: float = 0.7
    workers: int = 2
    api_processes: int = 2
    seal_every_rows: int = 20_000
    compact_max_segments: int = 4
    chaos_every_s: float = 60.0
    redis_down_s: float = 2.0
    peak_seconds: float = 5.0
    memory_window_s: float | None = 300.0  # None: the last half of the run
    max_growth: float = 0.10
    # What Redis holds besides the data is 4-6 MB here, and moves by up to ~2 MB: client buffers (a restarted pool
    # child's catch-up read of the log, after each chaos kill), steps at seals. +10 % of it is below its noise. A
    # leak grows with the requests served instead, ~150,000 in the window: 2 MB is ~13 B a request.
    bookkeeping_floor_mb: float = 2.0
    bin_s: float = 60.0
    search_inflight: int = 256
    write_inflight: int = 2000
    write_wait_s: float = 10.0
    ack_deadline_s: float = 120.0
    outage_grace_s: float = 10.0  # after Redis answers again, the API's pooled connections find out one by one
    # Job records live VECQ_JOB_TTL_S (a day by default): at a steady write rate Redis grows by design until the first
    # ones expire, which no 5-minute window can tell from a leak. The soak keeps them a little less than the time
    # before the checked window, so that they are at their steady state in it; the report gives what they cost at
    # the default. None: 0.8 x (run - window).
    job_ttl_s: int | None = None
    seed: int = 16
    out: Path = ROOT / "bench" / "results"
    keep: bool = False
    command: str = "python -m bench.soak"

    @property
    def duration_s(self) -> float:
        return self.minutes * 60.0

    @property
    def window_s(self) -> float:
        return self.memory_window_s if self.memory_window_s else self.duration_s / 2

    @property
    def job_ttl(self) -> int:
        return self.job_ttl_s or max(30, int(0.8 * (self.duration_s - self.window_s)))


QUICK: dict[str, Any] = {"minutes": 2.0, "n": 20_000, "dim": 64, "ingest_rows": 40_000, "write_rate": 50.0,
                         "seal_every_rows": 2_000, "compact_max_segments": 3, "chaos_every_s": 15.0,
                         "peak_seconds": 3.0, "memory_window_s": None, "bin_s": 15.0, "queries": 500,
                         "ack_deadline_s": 60.0}


# ---------------------------------------------------------------------------------------------------------------
# The load driver: a child process (`python -m bench.soak --driver SPEC`)

ACKED, UNRESOLVED, FAILED, REJECTED = 0, 1, 2, 3


async def _drive(spec: dict[str, Any]) -> dict[str, Any]:
    """Open-loop searches and writes until spec["t0"] + spec["duration_s"], then drain the requests in flight."""
    import asyncio

    import aiohttp

    url, name = spec["url"], spec["collection"]
    search_url, write_url = f"{url}/v1/collections/{name}/search", f"{url}/v1/collections/{name}/vectors"
    json_headers = {"content-type": "application/json"}
    queries = np.load(spec["queries_path"])
    bodies = [orjson.dumps({"vector": q, **spec["search_template"]}, option=orjson.OPT_SERIALIZE_NUMPY)
              for q in queries]
    pool = np.load(spec["pool_path"])
    t0, duration = float(spec["t0"]), float(spec["duration_s"])
    rng = random.Random(spec["seed"])

    statuses: dict[str, Counter[int]] = {"search": Counter(), "write": Counter(), "poll": Counter()}
    fivexx: list[tuple[float, str, int, bool]] = []  # (time of the answer, kind, status, Retry-After present)
    transport: Counter[str] = Counter()
    transport_samples: list[str] = []

    def note(kind: str, status: int, at: float, retry_after: bool) -> None:
        statuses[kind][status] += 1
        if status >= 500:
            fivexx.append((at, kind, status, retry_after))

    def broken(kind: str, at: float, exc: BaseException) -> None:
        transport[kind] += 1
        if len(transport_samples) < 20:
            transport_samples.append(f"{at:.3f} {kind} {type(exc).__name__}: {exc}"[:300])

    # Searches -----------------------------------------------------------------------------------------------
    s_at: list[float] = []
    s_lat: list[float] = []
    s_status: list[int] = []
    s_inflight = 0
    s_shed = 0

    async def one_search(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal s_inflight
        at, started = time.time(), time.perf_counter()
        status = -1
        try:
            async with session.post(search_url, data=bodies[i % len(bodies)], headers=json_headers) as resp:
                await resp.read()
                status = resp.status
                note("search", status, time.time(), "Retry-After" in resp.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            broken("search", at, exc)
        finally:
            s_inflight -= 1
            s_at.append(at)
            s_lat.append(time.perf_counter() - started)
            s_status.append(status)

    # Writes -------------------------------------------------------------------------------------------------
    acked: dict[str, tuple[int, dict[str, Any], str]] = {}  # id -> (pool row, metadata, lsn) of its last ack
    acked_order: list[str] = []
    superseded: list[tuple[str, int]] = []  # (id, pool row) of vectors a later acknowledged write replaced
    tainted: set[str] = set()  # ids with an attempt of unknown outcome: never updated again
    unresolved: dict[str, list[int]] = {}  # id -> pool rows of writes never acknowledged nor refused
    unresolved_log: list[dict[str, Any]] = []  # the first 50, with their job ids: to look them up
    failed_jobs: list[dict[str, Any]] = []
    rejected: list[str] = []
    w_inflight: set[str] = set()
    w_at: list[float] = []
    w_lat: list[float] = []
    w_outcome: list[int] = []
    w_attempts: list[int] = []
    w_shed = 0
    versions: Counter[str] = Counter()
    next_new = 0

    async def poll(session: aiohttp.ClientSession, job_id: str, deadline: float) -> dict[str, Any] | None:
        while time.time() < deadline:
            at = time.time()
            try:
                async with session.get(f"{url}/v1/jobs/{job_id}", params={"wait": "10"}) as resp:
                    raw = await resp.read()
                    status = resp.status
                    note("poll", status, time.time(), "Retry-After" in resp.headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                broken("poll", at, exc)
                await asyncio.sleep(0.5)
                continue
            if status == 200:
                job = orjson.loads(raw)
                if job["status"] in TERMINAL:
                    return dict(job)
            elif status == 404:
                return {"status": "missing"}
            else:
                await asyncio.sleep(0.5)
        return None

    async def record_of(session: aiohttp.ClientSession, job_id: str) -> dict[str, Any] | None:
        """The job's record as it stands (no wait), to say what became of a write given up on."""
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with session.get(f"{url}/v1/jobs/{job_id}") as resp:
                if resp.status == 200:
                    job = orjson.loads(await resp.read())
                    return {k: job.get(k) for k in ("status", "attempts", "worker", "submitted_at", "started_at")}
                return {"http": resp.status}
        return None

    async def one_write(session: aiohttp.ClientSession, vid: str, row: int, meta: dict[str, Any]) -> None:
        body = orjson.dumps({"vectors": [pool[row]], "ids": [vid], "metadata": [meta]},
                            option=orjson.OPT_SERIALIZE_NUMPY)
        at, started = time.time(), time.perf_counter()
        deadline = at + float(spec["ack_deadline_s"])
        outcome, lsn, attempts, ambiguous = UNRESOLVED, None, 0, False
        job_ids: list[str] = []
        last_record: dict[str, Any] | None = None
        try:
            while time.time() < deadline:
                attempts += 1
                sent = time.time()
                try:
                    async with session.post(write_url, data=body, headers=json_headers,
                                            params={"wait": str(spec["write_wait_s"])}) as resp:
                        raw = await resp.read()
                        status = resp.status
                        note("write", status, time.time(), "Retry-After" in resp.headers)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    broken("write", sent, exc)
                    ambiguous = True
                    await asyncio.sleep(min(2.0, 0.25 * attempts))
                    continue
                if status == 200:
                    outcome, lsn = ACKED, orjson.loads(raw)["lsn"]
                    break
                if status == 202:
                    job_ids.append(orjson.loads(raw)["job_id"])
                    job = await poll(session, job_ids[-1], deadline)
                    if job is not None and job["status"] == JobStatus.SUCCEEDED:
                        outcome, lsn = ACKED, job["result"]["lsn"]
                    elif job is not None and job["status"] in (JobStatus.FAILED, JobStatus.CANCELED):
                        outcome = FAILED
                        failed_jobs.append({"id": vid, "at": sent, "job": job.get("job_id"),
                                            "status": job["status"], "error": job.get("error")})
                    elif job is not None:  # its record expired before it ran (a short job TTL): send it again
                        ambiguous = True
                        continue
                    else:
                        ambiguous = True  # ran out of time polling
                        last_record = await record_of(session, job_ids[-1])
                    break
                if status == 429 or status >= 500:
                    ambiguous = ambiguous or status >= 500  # a 503 may come after the job was enqueued
                    await asyncio.sleep(min(2.0, 0.25 * attempts))
                    continue
                outcome = REJECTED
                rejected.append(f"{vid}: HTTP {status} {raw[:200]!r}")
                break
        finally:  # also when the drain at the end cancels it: then its outcome stays unknown
            w_inflight.discard(vid)
            w_at.append(at)
            w_lat.append(time.perf_counter() - started)
            w_outcome.append(outcome)
            w_attempts.append(attempts)
            if outcome == ACKED:
                if vid in acked:
                    superseded.append((vid, acked[vid][0]))
                else:
                    acked_order.append(vid)
                acked[vid] = (row, meta, str(lsn))
                if ambiguous:
                    tainted.add(vid)  # a lost-looking attempt of the same content may still land: same value
            elif outcome in (UNRESOLVED, FAILED):
                unresolved.setdefault(vid, []).append(row)
                tainted.add(vid)
                if len(unresolved_log) < 50:
                    unresolved_log.append({"id": vid, "at": at, "attempts": attempts, "jobs": job_ids,
                                           "outcome": "failed" if outcome == FAILED else "unknown",
                                           "record_at_deadline": last_record})

    def next_write() -> tuple[str, int, dict[str, Any]] | None:
        nonlocal next_new
        row = len(w_at) + len(w_inflight)  # every write issued gets a pool row of its own
        if row >= len(pool):
            return None
        vid = None
        if acked_order and rng.random() < float(spec["update_fraction"]):
            candidate = acked_order[rng.randrange(len(acked_order))]
            if candidate not in w_inflight and candidate not in tainted:
                vid = candidate
        if vid is None:
            vid = f"w{next_new:07d}"
            next_new += 1
        versions[vid] += 1
        return vid, row, {"soak": 1, "v": versions[vid], "row": row}

    # Issuers: open loop at a fixed rate, each bounded by count and time; beyond the in-flight cap, shed -------
    tasks: set[asyncio.Task[None]] = set()

    async def issue(start: float, rate: float, fire: Callable[[], bool]) -> None:
        """Open loop from `start` to t0 + duration at `rate`: at most rate x that long requests, never after it."""
        await asyncio.sleep(max(0.0, start - time.time()))
        total, i = int(rate * (t0 + duration - start)), 0
        while i < total and time.time() < t0 + duration + 1:
            due = min(total, int((time.time() - start) * rate) + 1)
            while i < due:
                fire()
                i += 1
            await asyncio.sleep(max(0.0, start + i / rate - time.time()))

    async def search_rate() -> float:
        """The search rate, which the orchestrator writes once it has measured the peak under the write load."""
        path = Path(spec["rate_path"])
        deadline = t0 + 120
        while not path.exists():
            if time.time() > deadline:
                raise RuntimeError(f"no search rate in {path} by t0 + 120 s")
            await asyncio.sleep(0.1)
        return float(path.read_text())

    async def searches() -> None:
        rate = await search_rate()
        await issue(max(t0, time.time()), rate, fire_search)

    # Keep-alive below the API's (VECQ_API_KEEP_ALIVE_S): a pooled connection reused just as the server closes it
    # for idleness is a "connection reset" that says nothing about vecq.
    search_conn = aiohttp.TCPConnector(limit=int(spec["search_inflight"]), keepalive_timeout=3)
    write_conn = aiohttp.TCPConnector(limit=256, keepalive_timeout=3)
    search_session = aiohttp.ClientSession(connector=search_conn, timeout=aiohttp.ClientTimeout(total=90))
    write_session = aiohttp.ClientSession(connector=write_conn, timeout=aiohttp.ClientTimeout(total=60))

    def fire_search() -> bool:
        nonlocal s_inflight, s_shed
        if s_inflight >= int(spec["search_inflight"]):
            s_shed += 1
            return False
        s_inflight += 1
        task = asyncio.ensure_future(one_search(search_session, len(s_at) + s_inflight))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return True

    def fire_write() -> bool:
        nonlocal w_shed
        if len(w_inflight) >= int(spec["write_inflight"]):
            w_shed += 1
            return False
        picked = next_write()
        if picked is None:
            w_shed += 1
            return False
        vid, row, meta = picked
        w_inflight.add(vid)
        task = asyncio.ensure_future(one_write(write_session, vid, row, meta))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return True

    try:
        await asyncio.gather(searches(), issue(float(spec["writes_from"]), float(spec["write_rate"]), fire_write))
        issued_until = time.time()
        unfinished = 0
        if tasks:
            _, pending = await asyncio.wait(set(tasks), timeout=float(spec["drain_s"]))
            unfinished = len(pending)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=10)
    finally:
        await search_session.close()
        await write_session.close()
    return {
        "issued_until": issued_until, "drained_at": time.time(), "unfinished": unfinished,
        "search": {"at": s_at, "lat": s_lat, "status": s_status, "shed": s_shed},
        "write": {"at": w_at, "lat": w_lat, "outcome": w_outcome, "attempts": w_attempts, "shed": w_shed},
        "statuses": {k: {str(s): n for s, n in v.items()} for k, v in statuses.items()},
        "fivexx": fivexx, "transport": dict(transport), "transport_samples": transport_samples,
        "acked": {vid: list(v) for vid, v in acked.items()}, "superseded": superseded,
        "tainted": sorted(tainted), "unresolved": unresolved, "unresolved_log": unresolved_log,
        "failed_jobs": failed_jobs[:50],
        "failed_job_count": len(failed_jobs), "rejected": rejected[:20], "rejected_count": len(rejected),
    }


def driver_main(spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text())
    try:
        import uvloop

        result = uvloop.run(_drive(spec))
    except ImportError:
        import asyncio

        result = asyncio.run(_drive(spec))
    Path(spec["out_path"]).write_bytes(orjson.dumps(result))
    return 0


# ---------------------------------------------------------------------------------------------------------------
# The orchestrator


class Budget(Exception):
    """The whole run's time budget ran out (SIGALRM)."""


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


def machine() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, Any] = {"python": platform.python_version(), "kernel": platform.release(),
                           "cores": os.cpu_count()}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "Thread(s) per core", "Core(s) per socket", "Socket(s)"):
                out[key.strip().lower().replace("(s)", "s").replace(" ", "_")] = value.strip()
    with contextlib.suppress(OSError, ValueError):
        kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1])
        out["ram_gb"] = round(kb / 1024 / 1024, 1)
    for package in ("faiss-cpu", "celery", "redis", "aiohttp", "uvicorn"):
        with contextlib.suppress(PackageNotFoundError):
            out[package] = version(package)  # faiss's version without importing faiss here
    return out


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Soak:
    cfg: Config
    data_dir: Path
    stack: Stack | None = None
    api: httpx.Client | None = None
    name: str = "soak"
    events: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    outages: list[tuple[float, float]] = field(default_factory=list)  # Redis down: [stop sent, answering + grace]
    ingest: dict[str, Any] = field(default_factory=dict)
    http_other: Counter[str] = field(default_factory=Counter)  # statuses of the ingest, as kind:status
    fivexx_other: list[tuple[float, str, int, bool]] = field(default_factory=list)
    t0: float = 0.0
    next_worker: int = 0
    census: dict[str, Any] = field(default_factory=dict)
    _stop_sampling: threading.Event = field(default_factory=threading.Event)

    # Stack ----------------------------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        return {"VECQ_SEAL_EVERY_ROWS": str(self.cfg.seal_every_rows),
                "VECQ_COMPACT_MAX_SEGMENTS": str(self.cfg.compact_max_segments),
                "VECQ_LOG_JSON": "0", "VECQ_WORKERS": str(self.cfg.workers), "VECQ_JOB_TTL_S": str(self.cfg.job_ttl),
                "VECQ_API_PROCESSES": str(self.cfg.api_processes)}

    def start(self) -> None:
        self.stack = Stack(data_dir=self.data_dir, env=self.env(), log_dir=self.data_dir / "logs", quiet=True)
        self.stack.env.pop("VECQ_REDIS_URL", None)
        os.environ.pop("VECQ_REDIS_URL", None)  # always the embedded one, never a Redis of the environment
        self.stack.start_redis()
        for i in range(self.cfg.workers):
            self.stack.start_worker(i + 1)
        self.next_worker = self.cfg.workers + 1
        self.stack.start_api(host=LOOPBACK, processes=self.cfg.api_processes)
        assert self.stack.api_url and self.stack.api_url.startswith(f"http://{LOOPBACK}:")
        assert self.stack.redis_url and self.stack.redis_url.startswith(f"redis://{LOOPBACK}:")
        self.stack.wait_ready(timeout=180, workers=self.cfg.workers)
        self.api = httpx.Client(base_url=self.stack.api_url, timeout=300)

    @property
    def client(self) -> httpx.Client:
        assert self.api is not None
        return self.api

    def stop(self) -> None:
        self._stop_sampling.set()
        if self.api is not None:
            self.api.close()
        if self.stack is not None:
            self.stack.stop()

    def redis_client(self) -> redis.Redis:
        assert self.stack is not None and self.stack.redis_url
        return redis.Redis.from_url(self.stack.redis_url, socket_timeout=2, socket_connect_timeout=1)

    # Setup ----------------------------------------------------------------------------------------------------
    def upload(self, vectors: np.ndarray, id_prefix: str, deadline_s: float) -> dict[str, Any]:
        """One .npy upload, then its job waited for: {"status", "job", "seconds", ...}. Retried on 503 (Redis
        down) until `deadline_s`; the same ids and vectors again are upserts of the same values. A client of its
        own: it runs in a thread beside the chaos."""
        assert self.stack is not None and self.stack.api_url
        with httpx.Client(base_url=self.stack.api_url, timeout=300) as client:
            return self._upload(client, vectors, id_prefix, deadline_s)

    def _upload(self, client: httpx.Client, vectors: np.ndarray, id_prefix: str, deadline_s: float) -> dict[str, Any]:
        buf = io.BytesIO()
        np.save(buf, vectors)
        body = buf.getvalue()
        started = time.time()
        deadline = started + deadline_s
        tries: list[str] = []
        while time.time() < deadline:
            sent = time.time()
            try:
                resp = client.post(f"/v1/collections/{self.name}/vectors", content=body,
                                        params={"wait": 0, "id_prefix": id_prefix},
                                        headers={"content-type": "application/x-npy"}, timeout=300)
            except httpx.HTTPError as exc:
                tries.append(f"{type(exc).__name__}: {exc}")
                time.sleep(2)
                continue
            self.http_other[f"ingest:{resp.status_code}"] += 1
            if resp.status_code >= 500:
                self.fivexx_other.append((time.time(), "ingest", resp.status_code, "retry-after" in resp.headers))
            if resp.status_code == 202:
                uploaded = time.time()
                job = self.wait_job(client, resp.json()["job_id"], deadline)
                done = time.time()
                return {"status": job.get("status", "timeout"), "job": job.get("job_id"), "rows": len(vectors),
                        "mb": round(len(body) / 1e6, 1), "upload_s": round(uploaded - sent, 2),
                        "seconds": round(done - sent, 2), "vectors_per_s": round(len(vectors) / (done - sent), 1),
                        "attempts": job.get("attempts"), "error": job.get("error"), "tries": tries,
                        "started": sent, "finished": done}
            tries.append(f"HTTP {resp.status_code}: {resp.text[:200]}")
            if resp.status_code < 500 and resp.status_code != 429:
                break
            time.sleep(2)
        return {"status": "not accepted", "tries": tries, "rows": len(vectors), "started": started}

    def wait_job(self, client: httpx.Client, job_id: str, deadline: float) -> dict[str, Any]:
        while time.time() < deadline:
            try:
                resp = client.get(f"/v1/jobs/{job_id}", params={"wait": 10}, timeout=30)
            except httpx.HTTPError:
                time.sleep(1)
                continue
            self.http_other[f"ingest-poll:{resp.status_code}"] += 1
            if resp.status_code >= 500:
                self.fivexx_other.append((time.time(), "ingest-poll", resp.status_code,
                                          "retry-after" in resp.headers))
            if resp.status_code == 200 and resp.json()["status"] in TERMINAL:
                return dict(resp.json())
            if resp.status_code != 200:
                time.sleep(1)
        return {"job_id": job_id, "status": "timeout"}

    def create(self) -> None:
        resp = self.client.post("/v1/collections", json={"name": self.name, "dim": self.cfg.dim, "metric": "l2",
                                                         "index": self.cfg.index})
        if resp.status_code != 201:
            raise RuntimeError(f"create {self.name}: HTTP {resp.status_code} {resp.text[:300]}")

    def collection(self) -> dict[str, Any]:
        resp = self.client.get(f"/v1/collections/{self.name}", timeout=30)
        resp.raise_for_status()
        return dict(resp.json())

    def settle(self, timeout: float) -> dict[str, Any]:
        """Until the log is sealed (growing_rows 0): the initial upload's seal, before anything is measured."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            info = self.collection()
            if info.get("growing_rows") == 0 and info.get("segments"):
                return info
            time.sleep(1)
        raise TimeoutError(f"the initial upload was not sealed within {timeout:.0f}s")

    def search_template(self) -> dict[str, Any]:
        params = {"efSearch": self.cfg.ef_search} if self.cfg.index.upper().startswith("HNSW") else {}
        return {"k": self.cfg.k, **({"params": params} if params else {})}

    def warm(self, queries: np.ndarray, timeout: float = 300) -> dict[str, Any]:
        """Search until every worker has answered (loaded the collection)."""
        seen: set[str] = set()
        started = time.time()
        body = orjson.dumps({"vector": queries[0], **self.search_template()}, option=orjson.OPT_SERIALIZE_NUMPY)

        def one(_: int) -> str | None:
            resp = self.client.post(f"/v1/collections/{self.name}/search", content=body,
                                    headers={"content-type": "application/json"}, params={"wait": 120})
            return resp.json().get("worker") if resp.status_code == 200 else None

        with ThreadPoolExecutor(2 * self.cfg.workers) as pool:
            while len(seen) < self.cfg.workers and time.time() - started < timeout:
                seen.update(w for w in pool.map(one, range(4 * self.cfg.workers)) if w)
        return {"seconds": round(time.time() - started, 2), "workers_answered": len(seen)}

    def peak(self, queries_path: Path) -> dict[str, Any]:
        from bench.loadgen import LoadSpec
        from bench.loadgen import run as load

        assert self.stack is not None and self.stack.api_url
        spec = LoadSpec(url=f"{self.stack.api_url}/v1/collections/{self.name}/search", mode="post", concurrency=64,
                        max_requests=200_000, max_seconds=self.cfg.peak_seconds, warmup_s=1.0,
                        queries_path=str(queries_path), template=self.search_template(), timeout_s=60)
        result = load(spec)
        if result.requests == 0:
            raise RuntimeError(f"peak measurement answered nothing: {result.error_samples}")
        return result.summary()

    # Sampling --------------------------------------------------------------------------------------------------
    def sample_forever(self, every: float, until: float, census: dict[str, float]) -> None:
        """API RSS, workers' RSS and Redis used_memory every `every` s; a census of Redis's keys at each of
        `census` (label -> time)."""
        r = self.redis_client()
        try:
            while not self._stop_sampling.is_set() and time.time() < until:
                for label, when in census.items():
                    if label not in self.census and time.time() >= when:
                        try:
                            self.census[label] = redis_keys(r)
                        except Exception as exc:  # a census is worth a line, not the samples
                            self.census[label] = {"error": f"{type(exc).__name__}: {exc}"}
                assert self.stack is not None and self.stack.api is not None
                at = time.time()
                row: dict[str, Any] = {"t": at, "api_rss": rss_bytes(tree(self.stack.api.pid)),
                                       "workers_rss": rss_bytes([p for w in list(self.stack.workers)
                                                                 for p in tree(w.pid)])}
                try:
                    info = r.info("memory")
                    row["redis_used"] = int(info["used_memory"])
                    row["redis_rss"] = int(info["used_memory_rss"])
                    row["live_ids"] = live_ids(r)
                    row["redis_wal"] = wal_bytes(r)
                except (redis.RedisError, OSError):
                    row["redis_used"] = None  # down (the restart): no sample
                    with contextlib.suppress(Exception):
                        r.close()
                    r = self.redis_client()
                self.samples.append(row)
                self._stop_sampling.wait(max(0.0, every - (time.time() - at)))
        finally:
            r.close()

    # Chaos -----------------------------------------------------------------------------------------------------
    def event(self, kind: str, started: float, **details: Any) -> dict[str, Any]:
        row = {"kind": kind, "at": round(started, 3), "offset_s": round(started - self.t0, 1), **details}
        self.events.append(row)
        log(f"{kind} at +{row['offset_s']}s: {json.dumps(details, default=str)[:300]}")
        return row

    def kill_child(self, turn: int) -> None:
        assert self.stack is not None
        started = time.time()
        worker = self.stack.workers[turn % len(self.stack.workers)]
        children = [p for p in tree(worker.pid) if p != worker.pid]
        if not children:
            self.event("kill_pool_child", started, worker=worker.name, skipped="no pool child (starting)")
            return
        job = self.running_job(children[0])
        with contextlib.suppress(ProcessLookupError):
            os.kill(children[0], signal.SIGKILL)
        replaced = None
        deadline = time.time() + 60
        while time.time() < deadline:
            now = [p for p in tree(worker.pid) if p != worker.pid and p != children[0]]
            if now:
                replaced = round(time.time() - started, 2)
                break
            time.sleep(0.1)
        self.event("kill_pool_child", started, worker=worker.name, pid=children[0], running=job,
                   replaced_after_s=replaced)

    def running_job(self, child_pid: int) -> str | None:
        """What the child was doing, from its heartbeat's last job (best effort, for the report)."""
        try:
            resp = self.client.get("/v1/workers", timeout=5)
            for w in resp.json().get("workers", []):
                if w.get("pid") == child_pid:
                    last = w.get("last_job") or {}
                    return f"last finished: {last.get('type')} ({last.get('status')})" if last else None
        except (httpx.HTTPError, ValueError):
            pass
        return None

    def kill_worker(self) -> None:
        """SIGKILL a whole worker (its process group: main process and pool child), then start another."""
        assert self.stack is not None
        started = time.time()
        victim = self.stack.workers[0]
        pids = tree(victim.pid)
        victim.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            victim.popen.wait(10)
        self.stack.workers.remove(victim)
        index, self.next_worker = self.next_worker, self.next_worker + 1
        replacement = self.stack.start_worker(index)
        ready = None
        deadline = time.time() + 180
        while time.time() < deadline:
            if any(p != replacement.pid for p in tree(replacement.pid)) and self.ready(self.cfg.workers):
                ready = round(time.time() - started, 2)
                break
            time.sleep(0.25)
        self.event("kill_worker", started, worker=victim.name, pids=pids, replacement=replacement.name,
                   ready_after_s=ready)

    def ready(self, workers: int) -> bool:
        try:
            resp = self.client.get("/readyz", timeout=2)
            return resp.status_code == 200 and resp.json().get("workers", 0) >= workers
        except (httpx.HTTPError, ValueError):
            return False

    def restart_redis(self) -> None:
        """SIGTERM Redis (it writes its AOF and exits), then the same port, dir and AOF again."""
        assert self.stack is not None and self.stack.redis_proc is not None and self.stack.redis_url
        port = int(self.stack.redis_url.rsplit(":", 1)[1].split("/")[0])
        started = time.time()
        self.outages.append((started, float("inf")))
        self.stack.redis_proc.stop(timeout=30)
        stopped = time.time()
        time.sleep(self.cfg.redis_down_s)
        self.stack.start_redis(port)
        answering = time.time()
        self.outages[-1] = (started, answering + self.cfg.outage_grace_s)
        ready = None
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.ready(self.cfg.workers):
                ready = round(time.time() - started, 2)
                break
            time.sleep(0.25)
        self.event("restart_redis", started, port=port, stop_s=round(stopped - started, 2),
                   down_s=round(answering - started, 2), ready_after_s=ready)

    def run_ingest(self, vectors: np.ndarray, deadline_s: float) -> None:
        started = time.time()
        self.event("ingest_start", started, rows=len(vectors))
        self.ingest = self.upload(vectors, "ing-", deadline_s)
        self.event("ingest_done", time.time(), **{k: v for k, v in self.ingest.items() if k not in ("started",
                                                                                                    "finished")})

    def schedule(self) -> list[tuple[float, str]]:
        d, every = self.cfg.duration_s, self.cfg.chaos_every_s
        kill_at, redis_at = 1.5 * every, 2.5 * every
        plan = [(round(0.07 * d, 1), "ingest"), (kill_at, "kill_worker"), (redis_at, "restart_redis")]
        t = every
        while t < d - 5:
            plan.append((t, "kill_pool_child"))
            t += every
        return sorted(p for p in plan if p[0] < d - 5)

    # Verification ----------------------------------------------------------------------------------------------
    def search_rows(self, vectors: np.ndarray, k: int) -> tuple[list[list[dict[str, Any]]], str | None]:
        template = self.search_template()
        params = template.get("params")
        body: dict[str, Any] = {"vectors": vectors, "k": k, "include_vectors": True, "include_metadata": True}
        if params:
            body["params"] = {"efSearch": max(256, self.cfg.ef_search)}
        for _ in range(5):
            resp = self.client.post(f"/v1/collections/{self.name}/search", params={"wait": 60},
                                    content=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
                                    headers={"content-type": "application/json"}, timeout=180)
            if resp.status_code == 200:
                out = resp.json()
                return out["results"], out.get("worker")
            time.sleep(1)
        raise RuntimeError(f"verification search: HTTP {resp.status_code} {resp.text[:300]}")

    def get_vector(self, vid: str) -> dict[str, Any] | None:
        for _ in range(5):
            resp = self.client.get(f"/v1/collections/{self.name}/vectors/{vid}", timeout=60)
            if resp.status_code == 200:
                return dict(resp.json())
            if resp.status_code == 404:
                return None
            time.sleep(1)
        raise RuntimeError(f"GET vector {vid}: HTTP {resp.status_code} {resp.text[:300]}")

    def check_ids(self, ids: list[str], vectors: np.ndarray, metas: list[Any]) -> dict[str, Any]:
        """Each id read back with exactly its vector and metadata: batched k-NN searches of its own vector
        (include_vectors + include_metadata), and GET by id for any the search did not return. k=1: an id's own
        vector is at distance 0 (an approximate index may miss it: then GET), and each answer stays small (a batch's
        outcomes are kept in Redis while its wait can run out)."""
        k = 1
        found_by_search = by_get = 0
        problems: list[dict[str, Any]] = []
        answered: Counter[str] = Counter()
        unconfirmed: list[int] = []
        chunks = [range(s, min(s + 500, len(ids))) for s in range(0, len(ids), 500)]

        def one(chunk: range) -> tuple[range, list[list[dict[str, Any]]], str | None]:
            rows, worker = self.search_rows(vectors[chunk.start:chunk.stop], k)
            return chunk, rows, worker

        with ThreadPoolExecutor(self.cfg.workers) as pool:
            for chunk, rows, worker in pool.map(one, chunks):
                answered[worker or "?"] += 1
                for i, hits in zip(chunk, rows, strict=True):
                    hit = next((h for h in hits if h["id"] == ids[i]), None)
                    if hit is None:
                        unconfirmed.append(i)
                        continue
                    found_by_search += 1
                    problem = self.compare(ids[i], vectors[i], metas[i], hit.get("vector"), hit.get("metadata"))
                    if problem:
                        problems.append(problem)
        for i in unconfirmed:
            got = self.get_vector(ids[i])
            by_get += 1
            if got is None:
                problems.append({"id": ids[i], "problem": "missing"})
                continue
            problem = self.compare(ids[i], vectors[i], metas[i], got.get("vector"), got.get("metadata"))
            if problem:
                problems.append(problem)
        return {"checked": len(ids), "by_search": found_by_search, "by_get": by_get, "problems": len(problems),
                "problem_samples": problems[:10], "problem_kinds": dict(Counter(p["problem"] for p in problems)),
                "answered_by": dict(answered)}

    @staticmethod
    def compare(vid: str, vector: np.ndarray, meta: Any, got_vector: Any, got_meta: Any) -> dict[str, Any] | None:
        if got_vector is None or not np.array_equal(np.asarray(got_vector, dtype=np.float32), vector):
            return {"id": vid, "problem": "vector", "expected_head": vector[:3].tolist(),
                    "got_head": None if got_vector is None else list(got_vector[:3])}
        if got_meta != meta:
            return {"id": vid, "problem": "metadata", "expected": meta, "got": got_meta}
        return None

    def stale(self, ids: list[str], vectors: np.ndarray) -> dict[str, Any]:
        """Superseded vectors must not come back under their id: each searched with k=1."""
        found: list[str] = []
        for s in range(0, len(ids), 500):
            rows, _ = self.search_rows(vectors[s:s + 500], 1)
            for vid, vec, hits in zip(ids[s:s + 500], vectors[s:s + 500], rows, strict=True):
                if hits and hits[0]["id"] == vid and np.array_equal(np.asarray(hits[0]["vector"], np.float32), vec):
                    found.append(vid)
        return {"checked": len(ids), "found": len(found), "samples": found[:10]}

    def counts(self, tries: int) -> dict[str, Any]:
        """Live rows as each worker's index holds them (POST /count runs in a worker: several calls reach both),
        all of them and the writers' (metadata field `soak`)."""
        seen_all: Counter[int] = Counter()
        seen_writers: Counter[int] = Counter()
        for _ in range(tries):
            for body, seen in (({}, seen_all), ({"filter": {"soak": {"$exists": True}}}, seen_writers)):
                resp = self.client.post(f"/v1/collections/{self.name}/count", json=body, params={"wait": 60})
                if resp.status_code == 200:
                    seen[int(resp.json()["count"])] += 1
        return {"all": {str(k): v for k, v in seen_all.items()},
                "writers": {str(k): v for k, v in seen_writers.items()}}


# ---------------------------------------------------------------------------------------------------------------
# Figures


def percentile(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 2) if len(values) else None


def bins(cfg: Config, t0: float, drive: dict[str, Any]) -> list[dict[str, Any]]:
    s_at, s_lat = np.asarray(drive["search"]["at"]), np.asarray(drive["search"]["lat"])
    s_status = np.asarray(drive["search"]["status"])
    w_at, w_lat = np.asarray(drive["write"]["at"]), np.asarray(drive["write"]["lat"])
    w_out = np.asarray(drive["write"]["outcome"])
    out = []
    nbins = int(np.ceil(cfg.duration_s / cfg.bin_s))
    for b in range(nbins):
        lo, hi = t0 + b * cfg.bin_s, t0 + min((b + 1) * cfg.bin_s, cfg.duration_s)
        s_in = (s_at >= lo) & (s_at < hi)
        ok = s_in & (s_status == 200)
        w_in = (w_at >= lo) & (w_at < hi)
        w_ok = w_in & (w_out == ACKED)
        out.append({"from_s": round(lo - t0), "to_s": round(hi - t0),
                    "searches": int(s_in.sum()), "search_ok": int(ok.sum()),
                    "search_qps": round(float(ok.sum()) / (hi - lo), 1),
                    "search_p50_ms": percentile(s_lat[ok], 50), "search_p99_ms": percentile(s_lat[ok], 99),
                    "search_429": int((s_in & (s_status == 429)).sum()),
                    "search_503": int((s_in & (s_status == 503)).sum()),
                    "search_202": int((s_in & (s_status == 202)).sum()),
                    "search_other": int((s_in & ~np.isin(s_status, [200, 202, 429, 503])).sum()),
                    "writes": int(w_in.sum()), "writes_acked": int(w_ok.sum()),
                    "write_p50_ms": percentile(w_lat[w_ok], 50), "write_p99_ms": percentile(w_lat[w_ok], 99)})
    return out


def memory_growth(samples: list[dict[str, Any]], key: str, lo: float, hi: float, edge: float) -> dict[str, Any]:
    """Median of the samples in the window's first `edge` seconds against its last `edge` seconds."""
    points = [(s["t"], s[key]) for s in samples if s.get(key) is not None and lo <= s["t"] <= hi]
    first = [v for t, v in points if t <= lo + edge]
    last = [v for t, v in points if t >= hi - edge]
    if not first or not last:
        return {"ok": False, "reason": "no samples", "samples": len(points)}
    start, end = float(np.median(first)), float(np.median(last))
    peak = max(v for _, v in points)
    growth = end / start - 1 if start else float("inf")
    return {"start_mb": round(start / 1e6, 1), "end_mb": round(end / 1e6, 1), "max_mb": round(peak / 1e6, 1),
            "growth": round(growth, 4), "samples": len(points)}


def seal_events(data_dir: Path, t0: float) -> list[dict[str, Any]]:
    """Seals, compactions and given-back jobs, from the workers' log lines (local time, millisecond)."""
    out = []
    pattern = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \S+ vecq\.worker (sealed|compacted|gave back)"
                         r"(.*)$")
    for path in sorted((data_dir / "logs").glob("worker*.log")):
        for line in path.read_text(errors="replace").splitlines():
            m = pattern.match(line)
            if not m:
                continue
            at = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
            details = dict(kv.split("=", 1) for kv in m.group(4).split() if "=" in kv)
            kind = {"sealed": "seal", "compacted": "compaction", "gave back": "gave_back"}[m.group(3)]
            out.append({"kind": kind, "at": round(at, 3), "offset_s": round(at - t0, 1), "worker_log": path.stem,
                        **{k: details[k] for k in ("rows", "segments", "seconds", "dropped", "job") if k in details}})
    return sorted(out, key=lambda e: e["at"])


def redis_keys(r: redis.Redis, per_kind: int = 200) -> dict[str, Any]:
    """A census of Redis: keys by kind (`vecq:job`, `vecq:job:*:watchers`, `vecq:c:*:docs`, ...) with their bytes
    (MEMORY USAGE of up to `per_kind` keys each, scaled to the count), and INFO memory. Where memory went."""
    kinds: Counter[str] = Counter()
    sample: dict[str, list[bytes]] = {}
    for key in r.scan_iter(count=5000):
        parts = key.decode(errors="replace").split(":")
        if parts[0] != "vecq" or len(parts) < 2:
            kind = parts[0][:40]
        elif parts[1] == "c":
            kind = "vecq:c:*:" + parts[-1]
        elif len(parts) > 3:
            kind = f"vecq:{parts[1]}:*:{parts[-1]}"
        else:
            kind = f"vecq:{parts[1]}"
        kinds[kind] += 1
        if len(sample.setdefault(kind, [])) < per_kind:
            sample[kind].append(key)
    out: dict[str, Any] = {}
    for kind, n in kinds.most_common():
        sizes = [r.memory_usage(k, samples=0) or 0 for k in sample[kind]]
        ttls = [int(r.ttl(k)) for k in sample[kind]]  # -1: no expiry; -2: gone since the scan
        mean = float(np.mean(sizes)) if sizes else 0.0
        out[kind] = {"keys": n, "mean_bytes": round(mean), "mb": round(n * mean / 1e6, 2),
                     "sampled": len(ttls), "unexpiring": ttls.count(-1), "max_ttl_s": max(ttls, default=-2)}
    info = r.info("memory")
    return {"at": time.time(), "kinds": out, "dbsize": r.dbsize(), "live_ids": live_ids(r),
            "info": {k: info.get(k) for k in ("used_memory", "used_memory_dataset", "used_memory_overhead",
                                              "mem_clients_normal", "mem_aof_buffer", "used_memory_scripts",
                                              "used_memory_rss")}}


def wal_bytes(r: redis.Redis) -> int:
    """Bytes of every collection's log (MEMORY USAGE, exact): the rows written since the last seal, data that
    each seal trims. Its size per row follows the write batches' sizes (a stream node per entry beyond 4 KB,
    rounded up to an allocator size class), so it swings with the load from one seal period to the next."""
    return sum(int(r.memory_usage(key, samples=0) or 0) for key in r.scan_iter(match="vecq:c:*:wal", count=5000))


def live_ids(r: redis.Redis) -> int:
    """Live ids of every collection: the fields of their `docs` hashes (HLEN is O(1))."""
    return sum(int(r.hlen(key)) for key in r.scan_iter(match="vecq:c:*:docs", count=1000))


def docs_bytes(census: dict[str, Any] | None) -> tuple[int, float] | None:
    """(live ids, bytes of the `docs` hashes) from a census."""
    if not census or "kinds" not in census or "vecq:c:*:docs" not in census["kinds"]:
        return None
    return int(census.get("live_ids") or 0), census["kinds"]["vecq:c:*:docs"]["mb"] * 1e6


def markers_bytes(census: dict[str, Any] | None) -> tuple[float, float] | None:
    """(when, bytes of the write batches' `done` markers) from a census."""
    if not census or "kinds" not in census:
        return None
    return census["at"], census["kinds"].get("vecq:delivery", {}).get("mb", 0.0) * 1e6


def less_data(samples: list[dict[str, Any]], start: tuple[int, float], end: tuple[int, float],
              markers: tuple[tuple[float, float], tuple[float, float]] | None = None) -> list[dict[str, Any]]:
    """Samples with `redis_bookkeeping`: used_memory less the data, the live ids' `docs` fields (interpolated by
    the live count between two censuses: a hash's table doubles at powers of two, so bytes are not linear in ids
    alone) and the unsealed log (measured with each sample); and less the growth of the write batches' `done`
    markers (interpolated in time between the censuses: they are made at the write rate and expire after the
    redelivery window, hours, a retention the report states and checks apart, as the job records')."""
    (ids0, bytes0), (ids1, bytes1) = start, end
    slope = (bytes1 - bytes0) / (ids1 - ids0) if ids1 != ids0 else (bytes0 / ids0 if ids0 else 0.0)
    m_at0, m_rate = 0.0, 0.0
    if markers is not None:
        (m_at0, m_bytes0), (m_at1, m_bytes1) = markers
        m_rate = (m_bytes1 - m_bytes0) / (m_at1 - m_at0) if m_at1 > m_at0 else 0.0
    return [{**row, "redis_bookkeeping": row["redis_used"] - (bytes0 + (row["live_ids"] - ids0) * slope)
             - row.get("redis_wal", 0) - (row["t"] - m_at0) * m_rate}
            if row.get("redis_used") is not None and row.get("live_ids") is not None else row for row in samples]


def job_retention(cfg: Config, census: dict[str, Any] | None) -> dict[str, Any]:
    """What job records cost: bytes per job (record + watchers set) from the census at the end of the load, jobs
    per second from the records alive (all created within the last VECQ_JOB_TTL_S), and so what Redis would grow
    by per minute until a day has passed at vecq's default VECQ_JOB_TTL_S."""
    if not census or "kinds" not in census:
        return {}
    record = census["kinds"].get("vecq:job", {})
    watchers = census["kinds"].get("vecq:job:*:watchers", {})
    if not record.get("keys"):
        return {}
    per_job = record["mean_bytes"] + watchers.get("mean_bytes", 0) * watchers.get("keys", 0) / record["keys"]
    rate = record["keys"] / cfg.job_ttl
    return {"records": record["keys"], "record_bytes": record["mean_bytes"], "watchers_sets": watchers.get("keys", 0),
            "watchers_bytes": watchers.get("mean_bytes", 0), "bytes_per_job": round(per_job),
            "jobs_per_s": round(rate, 1), "job_ttl_s": cfg.job_ttl,
            "mb_per_min_until_expiry": round(per_job * rate * 60 / 1e6, 2),
            "gb_per_day_at_default_ttl": round(per_job * rate * 86_400 / 1e9, 2)}


def delivery_retention(start: dict[str, Any] | None, end: dict[str, Any] | None) -> dict[str, Any]:
    """What the write batches' `done` markers cost (`vecq:delivery`, kept the redelivery window so that a batch
    redelivered after its ack was lost is skipped): bytes a marker, markers a second between two censuses (none
    expires within a soak), and what Redis holds of them once they do."""
    if not start or not end or "kinds" not in start or "kinds" not in end:
        return {}
    before, after = start["kinds"].get("vecq:delivery", {}), end["kinds"].get("vecq:delivery", {})
    if not after.get("keys") or end["at"] <= start["at"]:
        return {}
    window_s = Settings().redelivery_window_s
    rate = (after["keys"] - before.get("keys", 0)) / (end["at"] - start["at"])
    return {"markers": after["keys"], "marker_bytes": after["mean_bytes"], "per_s": round(rate, 1),
            "window_s": window_s, "steady_mb": round(after["mean_bytes"] * rate * window_s / 1e6, 1)}


def never_delivered(r: redis.Redis, unresolved: list[dict[str, Any]]) -> None:
    """Mark the writes given up on whose job was never delivered to a worker: still `queued`, never claimed, 120 s
    after it was sent, and its message neither in the queue nor unacked. kombu's Redis transport pops a message
    (BRPOP), then records it as unacked in a second round trip: a worker SIGKILLed whole in between loses it
    (celery/celery#7950). Nothing in vecq can send it again (the record does not hold the payload)."""
    waiting = [u for u in unresolved if (u.get("record_at_deadline") or {}).get("status") == JobStatus.QUEUED
               and not (u.get("record_at_deadline") or {}).get("attempts")]
    if not waiting:
        return
    held: list[bytes] = list(r.hvals("unacked"))
    for key in r.scan_iter(match="vecq*", count=1000):
        if r.type(key) == b"list":
            held += r.lrange(key, 0, -1)
    for u in waiting:
        u["never_delivered"] = not any(job.encode() in raw for raw in held for job in u["jobs"])


def api_log_reasons(data_dir: Path) -> dict[str, int]:
    """Why the API answered 503 "Redis is unavailable", from its log: Redis down, or its connection pool empty."""
    reasons: Counter[str] = Counter()
    path = data_dir / "logs" / "api.log"
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            if "redis unavailable: " in line:
                reason = line.split("redis unavailable: ", 1)[1]
                reasons[re.sub(r"\d+\.\d+\.\d+\.\d+:\d+", "HOST:PORT", reason)[:100]] += 1
    return dict(reasons.most_common(10))


def census_growth(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[dict[str, Any]]:
    """MB by key kind at the window's start and end, largest change first."""
    if not before or not after or "kinds" not in before or "kinds" not in after:
        return []
    rows = []
    for kind in set(before["kinds"]) | set(after["kinds"]):
        a, b = before["kinds"].get(kind, {}), after["kinds"].get(kind, {})
        rows.append({"kind": kind, "keys_start": a.get("keys", 0), "keys_end": b.get("keys", 0),
                     "mb_start": a.get("mb", 0.0), "mb_end": b.get("mb", 0.0),
                     "mb_change": round(b.get("mb", 0.0) - a.get("mb", 0.0), 2)})
    return sorted(rows, key=lambda x: -abs(x["mb_change"]))


# ---------------------------------------------------------------------------------------------------------------
# The run


def run(cfg: Config) -> dict[str, Any]:
    started = time.time()
    busy0 = machine_seconds()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="vecq-soak-"))
    soak = Soak(cfg, work / "data")
    driver: subprocess.Popen[bytes] | None = None
    sampler: threading.Thread | None = None
    result: dict[str, Any] = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
                              "machine": machine(), "started": started}
    ok = False
    try:
        # Data: the collection, the upload, the writers' vectors and the queries all from one mixture.
        writes_total = int(cfg.write_rate * (cfg.duration_s + WRITES_LEAD_S + 60)) + 1
        everything, queries = bench_data.clustered(cfg.n + cfg.ingest_rows + writes_total, cfg.dim, cfg.queries,
                                                   cfg.seed)
        base, bulk = everything[:cfg.n], everything[cfg.n:cfg.n + cfg.ingest_rows]
        pool = everything[cfg.n + cfg.ingest_rows:]
        queries_path, pool_path = work / "queries.npy", work / "pool.npy"
        np.save(queries_path, queries)
        np.save(pool_path, pool)

        log(f"stack in {work}: embedded Redis (AOF), {cfg.workers} workers, {cfg.api_processes} API processes")
        soak.start()
        soak.create()
        up = soak.upload(base, "base-", 900)
        if up.get("status") != JobStatus.SUCCEEDED:
            raise RuntimeError(f"initial upload: {up}")
        log(f"initial {cfg.n:,} x {cfg.dim} ({cfg.index}) uploaded in {up['seconds']}s; waiting for its seal")
        settled = soak.settle(900)
        result["setup"] = {"initial_upload": up, "settled": {k: settled.get(k) for k in ("count", "segments")},
                           "warm": soak.warm(queries)}
        result["peak_alone"] = peak_alone = soak.peak(queries_path)
        log(f"c=64 peak without writes {peak_alone['qps']} QPS (p50 {peak_alone['p50_ms']} ms); writers start")

        # The run: the driver child (writers now, searches from t0), the sampler thread, and the chaos here. The
        # search rate is 70 % of the c=64 peak measured while the writers run: 70 % of the peak without them plus
        # the writes is more than the machine serves (the first full run: a third of the searches and three
        # quarters of the writes served, write p50 11.6 s, the API's Redis pool exhausted), an overload test.
        writes_from = time.time() + 2.0
        soak.t0 = t0 = writes_from + WRITES_LEAD_S
        assert soak.stack is not None and soak.stack.api_url
        rate_path = work / "search_rate"
        spec = {"url": soak.stack.api_url, "collection": soak.name, "t0": t0, "duration_s": cfg.duration_s,
                "writes_from": writes_from, "rate_path": str(rate_path),
                "search_template": soak.search_template(), "queries_path": str(queries_path),
                "search_inflight": cfg.search_inflight, "write_rate": cfg.write_rate,
                "write_inflight": cfg.write_inflight, "pool_path": str(pool_path),
                "update_fraction": cfg.update_fraction, "write_wait_s": cfg.write_wait_s,
                "ack_deadline_s": cfg.ack_deadline_s, "drain_s": cfg.ack_deadline_s + 30, "seed": cfg.seed,
                "out_path": str(work / "drive.json")}
        (work / "spec.json").write_text(json.dumps(spec))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                                           if p)}
        with open(work / "driver.log", "wb") as driver_log:
            driver = subprocess.Popen([sys.executable, "-m", "bench.soak", "--driver", str(work / "spec.json")],
                                      cwd=ROOT, env=env, stdout=driver_log, stderr=driver_log,
                                      start_new_session=True)
        census = {"window_start": t0 + cfg.duration_s - cfg.window_s, "load_end": t0 + cfg.duration_s}
        sampler = threading.Thread(target=soak.sample_forever, args=(2.0, t0 + cfg.duration_s + 1200, census),
                                   daemon=True)
        sampler.start()
        time.sleep(max(0.0, writes_from + WRITES_SETTLE_S - time.time()))
        result["peak"] = peak = soak.peak(queries_path)
        rate = round(cfg.search_fraction * peak["qps"], 1)
        rate_path.with_suffix(".tmp").write_text(str(rate))
        rate_path.with_suffix(".tmp").rename(rate_path)
        log(f"c=64 peak with {cfg.write_rate:g} writes/s {peak['qps']} QPS (p50 {peak['p50_ms']} ms); searches at "
            f"{rate}/s from t0 for {cfg.minutes} min")
        ingest_thread: threading.Thread | None = None
        for turn, (offset, what) in enumerate(soak.schedule()):
            time.sleep(max(0.0, t0 + offset - time.time()))
            if driver.poll() is not None:
                raise RuntimeError(f"the load driver exited early ({driver.returncode}): "
                                   f"{(work / 'driver.log').read_text()[-2000:]}")
            if what == "ingest":
                ingest_thread = threading.Thread(target=soak.run_ingest, args=(bulk, cfg.duration_s), daemon=True)
                ingest_thread.start()
            elif what == "kill_pool_child":
                soak.kill_child(turn)
            elif what == "kill_worker":
                soak.kill_worker()
            elif what == "restart_redis":
                soak.restart_redis()
        try:
            driver.wait(max(0.0, t0 + cfg.duration_s - time.time()) + spec["drain_s"] + 60)
        except subprocess.TimeoutExpired:
            raise RuntimeError("the load driver did not finish in time") from None
        if driver.returncode != 0:
            raise RuntimeError(f"load driver failed ({driver.returncode}): {(work / 'driver.log').read_text()[-3000:]}")
        if ingest_thread is not None:
            ingest_thread.join(max(0.0, t0 + cfg.duration_s + 600 - time.time()))
        run_end = t0 + cfg.duration_s
        while "load_end" not in soak.census and sampler.is_alive() and time.time() < run_end + 60:
            time.sleep(0.5)
        drive = orjson.loads((work / "drive.json").read_bytes())
        log(f"load done ({drive['unfinished']} requests still open at the end); verifying")
        r = soak.redis_client()
        try:
            result["redis_version"] = r.info("server").get("redis_version")
            never_delivered(r, drive["unresolved_log"])
        finally:
            r.close()

        # Verification (the samples go on: what the workers' memory does after the load, e.g. after a compaction)
        result["verify"] = verify(soak, cfg, drive, pool, base, bulk)
        soak._stop_sampling.set()
        sampler.join(30)
        result["redis_census"] = soak.census
        result["redis_growth_by_kind"] = census_growth(soak.census.get("window_start"), soak.census.get("load_end"))
        result["job_retention"] = job_retention(cfg, soak.census.get("load_end"))
        result["delivery_retention"] = delivery_retention(soak.census.get("window_start"), soak.census.get("load_end"))
        result["collection_end"] = {k: v for k, v in soak.collection().items() if k != "segments"} | {
            "segments": [{k: s.get(k) for k in ("rows", "deleted", "bytes", "build_s")}
                         for s in soak.collection().get("segments", [])]}

        # Figures and assertions
        assert soak.stack is not None
        result.update(summarize(cfg, soak, drive, t0, run_end))
        result["search"]["rate_target"] = rate
        result["events"] = sorted(soak.events + seal_events(soak.data_dir, t0), key=lambda e: e["at"])
        result["samples"] = [{k: (round(v, 2) if k == "t" else v) for k, v in s.items()} for s in soak.samples]
        result["assertions"] = assertions(cfg, result)
        ok = all(a["ok"] for a in result["assertions"])
        return result
    finally:
        result["seconds"] = round(time.time() - started, 1)
        busy1 = machine_seconds()
        if busy0 and busy1:
            result["machine"]["busy_cores_during_run"] = round((busy1[0] - busy0[0]) / max(1e-9, time.time()
                                                                                             - started), 2)
        result["machine"]["loadavg_before"] = [round(x, 2) for x in load_before]
        result["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        if driver is not None and driver.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(10)
        soak.stop()
        if sampler is not None:
            sampler.join(10)
        if ok and not cfg.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept the run's files (logs, spec, driver output) in {work}")
            result["work_dir"] = str(work)


def verify(soak: Soak, cfg: Config, drive: dict[str, Any], pool: np.ndarray, base: np.ndarray,
           bulk: np.ndarray) -> dict[str, Any]:
    acked = drive["acked"]
    unresolved = {vid: rows for vid, rows in drive["unresolved"].items()}
    ingested = soak.ingest.get("status") == JobStatus.SUCCEEDED
    # Expected live ids: the initial rows, the upload, every acknowledged writer id. An id written only by
    # writes of unknown outcome may or may not be there: the count may exceed the exact figure by that many.
    maybe = [vid for vid in unresolved if vid not in acked]
    expected = cfg.n + (cfg.ingest_rows if ingested else 0) + len(acked)
    writers_expected = len(acked)
    info = soak.collection()
    counts = soak.counts(tries=6)
    ids = sorted(acked)
    rows = np.asarray([acked[i][0] for i in ids], dtype=np.int64)
    vectors = pool[rows] if len(rows) else np.zeros((0, cfg.dim), np.float32)
    metas = [acked[i][1] for i in ids]
    # Ids with an attempt of unknown outcome after their last acknowledged write may hold that write instead.
    tainted_after = {vid for vid in unresolved if vid in acked}
    sure = [i for i, vid in enumerate(ids) if vid not in tainted_after]
    started = time.time()
    writers = soak.check_ids([ids[i] for i in sure], vectors[sure], [metas[i] for i in sure])
    writers["seconds"] = round(time.time() - started, 1)
    # The unresolved ones: their value is one of the candidates (or, for a never-acknowledged id, absent).
    odd: list[str] = []
    for vid, cand_rows in list(unresolved.items())[:2000]:
        got = soak.get_vector(vid)
        candidates = [pool[r] for r in cand_rows] + ([pool[acked[vid][0]]] if vid in acked else [])
        if got is None:
            if vid in acked:
                odd.append(vid)
            continue
        if not any(np.array_equal(np.asarray(got["vector"], np.float32), c) for c in candidates):
            odd.append(vid)
    sup = drive["superseded"]
    sup_ids = [vid for vid, _ in sup if vid not in unresolved]
    sup_vectors = pool[np.asarray([row for vid, row in sup if vid not in unresolved], dtype=np.int64)] if sup_ids \
        else np.zeros((0, cfg.dim), np.float32)
    stale = soak.stale(sup_ids[:20_000], sup_vectors[:20_000])
    rng = np.random.default_rng(cfg.seed)
    base_pick = rng.choice(cfg.n, size=min(cfg.n, 5000), replace=False)
    bulk_pick = rng.choice(cfg.ingest_rows, size=min(cfg.ingest_rows, 5000), replace=False) if ingested else []
    base_check = soak.check_ids([f"base-{i}" for i in base_pick], base[base_pick], [None] * len(base_pick))
    bulk_check = soak.check_ids([f"ing-{i}" for i in bulk_pick], bulk[bulk_pick], [None] * len(bulk_pick)) \
        if ingested else {"checked": 0, "problems": 0}
    index_counts = {int(k) for k in counts["all"]}
    writer_counts = {int(k) for k in counts["writers"]}
    exact = not maybe
    count_ok = (info["count"] == expected if exact else expected <= info["count"] <= expected + len(maybe)) and \
        bool(index_counts) and all((c == expected if exact else expected <= c <= expected + len(maybe))
                                   for c in index_counts) and \
        all((c == writers_expected if exact else writers_expected <= c <= writers_expected + len(maybe))
            for c in writer_counts)
    return {"expected_count": expected, "maybe_extra": len(maybe), "redis_count": info["count"],
            "index_counts": counts, "writers_expected": writers_expected, "count_ok": count_ok,
            "acknowledged_ids": len(acked), "acknowledged_writes": int(sum(1 for o in drive["write"]["outcome"]
                                                                           if o == ACKED)),
            "writers": writers, "unresolved_ids": len(unresolved), "unresolved_odd": odd[:20],
            "unresolved_odd_count": len(odd), "stale": stale, "base_sample": base_check, "ingest_sample": bulk_check}


def summarize(cfg: Config, soak: Soak, drive: dict[str, Any], t0: float, run_end: float) -> dict[str, Any]:
    # HTTP statuses: every response the driver and the ingest got; 5xx split by whether Redis was down.
    fivexx = [tuple(x) for x in drive["fivexx"]] + soak.fivexx_other

    def in_outage(at: float) -> bool:
        return any(lo <= at <= hi for lo, hi in soak.outages)

    allowed = [x for x in fivexx if x[2] == 503 and x[3] and in_outage(x[0])]
    unexpected = [x for x in fivexx if not (x[2] == 503 and x[3] and in_outage(x[0]))]
    statuses = {kind: dict(sorted(v.items())) for kind, v in drive["statuses"].items()}
    for key, n in soak.http_other.items():
        kind, status = key.split(":")
        statuses.setdefault(kind, {})[status] = statuses.get(kind, {}).get(status, 0) + n
    total_429 = sum(v.get("429", 0) for v in statuses.values())
    s_status = np.asarray(drive["search"]["status"])
    s_lat = np.asarray(drive["search"]["lat"])
    ok = s_status == 200
    w_out = np.asarray(drive["write"]["outcome"])
    w_lat = np.asarray(drive["write"]["lat"])
    in_run = np.asarray(drive["write"]["at"]) >= t0  # the writes before t0 ran under the peak measurement
    w_ok = in_run & (w_out == ACKED)
    lo = run_end - cfg.window_s
    # Each end of the window is one seal period wide: the log grows between seals and each seal trims it, a sawtooth
    # that shorter edges would catch at different phases (13 MB on ~80 MB at the full run's sizes).
    edge = min(max(30.0, cfg.seal_every_rows / cfg.write_rate), cfg.window_s / 3)
    memory = {"window_s": cfg.window_s, "from_offset_s": round(lo - t0), "edge_s": edge,
              "api_rss": memory_growth(soak.samples, "api_rss", lo, run_end, edge),
              "redis_used_memory": memory_growth(soak.samples, "redis_used", lo, run_end, edge),
              "workers_rss": memory_growth(soak.samples, "workers_rss", lo, run_end, edge)}
    # The writers create new ids (most of their writes), and each live id is a field of its collection's `docs`
    # hash: data, which grows with the collection as it must. The log between seals is data too, a sawtooth as
    # tall as the rest of Redis's bookkeeping here (20,000 rows), whose bytes per row swing with the load. What
    # must stay flat besides the two is the bookkeeping.
    memory["redis_wal"] = memory_growth(soak.samples, "redis_wal", lo, run_end, edge)
    docs_start, docs_end = docs_bytes(soak.census.get("window_start")), docs_bytes(soak.census.get("load_end"))
    m_start, m_end = markers_bytes(soak.census.get("window_start")), markers_bytes(soak.census.get("load_end"))
    if docs_start and docs_end:
        markers = (m_start, m_end) if m_start and m_end else None
        memory["redis_bookkeeping"] = memory_growth(less_data(soak.samples, docs_start, docs_end, markers),
                                                    "redis_bookkeeping", lo, run_end, edge)
        memory["redis_bookkeeping"]["docs_mb"] = [round(docs_start[1] / 1e6, 2), round(docs_end[1] / 1e6, 2)]
        ids = [row["live_ids"] for row in soak.samples if row.get("live_ids") is not None and lo <= row["t"]
               <= run_end]
        memory["live_ids"] = {"start": ids[0], "end": ids[-1]} if ids else {}
    return {
        "t0": t0, "duration_s": cfg.duration_s,
        "http": {"statuses": statuses, "5xx_total": len(fivexx), "503_while_redis_down": len(allowed),
                 "5xx_unexpected": len(unexpected),
                 "5xx_unexpected_samples": [{"offset_s": round(x[0] - t0, 2), "kind": x[1], "status": x[2],
                                             "retry_after": x[3]} for x in unexpected[:20]],
                 "api_log_503_reasons": api_log_reasons(soak.data_dir),
                 "429": total_429, "transport_errors": drive["transport"],
                 "transport_samples": drive["transport_samples"],
                 "outages": [{"from_offset_s": round(a - t0, 1), "to_offset_s": round(b - t0, 1)}
                             for a, b in soak.outages]},
        "search": {"rate_target": None, "sent": len(s_status), "shed": drive["search"]["shed"],
                   "ok": int(ok.sum()), "qps": round(float(ok.sum()) / cfg.duration_s, 1),
                   "p50_ms": percentile(s_lat[ok], 50), "p99_ms": percentile(s_lat[ok], 99),
                   "status_202": int((s_status == 202).sum()), "status_429": int((s_status == 429).sum())},
        "writes": {"sent": len(w_out), "sent_before_t0": int((~in_run).sum()), "shed": drive["write"]["shed"],
                   "acked": int((w_out == ACKED).sum()),
                   "unresolved": int((w_out == UNRESOLVED).sum()),
                   "never_delivered": sum(1 for u in drive["unresolved_log"] if u.get("never_delivered")),
                   "unresolved_samples": [{**u, "offset_s": round(u["at"] - t0, 1)} for u in drive["unresolved_log"]],
                   "failed_jobs": drive["failed_job_count"],
                   "failed_samples": drive["failed_jobs"][:10], "rejected": drive["rejected_count"],
                   "rejected_samples": drive["rejected"][:5], "retried": int(sum(1 for a in drive["write"]["attempts"]
                                                                                 if a > 1)),
                   "ack_rate": round(float(w_ok.sum()) / cfg.duration_s, 1),
                   "p50_ms": percentile(w_lat[w_ok], 50), "p99_ms": percentile(w_lat[w_ok], 99),
                   "unfinished_at_end": drive["unfinished"]},
        "ingest": {k: v for k, v in soak.ingest.items() if k not in ("started", "finished")},
        "bins": bins(cfg, t0, drive),
        "memory": memory,
    }


def window_requests(res: dict[str, Any]) -> int:
    """Searches answered and writes acknowledged within the memory window."""
    start = res["memory"]["from_offset_s"]
    return sum(b["search_ok"] + b["writes_acked"] for b in res["bins"] if b["from_s"] >= start)


def assertions(cfg: Config, res: dict[str, Any]) -> list[dict[str, Any]]:
    http, v, mem = res["http"], res["verify"], res["memory"]
    out = []

    def check(name: str, ok: bool, figure: str) -> None:
        out.append({"name": name, "ok": bool(ok), "figure": figure})

    check("no HTTP 5xx (503 + Retry-After while Redis is down excepted)", http["5xx_unexpected"] == 0,
          f"{http['5xx_unexpected']} unexpected 5xx; {http['503_while_redis_down']} 503 + Retry-After while Redis was "
          f"down; {http['429']} 429")
    check("the live count is every acknowledged id exactly once (Redis and each worker's index)", v["count_ok"],
          f"expected {v['expected_count']:,}" + (f" (+ up to {v['maybe_extra']} of unknown outcome)"
                                                   if v["maybe_extra"] else "")
          + f"; Redis {v['redis_count']:,}; index counts seen {v['index_counts']['all']}; writers' rows "
          f"{v['index_counts']['writers']} of {v['writers_expected']:,}")
    w = v["writers"]
    check("every acknowledged write reads back with its last acknowledged vector and metadata",
          w["problems"] == 0 and v["unresolved_odd_count"] == 0,
          f"{w['checked']:,} ids: {w['by_search']:,} by search, {w['by_get']:,} by GET, {w['problems']} wrong "
          f"{w['problem_kinds'] or ''}; {v['unresolved_ids']} ids with a write of unknown outcome, "
          f"{v['unresolved_odd_count']} odd")
    wr = res["writes"]
    lost = wr["never_delivered"]
    check(f"every write acknowledged within {cfg.ack_deadline_s:.0f} s (retried after a 503 or a dropped connection)",
          wr["unresolved"] - lost == 0 and wr["failed_jobs"] == 0 and wr["rejected"] == 0,
          f"{wr['acked']:,} of {wr['sent']:,} acknowledged; {wr['unresolved'] - lost} without an answer, "
          f"{wr['failed_jobs']} failed jobs, {wr['rejected']} refused"
          + (f"; {lost} never delivered to a worker: lost by the broker as its worker was SIGKILLed whole (kombu "
             "pops a message, then records it as unacked: celery/celery#7950), never applied, not counted"
             if lost else ""))
    check("no superseded vector comes back under its id", v["stale"]["found"] == 0,
          f"{v['stale']['checked']:,} superseded vectors searched, {v['stale']['found']} found")
    check("bulk rows read back (samples of the initial upload and of the ingest)",
          v["base_sample"]["problems"] == 0 and v["ingest_sample"]["problems"] == 0 and
          res["ingest"].get("status") == JobStatus.SUCCEEDED,
          f"ingest {res['ingest'].get('status')}; {v['base_sample']['checked']:,} + {v['ingest_sample']['checked']:,} "
          f"checked, {v['base_sample']['problems'] + v['ingest_sample']['problems']} wrong")
    for key, label in (("api_rss", "API RSS (all API processes)"), ("redis_used_memory", "Redis used_memory"),
                       ("redis_bookkeeping", "Redis used_memory less the data (the live ids' `docs` fields, the "
                                             "unsealed log) and the done markers' growth")):
        if key not in mem:
            continue
        m = mem[key]
        growth = m.get("growth")
        note = f", job records kept {cfg.job_ttl} s" if key == "redis_used_memory" else ""
        floor = cfg.bookkeeping_floor_mb if key == "redis_bookkeeping" else 0.0
        grown_mb = (m["end_mb"] - m["start_mb"]) if growth is not None else float("inf")
        bound = f"≤ +{cfg.max_growth:.0%}" + (f" or +{floor:g} MB" if floor else "")
        check(f"{label} flat over the last {mem['window_s'] / 60:.1f} min ({bound}{note})",
              growth is not None and (growth <= cfg.max_growth or grown_mb <= floor),
              f"{m.get('start_mb')} → {m.get('end_mb')} MB ({growth:+.1%}), max {m.get('max_mb')} MB"
              + (f"; {grown_mb * 1e6 / served:+.1f} B per request served in the window ({served:,})"
                 if floor and (served := window_requests(res)) else "")
              if growth is not None else str(m))
    markers = ((res.get("redis_census") or {}).get("load_end") or {}).get("kinds", {}).get("vecq:delivery")
    if markers and "sampled" in markers and res.get("delivery_retention"):
        window = res["delivery_retention"]["window_s"]
        check("the write batches' done markers all expire, within the redelivery window (what the bookkeeping check "
              "leaves out of their growth is bounded)",
              markers["unexpiring"] == 0 and 0 < markers["max_ttl_s"] <= window,
              f"{markers['sampled']} of {markers['keys']:,} sampled: {markers['unexpiring']} without a TTL, the "
              f"longest {markers['max_ttl_s']:,} s (window {window:,.0f} s)")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Output


def write_report(res: dict[str, Any], out: Path, json_too: bool = True) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "soak.json", "md": out / "soak.md", "png": out / "soak.png"}
    if json_too:
        paths["json"].write_text(json.dumps(res, indent=1, default=str) + "\n")
    else:
        del paths["json"]
    paths["md"].write_text(markdown(res))
    plot(res, paths["png"])
    return paths


def fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def markdown(res: dict[str, Any]) -> str:
    cfg, m = res["config"], res["machine"]
    lines = [f"# Soak: {cfg['minutes']:g} minutes under load and chaos", "",
             f"`{cfg['command']}` — {datetime.fromtimestamp(res['started'], UTC).strftime('%Y-%m-%d %H:%M UTC')}, "
             f"{res['seconds']:.0f} s in all.", "",
             f"**Machine**: {m.get('model_name', '?')}, {m.get('cores')} cores, {m.get('ram_gb')} GB RAM, Linux "
             f"{m.get('kernel')}, Python {m.get('python')}, faiss-cpu {m.get('faiss-cpu')}, Celery {m.get('celery')}, "
             f"Redis {res.get('redis_version')}; load average {m.get('loadavg_before')} before, "
             f"{m.get('loadavg_after')} after; {m.get('busy_cores_during_run')} cores busy on average (everything "
             "on the machine, other users included).", "",
             f"**Stack**: embedded Redis with AOF, {cfg['workers']} workers, {cfg['api_processes']} API processes, "
             f"all on 127.0.0.1. Collection `{cfg['index']}`, {cfg['n']:,} x {cfg['dim']} uploaded first; "
             f"VECQ_SEAL_EVERY_ROWS={cfg['seal_every_rows']:,}, "
             f"VECQ_COMPACT_MAX_SEGMENTS={cfg['compact_max_segments']}.",
             "",
             f"**Load**: c=64 closed-loop search peak {fmt(res['peak_alone']['qps'])} QPS alone (p50 "
             f"{res['peak_alone']['p50_ms']} ms) and {fmt(res['peak']['qps'])} QPS (p50 {res['peak']['p50_ms']} ms) "
             f"with the writers running; open-loop searches at {cfg['search_fraction']:.0%} of the latter "
             f"({fmt(res['search']['rate_target'])}/s, k={cfg['k']}"
             + (f", efSearch {cfg['ef_search']}" if cfg["index"].upper().startswith("HNSW") else "")
             + f"), {fmt(cfg['write_rate'])} single-vector upserts/s ({cfg['update_fraction']:.0%} of them replace "
             f"an acknowledged id), one {cfg['ingest_rows']:,}-row .npy upload.", "",
             "## Assertions", ""]
    if res.get("assertions_recomputed"):
        lines += [f"Assertions {res['assertions_recomputed']}.", ""]
    lines += ["| | assertion | figures |", "|---|---|---|"]
    for a in res["assertions"]:
        lines.append(f"| {'PASS' if a['ok'] else '**FAIL**'} | {a['name']} | {a['figure']} |")
    s, w, h = res["search"], res["writes"], res["http"]
    vw = res["verify"]["writers"]
    verified = {k: res["verify"][k] for k in ("expected_count", "redis_count", "acknowledged_ids",
                                               "acknowledged_writes")}
    lines += ["", "## Totals", "",
              f"- Searches: {s['sent']:,} sent ({s['shed']:,} not sent: {cfg['search_inflight']} already in flight), "
              f"{s['ok']:,} answered 200 ({s['qps']} QPS), p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms; "
              f"{s['status_202']} answered 202 (not done within the 30 s wait), {s['status_429']} 429.",
              f"- Writes: {w['sent']:,} sent ({w['sent_before_t0']:,} of them before t0, under the peak measurement; "
              f"{w['shed']} not sent), {w['acked']:,} acknowledged ({w['ack_rate']}/s from t0), p50 {w['p50_ms']} ms, "
              f"p99 {w['p99_ms']} ms to the acknowledgement; {w['retried']} retried after a "
              f"503 or a dropped connection; {w['unresolved']} of unknown outcome; {w['failed_jobs']} failed jobs; "
              f"{w['rejected']} refused (4xx).",
              f"- HTTP statuses by kind: `{json.dumps(h['statuses'])}`; transport errors {h['transport_errors'] or 0}. "
              f"The API's reasons for its 503s (its log): `{json.dumps(h['api_log_503_reasons'])}`.",
              f"- Ingest: {json.dumps(res['ingest'])}.",
              f"- Verification: {json.dumps(verified)}; writers checked in {vw.get('seconds')} s, answered by "
              f"{vw.get('answered_by')}.", ""]
    mem = res["memory"]
    lines += [f"## Memory over the last {mem['window_s'] / 60:.1f} minutes (from +{mem['from_offset_s']} s)", "",
              f"Start and end are the medians of the samples (every 2 s) in the window's first and last "
              f"{mem['edge_s']:.0f} s (a seal period: the log grows between seals and each seal trims it).", "",
              "| | start MB | end MB | max MB | growth |", "|---|---:|---:|---:|---:|"]
    for key in ("api_rss", "redis_used_memory", "redis_wal", "redis_bookkeeping", "workers_rss"):
        if key not in mem or "start_mb" not in mem[key]:
            continue
        mm = mem[key]
        growth = f"{mm['growth']:+.1%}" if "growth" in mm else "-"
        lines.append(f"| {key} | {fmt(mm.get('start_mb'))} | {fmt(mm.get('end_mb'))} | {fmt(mm.get('max_mb'))} | "
                     f"{growth} |")
    if "redis_bookkeeping" in mem:
        ids = mem.get("live_ids") or {}
        lines += ["", f"`redis_bookkeeping` is used_memory less the data: the live ids' fields in the collections' "
                  f"`docs` hashes (interpolated by the live count between the censuses at the window's start and the "
                  f"load's end: {mem['redis_bookkeeping']['docs_mb'][0]} → {mem['redis_bookkeeping']['docs_mb'][1]} "
                  f"MB), the writers' new ids, which grow with the collection ({ids.get('start', 0):,} → "
                  f"{ids.get('end', 0):,} live ids over the window); and `redis_wal`, the log's rows not yet sealed "
                  f"(MEMORY USAGE at each sample), which each seal trims."]
    ret = res.get("job_retention") or {}
    if ret:
        lines += ["", f"Job records: {ret['record_bytes']} B a record + {ret['watchers_bytes']} B for its watchers set "
                  f"({ret['watchers_sets']:,} sets for {ret['records']:,} records) = {ret['bytes_per_job']} B a job, "
                  f"~{ret['jobs_per_s']} jobs/s. This run keeps them {ret['job_ttl_s']} s (VECQ_JOB_TTL_S) so that "
                  f"they are at their steady state in the window; at vecq's default (86,400 s) Redis would grow "
                  f"{ret['mb_per_min_until_expiry']} MB/min for a day, to ~{ret['gb_per_day_at_default_ttl']} GB."]
    if done := res.get("delivery_retention"):
        kept = f"the redelivery window, {done['window_s']:,.0f} s"
        lines += ["", f"Write batches' `done` markers (`vecq:delivery`, {done['marker_bytes']} B each, "
                  f"~{done['per_s']}/s, {done['markers']:,} at the load's end) are kept {kept}, so that a batch "
                  f"redelivered after a lost ack is skipped: they grow through the soak, to ~{done['steady_mb']} MB "
                  "at this write rate; `redis_bookkeeping` leaves out that growth (their expiry is asserted)."]
    growth_rows = [g for g in res.get("redis_growth_by_kind") or [] if g["mb_start"] or g["mb_end"]][:8]
    if growth_rows:
        lines += ["", "Where Redis's memory went over the window: a census of the keys by kind at its start and at the "
                  "end of the load (MEMORY USAGE of up to 200 keys of each kind, scaled to the count):", "",
                  "| key kind | keys at start | keys at end | MB at start | MB at end | change MB |",
                  "|---|---:|---:|---:|---:|---:|"]
        for g in growth_rows:
            lines.append(f"| `{g['kind']}` | {g['keys_start']:,} | {g['keys_end']:,} | {g['mb_start']} | "
                         f"{g['mb_end']} | {g['mb_change']:+} |")
    lines += ["", f"## Per {cfg['bin_s']:g} s", "",
              "| from s | searches 200 | QPS | p50 ms | p99 ms | 202 | 429 | 503 | other | writes acked | "
              "write p50 ms | write p99 ms |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b in res["bins"]:
        lines.append(f"| {b['from_s']} | {b['search_ok']:,} | {b['search_qps']} | {fmt(b['search_p50_ms'], 2)} | "
                     f"{fmt(b['search_p99_ms'], 2)} | {b['search_202']} | {b['search_429']} | {b['search_503']} | "
                     f"{b['search_other']} | {b['writes_acked']:,} | {fmt(b['write_p50_ms'], 2)} | "
                     f"{fmt(b['write_p99_ms'], 2)} |")
    lines += ["", "## Events", "", "Offsets from the start of the load; wall clock in UTC.", "",
              "| +s | UTC | event | details |", "|---:|---|---|---|"]
    for e in res["events"]:
        details = {k: v for k, v in e.items() if k not in ("kind", "at", "offset_s")}
        when = datetime.fromtimestamp(e["at"], UTC).strftime("%H:%M:%S")
        lines.append(f"| {e['offset_s']} | {when} | {e['kind']} | {json.dumps(details, default=str)[:220]} |")
    lines += ["", "Plot: `soak.png` (latency per bin, memory over time, the events as vertical lines); every figure "
              "above is in `soak.json`.", ""]
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = res["t0"]
    b = res["bins"]
    mid = [(x["from_s"] + x["to_s"]) / 2 / 60 for x in b]
    fig, axes = plt.subplots(3, 1, figsize=(11, 10), sharex=True)
    for ax, kind, title in ((axes[0], "search", "searches"), (axes[1], "write", "writes (to the acknowledgement)")):
        for q, style in (("p50", "o-"), ("p99", "s--")):
            ys = [x[f"{kind}_{q}_ms"] for x in b]
            ax.plot(mid, [y if y is not None else np.nan for y in ys], style, label=q)
        ax.set_yscale("log")
        ax.set_ylabel("ms")
        ax.set_title(f"{title}: p50 / p99 per {res['config']['bin_s']:g} s")
        ax.grid(True, which="both", alpha=0.3)
    twin = axes[0].twinx()
    twin.plot(mid, [x["search_qps"] for x in b], color="grey", alpha=0.5, label="QPS (200)")
    twin.set_ylabel("QPS")
    samples = [s for s in res["samples"] if s["t"] >= t0 - 5]
    ts = [(s["t"] - t0) / 60 for s in samples]
    axes[2].plot(ts, [s["api_rss"] / 1e6 for s in samples], label="API RSS (all processes)")
    axes[2].plot(ts, [s["redis_used"] / 1e6 if s.get("redis_used") is not None else np.nan for s in samples],
                 label="Redis used_memory")
    axes[2].plot(ts, [s["redis_wal"] / 1e6 if s.get("redis_wal") is not None else np.nan for s in samples],
                 label="of which the unsealed log")
    axes[2].set_ylabel("MB")
    axes[2].set_xlabel("minutes from the start of the load")
    window_from = res["memory"]["from_offset_s"] / 60
    axes[2].axvspan(window_from, res["duration_s"] / 60, color="green", alpha=0.07, label="checked window")
    if ts and ts[-1] > res["duration_s"] / 60:  # its searches return vectors: not the load's memory
        axes[2].axvspan(res["duration_s"] / 60, ts[-1], color="grey", alpha=0.07, label="verification (after the load)")
    axes[2].grid(True, alpha=0.3)
    colors = {"kill_pool_child": "orange", "kill_worker": "red", "restart_redis": "purple", "ingest_start": "blue",
              "seal": "grey", "compaction": "black"}
    for e in res["events"]:
        color = colors.get(e["kind"])
        if color is None:
            continue
        for ax in axes:
            ax.axvline(e["offset_s"] / 60, color=color, alpha=0.25 if e["kind"] == "seal" else 0.6,
                       lw=0.8, ls=":" if e["kind"] in ("seal", "compaction") else "-")
    from matplotlib.lines import Line2D

    handles = [Line2D([0], [0], color=c, lw=1.5, label=k) for k, c in colors.items()]
    axes[0].legend(loc="upper left", fontsize=8)
    axes[1].legend(handles=axes[1].get_legend_handles_labels()[0] + handles, fontsize=8, loc="upper left", ncol=2)
    axes[2].legend(loc="upper left", fontsize=8)
    verdict = "PASS" if all(a["ok"] for a in res["assertions"]) else "FAIL"
    fig.suptitle(f"vecq soak: {res['config']['minutes']:g} min, {res['config']['index']}, {verdict}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# CLI


def parser() -> argparse.ArgumentParser:
    d = Config()
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, help=f"length of the load (default {d.minutes:g}; --quick 2)")
    p.add_argument("--quick", action="store_true", help="about 2 minutes, small sizes and rates: a smoke run")
    p.add_argument("--n", type=int, help=f"initial vectors (default {d.n:,})")
    p.add_argument("--dim", type=int, help=f"dimension (default {d.dim})")
    p.add_argument("--index", help=f"FAISS index spec (default {d.index})")
    p.add_argument("--ingest-rows", type=int, dest="ingest_rows", help=f"rows of the .npy upload ({d.ingest_rows:,})")
    p.add_argument("--write-rate", type=float, dest="write_rate", help=f"upserts per second ({d.write_rate:g})")
    p.add_argument("--search-fraction", type=float, dest="search_fraction",
                   help=f"search rate as a fraction of the c=64 peak ({d.search_fraction})")
    p.add_argument("--api-processes", type=int, dest="api_processes", help=f"API processes ({d.api_processes})")
    p.add_argument("--chaos-every", type=float, dest="chaos_every_s", help=f"seconds between pool-child kills "
                   f"({d.chaos_every_s:g})")
    p.add_argument("--seal-every-rows", type=int, dest="seal_every_rows", help=f"({d.seal_every_rows:,})")
    p.add_argument("--job-ttl", type=int, dest="job_ttl_s", help="VECQ_JOB_TTL_S of the stack (default: 0.8 x the "
                   "time before the memory window, so that job records are at their steady state in it; 86400 is "
                   "vecq's default)")
    p.add_argument("--seed", type=int, help=f"data seed ({d.seed})")
    p.add_argument("--out", type=Path, help="results directory (default bench/results; --quick: bench/results/quick)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, driver output) even on success")
    p.add_argument("--render", type=Path, metavar="JSON", help="only rewrite soak.md and soak.png of an earlier run's "
                   "soak.json (into --out)")
    p.add_argument("--driver", type=Path, help=argparse.SUPPRESS)  # the load child: python -m bench.soak --driver SPEC
    return p


def config(argv: list[str]) -> Config:
    args = parser().parse_args(argv)
    given = {k: v for k, v in vars(args).items()
             if v is not None and k not in ("quick", "driver", "render") and v is not False}
    base = {**QUICK, **given} if args.quick else given
    if args.quick and args.out is None:  # a smoke run never replaces the committed full results
        base["out"] = ROOT / "bench" / "results" / "quick"
    cfg = Config(**base, quick=args.quick)
    cfg.command = "python -m bench.soak" + ("" if not argv else " " + shlex.join(argv))
    if not cfg.out.is_absolute():
        cfg.out = Path.cwd() / cfg.out
    return cfg


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.driver is not None:
        return driver_main(args.driver)
    cfg = config(argv)
    if args.render is not None:
        res = json.loads(args.render.read_text())
        paths = write_report(res, cfg.out, json_too=False)
        print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
        return 0 if all(a["ok"] for a in res["assertions"]) else 1

    def alarm(_signum: int, _frame: object) -> None:
        raise Budget(f"the soak ran past its time budget of {budget:.0f}s")

    def terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # Setup (data, upload, seal, peak) + the load + the drain + verification: all bounded; this bounds the sum.
    budget = 1500 + cfg.duration_s + cfg.ack_deadline_s + 30
    signal.signal(signal.SIGALRM, alarm)
    signal.signal(signal.SIGTERM, terminate)
    signal.alarm(int(budget))
    try:
        res = run(cfg)
    finally:
        signal.alarm(0)
    paths = write_report(res, cfg.out)
    for a in res["assertions"]:
        print(f"{'PASS' if a['ok'] else 'FAIL'}  {a['name']}: {a['figure']}", file=sys.stderr)
    print(f"wrote {', '.join(str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p) for p in paths.values())}",
          file=sys.stderr)
    return 0 if all(a["ok"] for a in res["assertions"]) else 1


if __name__ == "__main__":
    sys.exit(main())
