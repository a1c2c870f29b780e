"""The naive design users would otherwise pick: FAISS inside one FastAPI process.

`uvicorn bench.naive_server:app` (one process). At start-up it adds the benchmark's data to the index in one
call, as a user would (the id of row i is i). The endpoint is the textbook one: a plain `def` handler, which
FastAPI runs in its thread pool, calling `index.search` on one query. FAISS releases the GIL while it searches,
so this design does use both cores.

Configured by BENCH_NAIVE_CONFIG (a JSON file: vectors, index, ef_search); OMP threads come from
OMP_NUM_THREADS in the environment (set before faiss is imported).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

from vecq.stack import Proc, free_port

ROOT = Path(__file__).resolve().parent.parent


class Query(BaseModel):
    vector: list[float]
    k: int = 10


def create_app() -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import faiss  # here, not at import: the benchmark imports this module to start the server

        from bench.inprocess import build

        cfg = json.loads(Path(os.environ["BENCH_NAIVE_CONFIG"]).read_text())
        app.state.index = build(faiss, np, np.load(cfg["vectors"]), cfg["index"], int(cfg["ef_search"]))
        app.state.omp_threads = faiss.omp_get_max_threads()
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "omp_threads": app.state.omp_threads}

    @app.post("/search")
    def search(query: Query) -> dict[str, Any]:
        distances, labels = app.state.index.search(np.asarray([query.vector], dtype=np.float32), query.k)
        return {"results": [[{"id": str(int(pos)), "score": float(d)}
                             for d, pos in zip(distances[0], labels[0], strict=True) if pos >= 0]]}

    return app


app = create_app()


def start(config_path: Path, log_path: Path, omp_threads: int | None = 1, timeout: float = 300) -> tuple[Proc, str]:
    """Start the naive server on a free loopback port; returns once /healthz answers (the index is loaded)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if omp_threads is not None:
        env["OMP_NUM_THREADS"] = str(omp_threads)
    env["BENCH_NAIVE_CONFIG"] = str(config_path)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-m", "uvicorn", "bench.naive_server:app", "--host", "127.0.0.1", "--port", str(port),
            "--no-access-log", "--log-level", "warning"]
    out = open(log_path, "ab")  # noqa: SIM115 - the child owns it
    proc = Proc("naive", subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=out, start_new_session=True),
                log_path)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"naive server exited during start-up; see {log_path}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.stop()
    raise TimeoutError(f"naive server not ready after {timeout:.0f}s; see {log_path}")
