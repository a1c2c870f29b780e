"""The load generator: an asyncio HTTP client in a process of its own, so the process that orchestrates the
benchmark (and its GIL) never sits between the server and the measured requests.

`run(spec)` starts `python -m bench.loadgen SPEC OUT` and reads back a `LoadResult`. In the child, `concurrency`
loops share one aiohttp session whose pool holds exactly `concurrency` connections; each loop sends a request,
waits for the answer and sends the next (closed loop). Every level is bounded twice: at most `max_requests`
measured requests and at most `max_seconds` of measuring, after an unmeasured warm-up of `warmup_s`.

Why aiohttp and not httpx: on this 2-core machine the client shares the CPU with the server it measures, so its
cost per request matters. Measured against a trivial FastAPI endpoint: httpx.AsyncClient spent 590-1,230 µs of
CPU per request (worse with a larger pool, httpx#3215) and topped out at 500-1,300 req/s; aiohttp 50-90 µs and
11,000-13,000 req/s. The benchmark reports the client's ceiling against the API's /healthz with every run.

Modes:
- `post`: POST a query body (`{"vector": [...], **template}`); a 200 is a success;
- `poll`: POST with `?wait=0` (a 202 with a job link), then long-poll `GET /v1/jobs/{id}?wait=30` until it ends;
- `get`: GET the url (the client's ceiling against a trivial endpoint such as /healthz);
- `write`: POST one vector as an upsert (`{"vectors": [row], "ids": ["lg<row>"], **template}`; the url carries
  `?wait=`); a 200 is a success. Rows are reused in turn, so a long level updates ids it wrote before.
With `collect`, each query vector is sent exactly once (in order of issue) and the ids of its hits come back.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.status import TERMINAL, JobStatus

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class LoadSpec:
    url: str
    mode: str = "post"  # post | poll | get | write
    concurrency: int = 1
    max_requests: int = 1000
    max_seconds: float = 5.0
    warmup_s: float = 0.5
    queries_path: str | None = None  # .npy of float32 query rows (post, poll)
    template: dict[str, Any] = field(default_factory=dict)  # merged into every query body
    collect: bool = False
    timeout_s: float = 60.0
    watch: dict[str, list[int]] = field(default_factory=dict)  # pids whose CPU to account, by group (bench.cpu)

    def __post_init__(self) -> None:
        if self.mode not in ("post", "poll", "get", "write"):
            raise ValueError(f"unknown load mode {self.mode!r}")


@dataclass
class LoadResult:
    concurrency: int
    requests: int  # measured successes
    errors: int
    warmup_requests: int
    elapsed_s: float
    qps: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None
    error_samples: list[str] = field(default_factory=list)
    cpu: dict[str, Any] | None = None  # measured window only: CPU ms per request by group, machine load
    ids: dict[int, list[str]] = field(default_factory=dict)  # query index -> hit ids (collect only)

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("ids")
        return out


# The child ----------------------------------------------------------------------------------------------
def _bodies(spec: LoadSpec) -> list[bytes]:
    if spec.mode == "get":
        return []
    import numpy as np
    import orjson

    queries = np.load(spec.queries_path) if spec.queries_path else np.zeros((1, 1), np.float32)
    if spec.mode == "write":
        return [orjson.dumps({"vectors": [row], "ids": [f"lg{i}"], **spec.template}, option=orjson.OPT_SERIALIZE_NUMPY)
                for i, row in enumerate(queries)]
    # Serialized once, up front: the loops only send bytes. orjson writes float32 exactly (shortest repr).
    return [orjson.dumps({"vector": row, **spec.template}, option=orjson.OPT_SERIALIZE_NUMPY) for row in queries]


class RequestFailed(Exception):
    pass


async def _one(session: Any, spec: LoadSpec, body: bytes | None) -> Any:
    """One request (or a POST and its polls). Returns the hits payload when collecting; raises on failure."""
    import orjson

    if spec.mode == "get":
        async with session.get(spec.url) as resp:
            data = await resp.read()
            if resp.status != 200:
                raise RequestFailed(f"HTTP {resp.status}: {data[:200]!r}")
            return None
    headers = {"content-type": "application/json"}
    if spec.mode in ("post", "write"):
        async with session.post(spec.url, data=body, headers=headers) as resp:
            data = await resp.read()
        if resp.status != 200:
            raise RequestFailed(f"HTTP {resp.status}: {data[:200]!r}")
        return orjson.loads(data) if spec.collect else None
    async with session.post(spec.url, data=body, headers=headers, params={"wait": "0"}) as resp:
        data = await resp.read()
    if resp.status != 202:
        raise RequestFailed(f"submit: HTTP {resp.status}: {data[:200]!r}")
    status_url = spec.url.split("/v1/")[0] + orjson.loads(data)["status_url"]
    while True:
        async with session.get(status_url, params={"wait": "30"}) as resp:
            data = await resp.read()
        if resp.status != 200:
            raise RequestFailed(f"poll: HTTP {resp.status}: {data[:200]!r}")
        job = orjson.loads(data)
        if job["status"] in TERMINAL:
            if job["status"] != JobStatus.SUCCEEDED:
                raise RequestFailed(f"job {job['status']}: {job.get('error')}")
            return job["result"]


async def _run(spec: LoadSpec) -> LoadResult:
    import aiohttp
    import numpy as np

    from bench.cpu import Meter

    bodies = _bodies(spec)
    latencies: list[float] = []
    ends: list[float] = []
    errors: list[str] = []
    ids: dict[int, list[str]] = {}
    issued = 0
    warmed = 0
    connector = aiohttp.TCPConnector(limit=spec.concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=spec.timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        measure_from = start + (0.0 if spec.collect else spec.warmup_s)
        deadline = measure_from + spec.max_seconds

        async def loop() -> None:
            nonlocal issued, warmed
            while True:
                now = time.perf_counter()
                measured = now >= measure_from
                if now >= deadline or (measured and issued >= spec.max_requests):
                    return
                n = issued if measured else -1
                if measured:
                    issued += 1
                body = bodies[n % len(bodies)] if bodies else None
                t0 = time.perf_counter()
                try:
                    payload = await _one(session, spec, body)
                except Exception as exc:  # counted and sampled; the loop goes on
                    if measured:
                        errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    continue
                t1 = time.perf_counter()
                warmed += not measured
                if measured:
                    latencies.append(t1 - t0)
                    ends.append(t1)
                    if spec.collect and payload is not None and n < len(bodies):
                        ids[n] = [hit["id"] for hit in payload["results"][0]]

        meter = Meter(spec.watch)
        own: list[float] = []

        async def start_meter() -> None:  # at the start of the measured window, not at the warm-up's
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            meter.start()
            own.append(time.process_time())

        metering = asyncio.ensure_future(start_meter())
        await asyncio.gather(*(loop() for _ in range(spec.concurrency)))
        await metering
        cpu = meter.stop(len(latencies), {"loadgen": time.process_time() - own[0]})
    elapsed = (max(ends) if ends else time.perf_counter()) - measure_from
    lat = np.asarray(latencies) * 1000

    def pct(q: float) -> float | None:
        return round(float(np.percentile(lat, q)), 3) if len(lat) else None

    return LoadResult(concurrency=spec.concurrency, requests=len(latencies), errors=len(errors), warmup_requests=warmed,
                      elapsed_s=round(elapsed, 3), qps=round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0,
                      p50_ms=pct(50), p90_ms=pct(90), p99_ms=pct(99),
                      mean_ms=round(float(lat.mean()), 3) if len(lat) else None,
                      max_ms=round(float(lat.max()), 3) if len(lat) else None,
                      error_samples=sorted(set(errors))[:5], cpu=cpu, ids=ids)


def main(argv: list[str]) -> int:
    spec = LoadSpec(**json.loads(Path(argv[0]).read_text()))
    try:
        import uvloop

        result = uvloop.run(_run(spec))
    except ImportError:
        result = asyncio.run(_run(spec))
    Path(argv[1]).write_text(json.dumps(asdict(result)))
    return 0


# The parent ---------------------------------------------------------------------------------------------
def run(spec: LoadSpec) -> LoadResult:
    """Run one bounded load level in a fresh child process and return what it measured."""
    with tempfile.TemporaryDirectory(prefix="vecq-loadgen-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(asdict(spec)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        budget = spec.warmup_s + spec.max_seconds + spec.timeout_s + 30
        proc = subprocess.run([sys.executable, "-m", "bench.loadgen", str(spec_path), str(out_path)], env=env,
                              cwd=ROOT, timeout=budget, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"load generator failed ({proc.returncode}): {proc.stderr[-2000:]}")
        raw = json.loads(out_path.read_text())
    raw["ids"] = {int(k): v for k, v in raw["ids"].items()}
    return LoadResult(**raw)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
