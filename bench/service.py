"""Driving vecq for the benchmark: the stack (via vecq.stack.Stack, exactly as `vecq up` starts it), collections,
the two ingest paths, warming every worker's copy, and restarting the API or the workers with other settings."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from signal import SIGTERM
from typing import Any

import httpx
import numpy as np
import orjson
import redis

from common.status import TERMINAL, JobStatus
from vecq.stack import Stack

# Automatic seals out of reach: the benchmark seals each collection itself, once, after its ingest, so that every
# index it measures is one segment built with one add of all rows in log order, which the in-process baseline
# rebuilds exactly (HNSW's graph depends on the order). An automatic seal racing the last JSON batches could leave
# two segments or a growing tail instead. The segments section (bench/segments.py) sets its own.
NO_AUTO_SEAL = {"VECQ_SEAL_EVERY_ROWS": str(10**12), "VECQ_SEAL_EVERY_BYTES": str(1 << 60)}
BENCH_ENV = {**NO_AUTO_SEAL, "VECQ_LOG_JSON": "0"}


UPLOAD_PIECE_BYTES = 1 << 20  # what the benchmark's upload hands the socket at a time


def npy_chunks(vectors: np.ndarray) -> tuple[Iterator[bytes], int]:
    """`vectors` as a .npy file in pieces (the header, then 1 MiB of rows at a time), and its size."""
    array = np.ascontiguousarray(vectors)
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(array))
    header = head.getvalue()
    raw = memoryview(array).cast("B")

    def pieces() -> Iterator[bytes]:
        yield header
        for start in range(0, len(raw), UPLOAD_PIECE_BYTES):
            yield bytes(raw[start:start + UPLOAD_PIECE_BYTES])  # 1 MiB copied once, not the rest each send

    return pieces(), len(header) + len(raw)


@dataclass
class Vecq:
    data_dir: Path
    workers: int
    api_processes: int = 1
    env: dict[str, str] = field(default_factory=dict)
    stack: Stack | None = None
    http: httpx.Client | None = None
    api_env: dict[str, str] = field(default_factory=dict)
    worker_env: dict[str, str] = field(default_factory=dict)

    # Processes ---------------------------------------------------------------------------------------------
    def start(self, api_env: Mapping[str, str] | None = None, worker_env: Mapping[str, str] | None = None) -> None:
        self.stack = Stack(data_dir=self.data_dir, env={**BENCH_ENV, **self.env}, log_dir=self.data_dir / "logs")
        self.stack.start_redis()
        self.worker_env = dict(worker_env or {})
        for i in range(self.workers):
            self.stack.start_worker(i + 1, extra_env=self.worker_env)
        self.start_api(api_env)

    def start_api(self, api_env: Mapping[str, str] | None = None) -> None:
        assert self.stack is not None
        if self.stack.api is not None:
            self.stack.api.stop()
        self.api_env = dict(api_env or {})
        # As `vecq up` does: the API sizes its coalescing by the workers and its own processes.
        sizing = {"VECQ_WORKERS": str(self.workers), "VECQ_API_PROCESSES": str(self.api_processes)}
        self.stack.start_api(processes=self.api_processes, extra_env={**sizing, **self.api_env})
        self.stack.wait_ready(timeout=120, workers=self.workers)
        if self.http is not None:
            self.http.close()
        self.http = httpx.Client(base_url=self.url, timeout=600)

    def restart_workers(self, worker_env: Mapping[str, str] | None = None, count: int | None = None,
                        wait: bool = True) -> None:
        """New worker processes (`count` of them, default as many as before) with other settings; each loads
        every collection again at start."""
        assert self.stack is not None
        self.stop_workers()
        self.worker_env = dict(worker_env or {})
        self.workers = count or self.workers
        for i in range(self.workers):
            self.stack.start_worker(i + 1, extra_env=self.worker_env)
        if wait:
            self.stack.wait_ready(timeout=300, workers=self.workers)

    def stop_workers(self) -> None:
        """SIGTERM to every worker (a running job finishes, the queue stays), then their process groups go."""
        assert self.stack is not None
        for w in self.stack.workers:
            w.signal(SIGTERM)
        for w in self.stack.workers:
            w.stop(timeout=30)
        self.stack.workers.clear()

    def stop(self) -> None:
        if self.http is not None:
            self.http.close()
        if self.stack is not None:
            self.stack.stop()

    def pids(self) -> dict[str, list[int]]:
        """The processes whose CPU a load level accounts (bench.cpu): API, workers (with pool children), Redis."""
        from bench.cpu import tree

        assert self.stack is not None and self.stack.api is not None and self.stack.redis_proc is not None
        return {"api": tree(self.stack.api.pid), "workers": [p for w in self.stack.workers for p in tree(w.pid)],
                "redis": [self.stack.redis_proc.pid]}

    def redis_calls(self) -> dict[str, int]:
        """Redis's own count of calls per command (INFO commandstats): round trips per request, whatever the load."""
        assert self.stack is not None
        r = redis.Redis.from_url(self.stack.redis_url or "")
        try:
            return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in r.info("commandstats").items()}
        finally:
            r.close()

    @property
    def url(self) -> str:
        assert self.stack is not None and self.stack.api_url
        return self.stack.api_url

    @property
    def client(self) -> httpx.Client:
        assert self.http is not None
        return self.http

    def logs(self) -> str:
        tails = []
        for path in sorted((self.data_dir / "logs").glob("*.log")):
            tails.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-20:]))
        return "\n".join(tails)

    # Collections -------------------------------------------------------------------------------------------
    def create(self, name: str, dim: int, index: str) -> None:
        resp = self.client.post("/v1/collections", json={"name": name, "dim": dim, "metric": "l2", "index": index},
                                params={"wait": 120})  # a worker probes the spec first: a trained one trains
        if resp.status_code == 202:
            self.finish(resp, f"create {name} ({index})")
        elif resp.status_code != 201:
            raise RuntimeError(f"create {name} ({index}): HTTP {resp.status_code} {resp.text[:300]}")

    def delete(self, name: str) -> None:
        self.client.delete(f"/v1/collections/{name}")

    def finish(self, resp: httpx.Response, what: str) -> dict[str, Any]:
        """A write's finished job: 200 at once, or a 202 whose job is long-polled to the end."""
        if resp.status_code == 202:
            url = resp.json()["status_url"]
            while True:
                job = self.client.get(url, params={"wait": 60}).json()
                if job["status"] in TERMINAL:
                    break
            if job["status"] != JobStatus.SUCCEEDED:
                raise RuntimeError(f"{what}: job {job['status']}: {job.get('error')}")
            return dict(job.get("result") or {})
        if resp.status_code != 200:
            raise RuntimeError(f"{what}: HTTP {resp.status_code} {resp.text[:300]}")
        body = resp.json()
        return dict(body.get("result", body))

    def ingest_json(self, name: str, vectors: np.ndarray, batch: int, inflight: int = 2) -> dict[str, Any]:
        """All rows as JSON batches (ids = row numbers), `inflight` requests at a time, each waiting for its job.
        The rate counts from the first request to the last job done: durable in the WAL, not yet in any index."""
        bodies = [orjson.dumps({"vectors": vectors[s : s + batch], "ids": [str(i) for i in range(s, s + len(
            vectors[s : s + batch]))]}, option=orjson.OPT_SERIALIZE_NUMPY) for s in range(0, len(vectors), batch)]

        def send(body: bytes) -> None:
            resp = self.client.post(f"/v1/collections/{name}/vectors", params={"wait": 300}, content=body,
                                    headers={"content-type": "application/json"})
            self.finish(resp, f"JSON ingest into {name}")

        started = time.perf_counter()
        with ThreadPoolExecutor(inflight) as pool:
            list(pool.map(send, bodies))
        seconds = time.perf_counter() - started
        return {"format": "json", "vectors": len(vectors), "requests": len(bodies), "batch": batch,
                "inflight": inflight, "mb": round(sum(map(len, bodies)) / 1e6, 1), "seconds": round(seconds, 3),
                "vectors_per_s": round(len(vectors) / seconds, 1)}

    def ingest_npy(self, name: str, vectors: np.ndarray, id_prefix: str | None = None,
                   stamps: dict[str, float] | None = None) -> dict[str, Any]:
        """The whole matrix as one .npy upload (`Content-Type: application/x-npy`); ids are generated, or
        `id_prefix` + row number. `stamps` gets `started` and `acked` (time.perf_counter): from the upload's first
        byte to the acknowledgment that every row is durable in the log."""
        chunks, size = npy_chunks(vectors)
        params: dict[str, Any] = {"wait": 300}
        if id_prefix is not None:
            params["id_prefix"] = id_prefix
        started = time.perf_counter()
        # Streamed from the array in pieces: given one bytes object, httpx copied what was left of it on every
        # partial send, which made the benchmark's own client most of a 512 MB upload's time.
        resp = self.client.post(f"/v1/collections/{name}/vectors", params=params, content=chunks,
                                headers={"content-type": "application/x-npy", "content-length": str(size)})
        if resp.status_code in (400, 413, 415, 422):  # not supported (yet) by this build, or refused: say so
            return {"format": "npy", "status": "n/a", "reason": f"HTTP {resp.status_code}: {resp.text[:200]}"}
        result = self.finish(resp, f"npy ingest into {name}")
        acked = time.perf_counter()
        if stamps is not None:
            stamps.update(started=started, acked=acked)
        seconds = acked - started
        count = int(result.get("count", len(vectors)))
        return {"format": "npy", "vectors": count, "requests": 1, "mb": round(size / 1e6, 1),
                "seconds": round(seconds, 3), "vectors_per_s": round(count / seconds, 1)}

    def seal(self, name: str, timeout: float = 1800) -> dict[str, Any]:
        """Seal now, as production does after an ingest (automatically past VECQ_SEAL_EVERY_ROWS, or at the end of
        an upload): the log since the newest seal becomes one segment of the collection's spec, built with one
        add, that every worker maps. Returns the seal job's result ({"sealed", "segment", "rows", "seconds",
        "lsn", ...})."""
        resp = self.client.post(f"/v1/collections/{name}/seal", params={"wait": min(timeout, 300)})
        result = self.finish(resp, f"seal of {name}")
        if not result.get("sealed") and "nothing written" not in str(result.get("reason", "")):
            raise RuntimeError(f"seal of {name} did not seal: {result}")
        return result

    def collection(self, name: str) -> dict[str, Any]:
        resp = self.client.get(f"/v1/collections/{name}")
        if resp.status_code != 200:
            raise RuntimeError(f"GET collection {name}: HTTP {resp.status_code} {resp.text[:300]}")
        return dict(resp.json())

    def workers_view(self) -> list[dict[str, Any]]:
        """`GET /v1/workers`: every live worker child with its memory and its copies (sealed/growing rows, load_s)."""
        resp = self.client.get("/v1/workers")
        if resp.status_code != 200:
            raise RuntimeError(f"GET /v1/workers: HTTP {resp.status_code} {resp.text[:300]}")
        return list(resp.json()["workers"])

    @property
    def segment_store(self) -> Path:
        """Where the workers write segments (worker/segment_files.py root): the bench's stack shares its data dir."""
        configured = {**BENCH_ENV, **self.env}.get("VECQ_SEGMENT_DIR")
        return Path(configured) if configured else self.data_dir / "segments"

    def warm(self, name: str, body: Mapping[str, Any], timeout: float = 600) -> dict[str, Any]:
        """Search until every worker has answered, i.e. replayed the collection's WAL into its own index. The time
        is what a freshly ingested collection costs before every worker serves it at full speed."""
        seen: set[str] = set()
        started = time.perf_counter()
        first_ms = None
        payload = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)

        def one() -> str | None:
            resp = self.client.post(f"/v1/collections/{name}/search", content=payload, params={"wait": 300},
                                    headers={"content-type": "application/json"})
            if resp.status_code != 200:
                raise RuntimeError(f"warm-up search on {name}: HTTP {resp.status_code} {resp.text[:300]}")
            return resp.json().get("worker")

        with ThreadPoolExecutor(2 * self.workers) as pool:
            while len(seen) < self.workers and time.perf_counter() - started < timeout:
                answers = list(pool.map(lambda _: one(), range(2 * self.workers)))
                first_ms = first_ms if first_ms is not None else (time.perf_counter() - started) * 1000
                seen.update(a for a in answers if a)
                if not any(answers) and self.loaded_everywhere(name):
                    break
        return {"seconds": round(time.perf_counter() - started, 3), "workers_answered": len(seen)}

    def loaded_everywhere(self, name: str) -> bool:
        """From the heartbeats (fallback when answers do not name their worker): every worker holds `name`."""
        from common import keys

        r = redis.Redis.from_url(self.stack.redis_url or "")  # type: ignore[union-attr]
        try:
            wids = [w.decode() for w in r.zrange(keys.WORKERS, 0, -1)]
            beats = [json.loads(raw) for raw in r.mget([keys.heartbeat(w) for w in wids]) if raw] if wids else []
        finally:
            r.close()
        return len(beats) >= self.workers and all(name in (b.get("collections") or {}) for b in beats)

    def row_order(self, name: str) -> tuple[np.ndarray, list[int]]:
        """The collection's rows (ids are row numbers) in the order its segments hold them, and the rows of each
        segment, read from the segment store (ids.bin, ids_offsets.npy) without faiss; then the log written since
        the newest seal, as one more part. A seal writes a segment's live rows in log order and trims the log to
        what the segments cover: this reads both sides of that line, so it holds whatever was sealed. Read-only."""
        from common import collections, segments

        assert self.stack is not None
        r = redis.Redis.from_url(self.stack.redis_url or "")
        try:
            col = collections.get(r, name)
            for _ in range(5):  # a seal committing between the manifest read and the log read: read again
                manifest = segments.read(r, col)
                rows: list[int] = []
                parts: list[int] = []
                for info in manifest.segments:
                    path = self.segment_store / col.name / col.uid / info.id
                    blob = (path / "ids.bin").read_bytes()
                    offsets = np.load(path / "ids_offsets.npy").tolist()
                    rows.extend(int(blob[offsets[i]:offsets[i + 1]]) for i in range(len(offsets) - 1))
                    parts.append(len(offsets) - 1)
                tail = self._log_rows(r, col, manifest.sealed_lsn)
                if tail is not None:
                    rows.extend(tail)
                    return np.asarray(rows, dtype=np.int64), parts + ([len(tail)] if tail else [])
        finally:
            r.close()
        raise RuntimeError(f"the segments of {name} kept changing while the benchmark read them")

    @staticmethod
    def _log_rows(r: redis.Redis, col: Any, after: str) -> list[int] | None:
        """Row numbers of the adds in the log after `after`; None if the log was trimmed past it meanwhile."""
        from common import wal

        rows: list[int] = []
        while True:
            trimmed, entries = wal.read_after(r, col, after, 64)
            if wal.needs_reload(after, trimmed):
                return None
            for entry in entries:
                if entry.op != "add":
                    raise RuntimeError(f"unexpected {entry.op} entry in the benchmark's log")
                rows.extend(int(i) for i in entry.ids)
                after = entry.lsn
            if len(entries) < 64:
                return rows
