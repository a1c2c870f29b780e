"""The references the latency section (bench/latency.py) measures vecq against, in the same run:

- `celery_app`: a bare Celery app with one `noop` task. Same Redis server as the stack under test, its own queue
  (BARE_QUEUE: vecq's workers never take it), Redis broker and result backend, and vecq's own broker settings
  (JSON, late acks, prefetch 1: common/celery_app.py), so the reference pays what Celery costs as vecq uses it.
  Its worker runs as vecq's do: prefork, concurrency 1, no gossip/mingle/heartbeat (`worker_argv`).
- `fastapi_app`: a bare FastAPI app with one JSON POST endpoint that validates a search-like body with a plain
  pydantic model and answers a search-like JSON (k hits), served by uvicorn with api/serve.py's options
  (`uvicorn_argv`): the CPU per request any FastAPI endpoint of that shape costs.

The broker URL comes from BARE_REDIS_URL, read when this module is imported (in the worker and in the bench).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from celery import Celery
from fastapi import FastAPI
from pydantic import BaseModel, Field

BARE_QUEUE = "vecq-bench-bare"
NOOP = "bench.bare.noop"


def make_celery(url: str) -> Celery:
    app = Celery("vecq-bench-bare", broker=url, backend=url)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    result_accept_content=["json"], task_acks_late=True, worker_prefetch_multiplier=1,
                    task_default_queue=BARE_QUEUE, worker_send_task_events=False, task_send_sent_event=False,
                    worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)
    app.task(name=NOOP)(noop)
    return app


def noop() -> int:
    return 0


celery_app = make_celery(os.environ.get("BARE_REDIS_URL", "redis://127.0.0.1:6379/0"))


def worker_argv(hostname: str) -> list[str]:
    """The bare worker's command line: as vecq.stack.Stack.start_worker starts vecq's."""
    return [sys.executable, "-m", "celery", "-A", "bench.bare:celery_app", "worker", "--pool", "prefork",
            "--concurrency", "1", "--queues", BARE_QUEUE, "--hostname", hostname, "--loglevel", "WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat"]


# The bare FastAPI endpoint --------------------------------------------------------------------------------------
class BareSearch(BaseModel):
    vector: list[float] = Field(min_length=1)
    k: int = Field(10, ge=1)


fastapi_app = FastAPI()


@fastapi_app.post("/search")
async def bare_search(body: BareSearch) -> dict[str, Any]:
    hits = [{"id": str(i), "score": float(i) + body.vector[0]} for i in range(body.k)]
    return {"results": [hits], "lsn": "0-0", "took_ms": 0.0, "worker": "bare", "plan": "index"}


def uvicorn_argv(port: int) -> list[str]:
    """uvicorn with api/serve.py's options: loop and http left at `auto` (uvloop, httptools when installed), no
    access log, one process."""
    return [sys.executable, "-m", "uvicorn", "bench.bare:fastapi_app", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--no-access-log"]
