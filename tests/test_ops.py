"""Issue 9: operations — /metrics, /v1/workers, graceful shutdown, job log lines, `vecq status`, compose files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from api.ops import CollectionState, caught_up, lag_seconds, lsn_seconds
from common import jobs
from common.celery_app import make_celery
from common.collections import Collection
from common.logs import JsonFormatter
from common.settings import Settings
from tests.conftest import TEST_ENV, log_of
from tests.helpers import add, search, wait_job
from vecq.stack import ROOT, Stack

HEARTBEAT_TTL_S = float(TEST_ENV["VECQ_HEARTBEAT_TTL_S"])
HEARTBEAT_INTERVAL_S = float(TEST_ENV["VECQ_HEARTBEAT_INTERVAL_S"])

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(api: httpx.Client) -> Samples:
    resp = api.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def matching(samples: Samples, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    return [(dict(lbl), v) for (n, lbl), v in samples.items()
            if n == name and all(dict(lbl).get(k) == want for k, want in labels.items())]


def poll(check: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(every)


# /metrics ----------------------------------------------------------------------------------------------------


def test_metrics_count_jobs_and_show_lag(api: httpx.Client, make_collection) -> None:  # type: ignore[no-untyped-def]
    before = scrape(api)
    started = time.time()
    name = make_collection(dim=8)
    rng = np.random.default_rng(9)
    add(api, name, rng.standard_normal((30, 8)))
    search(api, name, rng.standard_normal((1, 8)), k=3)  # one worker now holds a caught-up copy
    time.sleep(0.5)
    add(api, name, rng.standard_normal((20, 8)))  # ... and is 0.5 s of writes behind after this one
    assert api.post(f"/v1/collections/{name}/vectors", json={"vectors": [[1.0]]}).status_code == 422

    def lagging() -> Samples | None:
        s = scrape(api)
        return s if any(v > 0 for _, v in matching(s, "vecq_worker_lag_seconds", collection=name)) else None

    after = poll(lagging, timeout=5)
    assert after, "no worker copy of the collection reported a lag"
    elapsed = time.time() - started

    # Jobs, counted across workers in Redis: at least ours (other tests may run jobs too).
    for job_type, n in (("add", 2), ("search", 1), ("create_collection", 1)):
        key = {"type": job_type, "status": "succeeded"}
        assert value(after, "vecq_jobs_total", **key) - value(before, "vecq_jobs_total", **key) >= n, job_type
        assert value(after, "vecq_job_duration_seconds_count", **key) >= value(after, "vecq_jobs_total", **key)
        assert value(after, "vecq_job_duration_seconds_sum", **key) > 0

    # HTTP, per route template and status, with a latency histogram.
    route = {"handler": "/v1/collections/{name}/vectors", "method": "POST"}
    assert value(after, "vecq_http_requests_total", **route, status="200") - \
        value(before, "vecq_http_requests_total", **route, status="200") >= 2
    assert value(after, "vecq_http_requests_total", **route, status="422") >= 1
    count = value(after, "vecq_http_request_duration_seconds_count", **route, status="200")
    assert count >= 2 and value(after, "vecq_http_request_duration_seconds_bucket", **route, status="200",
                                le="+Inf") == count
    assert not matching(after, "vecq_http_requests_total", handler="/metrics")

    # Lag: the copy that searched after the first add misses the writes of the second one, 0.5 s later.
    lags = matching(after, "vecq_worker_lag_seconds", collection=name)
    assert all(0 <= v <= elapsed for _, v in lags), lags
    assert max(v for _, v in lags) >= 0.45, lags
    assert value(after, "vecq_collection_lag_seconds", collection=name) == max(v for _, v in lags)

    # Per collection: vectors, and index bytes (Flat: 4 bytes per float, exactly) of a copy that holds 30 of 50.
    assert value(after, "vecq_collection_vectors", collection=name) == 50
    assert value(after, "vecq_collection_index_bytes", collection=name) == 30 * 8 * 4
    assert value(after, "vecq_collection_last_write_timestamp_seconds", collection=name) >= started - 1
    assert value(after, "vecq_workers") >= 3
    assert ("vecq_queue_depth", frozenset({("queue", "vecq")})) in after
    assert value(after, "vecq_queue_depth", queue="vecq") >= 0 and value(after, "vecq_queue_unacked") >= 0

    # A strong search catches a copy up: some worker reports lag 0 on its next beat.
    search(api, name, rng.standard_normal((1, 8)), k=3)
    caught = poll(lambda: any(v == 0 for _, v in matching(scrape(api), "vecq_worker_lag_seconds",
                                                           collection=name)), timeout=5)
    assert caught


def test_lag_definition() -> None:
    col = Collection(name="c", uid="u", dim=4, metric="l2", index="Flat", created_at=1000.0)
    state = CollectionState(col, count=3, last_lsn="1005500-2")
    assert lsn_seconds("1005500-2") == 1005.5 and lsn_seconds("0-0") == 0.0
    assert lag_seconds("1005500-2", state) == 0.0 and caught_up("1005500-2", state)
    assert lag_seconds("1005000-0", state) == 0.5 and not caught_up("1005000-0", state)
    assert lag_seconds("1005500-1", state) == 0.0 and not caught_up("1005500-1", state)  # same ms, behind
    assert lag_seconds("0-0", state) == 5.5  # nothing applied: counted from the collection's creation
    assert lag_seconds("0-0", CollectionState(col, count=0, last_lsn="0-0")) == 0.0


# /v1/workers -------------------------------------------------------------------------------------------------


def parent_pid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


def test_workers_endpoint_and_a_killed_worker_dropping_out(new_stack) -> None:  # type: ignore[no-untyped-def]
    s: Stack = new_stack(workers=2, env={"VECQ_API_KEYS": "admin,limited:other-*:ro"})
    admin = httpx.Client(base_url=s.api_url or "", timeout=30, headers={"Authorization": "Bearer admin"})
    limited = httpx.Client(base_url=s.api_url or "", timeout=30, headers={"X-API-Key": "limited"})
    name = f"ops-{uuid.uuid4().hex[:8]}"
    assert admin.post("/v1/collections", json={"name": name, "dim": 4}).status_code == 201
    add(admin, name, np.eye(4))
    search(admin, name, np.eye(4)[:1], k=1)

    def listing(client: httpx.Client = admin) -> dict[str, Any]:
        resp = client.get("/v1/workers")
        assert resp.status_code == 200, resp.text
        return resp.json()

    def holding() -> dict[str, Any] | None:
        got = listing()
        return got if any(c["name"] == name for w in got["workers"] for c in w["collections"]) else None

    body = poll(holding, timeout=5)
    assert body, listing()
    assert len(body["workers"]) == 2 and body["queues"] == {"vecq": 0}
    for w in body["workers"]:
        assert w["host"] and w["pid"] > 0 and 0 < w["uptime_s"] < 120 and w["started_at"] < time.time()
        assert parent_pid(w["pid"]) in {p.pid for p in s.workers}  # the heartbeat is the pool child's
    holder = next(w for w in body["workers"] if w["collections"])
    copy = holder["collections"][0]
    assert copy["name"] == name and copy["count"] == 4 and copy["lag_s"] == 0 and copy["caught_up"]
    assert copy["index_bytes"] == 4 * 4 * 4 and copy["applied_lsn"] != "0-0"
    assert holder["jobs_done"] >= 1 and holder["last_job"]["status"] == "succeeded"

    # Auth like every /v1 route; a key limited to other-* sees the workers but not this collection.
    assert httpx.get(f"{s.api_url}/v1/workers").status_code == 401
    seen = listing(limited)
    assert len(seen["workers"]) == 2 and not any(w["collections"] for w in seen["workers"])
    assert all((w["last_job"] or {}).get("collection") in (None, "") for w in seen["workers"])

    # SIGKILL one worker (main process and pool child): no goodbye, so only the TTL can make it drop out.
    victim, survivor = s.workers
    victim.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    victim.popen.wait(10)
    gone = poll(lambda: len(listing()["workers"]) == 1, timeout=HEARTBEAT_TTL_S + 5, every=0.05)
    dropped_after = time.monotonic() - killed_at
    assert gone, listing()
    # Its last beat was at most one interval before the kill; it drops out once that beat is TTL old.
    assert dropped_after <= HEARTBEAT_TTL_S + HEARTBEAT_INTERVAL_S + 1.0, dropped_after
    left = listing()["workers"][0]
    assert parent_pid(left["pid"]) == survivor.pid
    print(f"killed worker dropped out of /v1/workers after {dropped_after:.2f}s (TTL {HEARTBEAT_TTL_S}s)")


# Graceful shutdown and JSON job logs -------------------------------------------------------------------------


def submit(celery_app: Any, r: redis.Redis, task: str, kwargs: dict[str, Any], job_type: str) -> str:
    """Send a task the way the API does: the job record first, then the message (the task id is the job id)."""
    job_id = uuid.uuid4().hex
    jobs.create(r, job_id, job_type, None, ttl=3600)
    celery_app.send_task(task, kwargs=kwargs, task_id=job_id, queue="vecq")
    return job_id


def test_sigterm_lets_the_worker_finish_its_job_and_leaves_the_queue(new_stack) -> None:  # type: ignore[no-untyped-def]
    s: Stack = new_stack(workers=1, env={"VECQ_LOG_JSON": "1"})
    api = httpx.Client(base_url=s.api_url or "", timeout=30)
    r = redis.Redis.from_url(s.redis_url or "")
    celery_app = make_celery(Settings(redis_url=s.redis_url))
    slow = submit(celery_app, r, "vecq.test.sleep", {"seconds": 3}, "sleep")
    assert poll(lambda: api.get(f"/v1/jobs/{slow}").json()["status"] == "running", timeout=10)
    queued = [submit(celery_app, r, "vecq.test.sleep", {"seconds": 0.01}, "sleep") for _ in range(2)]

    worker = s.workers[0]
    os.kill(worker.pid, signal.SIGTERM)  # what `docker stop` does: the main process only
    termed = time.monotonic()
    worker.popen.wait(30)
    took = time.monotonic() - termed

    finished = api.get(f"/v1/jobs/{slow}").json()
    assert finished["status"] == "succeeded" and finished["result"] == {"slept": 3}, finished
    assert finished["finished_at"] - finished["started_at"] >= 3
    for job_id in queued:
        assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    status = api.get("/v1/workers").json()
    assert status["queues"] == {"vecq": 2} and status["unacked"] == 0, status
    print(f"worker exited {took:.2f}s after SIGTERM, its running job finished, 2 jobs left queued")

    # The job's log line, as JSON, with what an operator needs to find it.
    lines = [json.loads(line) for line in log_of(s, "worker1").splitlines() if line.startswith("{")]
    mine = [x for x in lines if x.get("job_id") == slow]
    assert len(mine) == 1, lines
    line = mine[0]
    assert line["type"] == "sleep" and line["status"] == "succeeded" and line["logger"] == "vecq.jobs"
    assert line["duration_ms"] >= 3000 and line["worker"] and "collection" in line and line["ts"]

    # The queued jobs were never lost: the next worker runs them.
    s.start_worker(2)
    for job_id in queued:
        assert wait_job(api, job_id, timeout=60)["status"] == "succeeded"


def test_plain_job_log_line(stack: Stack, api: httpx.Client, make_collection) -> None:  # type: ignore[no-untyped-def]
    name = make_collection(dim=4)
    job = add(api, name, np.eye(4))
    job_id = api.post(f"/v1/collections/{name}/vectors", params={"wait": 0},
                      json={"vectors": [[1, 2, 3, 4]]}).json()["job_id"]
    assert wait_job(api, job_id)["status"] == "succeeded" and job["count"] == 4

    def logged() -> str | None:
        text = "".join(log_of(stack, f"worker{i}") for i in range(1, 4))
        return next((ln for ln in text.splitlines() if f"job={job_id} " in ln), None)

    line = poll(logged, timeout=5)
    assert line and f"type=add collection={name} status=succeeded duration_ms=" in line and " worker=" in line


def test_json_formatter_spreads_extras() -> None:
    import logging

    record = logging.LogRecord("vecq.jobs", logging.INFO, __file__, 1, "job=%s", ("j1",), None)
    record.job = {"job_id": "j1", "type": "add", "collection": "c", "duration_ms": 1.5}
    record.worker = "host-1"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "job=j1" and line["level"] == "INFO" and line["logger"] == "vecq.jobs"
    assert (line["job_id"], line["type"], line["collection"], line["duration_ms"], line["worker"]) == \
        ("j1", "add", "c", 1.5, "host-1")


# vecq status --------------------------------------------------------------------------------------------------


def test_vecq_status_prints_collections_workers_and_queue(stack: Stack, api: httpx.Client,
                                                          make_collection) -> None:  # type: ignore[no-untyped-def]
    name = make_collection(dim=4)
    add(api, name, np.eye(4))
    search(api, name, np.eye(4)[:1], k=1)
    workers = api.get("/v1/workers").json()["workers"]
    env = {**os.environ, "COLUMNS": "220", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "vecq.cli", "status", "--url", stack.api_url or ""], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Collections" in out.stdout and name in out.stdout
    assert f"Workers ({len(workers)} live)" in out.stdout
    assert all(w["worker"] in out.stdout for w in workers)
    assert "Queues" in out.stdout and "vecq" in out.stdout

    down = subprocess.run([sys.executable, "-m", "vecq.cli", "status", "--url", "http://127.0.0.1:9"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and "cannot reach" in down.stderr  # errors go to stderr, one line


# Docker ---------------------------------------------------------------------------------------------------------


def test_compose_file_and_dockerfile() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "api", "worker", "flower"}

    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--maxmemory-policy noeviction" in redis_cmd
    assert any(v.endswith(":/data") and v.split(":")[0] in compose["volumes"] for v in services["redis"]["volumes"])

    worker = services["worker"]
    assert worker["deploy"]["replicas"] == 2
    assert worker["command"][:4] == ["celery", "-A", "worker", "worker"]
    argv = worker["command"]
    assert argv[argv.index("--concurrency") + 1] == "1" and argv[argv.index("--pool") + 1] == "prefork"
    snapshot_mount = next(v for v in worker["volumes"] if v.endswith(":/data"))
    assert snapshot_mount.split(":")[0] in compose["volumes"]  # a named volume all replicas share
    assert worker["environment"]["VECQ_DATA_DIR"] == "/data"
    assert worker["healthcheck"]["test"][-2:] == ["vecq.probe", "worker"]

    api = services["api"]
    assert api["command"][:3] == ["python", "-m", "api.serve"] and "0.0.0.0" in api["command"]
    assert api["environment"]["VECQ_REDIS_URL"] == "redis://redis:6379/0"
    assert "redis://redis:6379/0" in services["flower"]["command"] and "flower" in services["flower"]["command"]

    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    assert "USER vecq" in final_stage and "HEALTHCHECK" in final_stage
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored

    # The real validator, where this machine has one (.ci/run runs `docker compose config` too).
    for argv in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(argv[0]) and subprocess.run([*argv, "version"], capture_output=True).returncode == 0:
            checked = subprocess.run([*argv, "config", "--quiet"], cwd=ROOT, capture_output=True, text=True)
            assert checked.returncode == 0, checked.stderr
            break


@pytest.mark.parametrize("what", ["api", "worker"])
def test_probe_fails_without_a_service(what: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VECQ_PROBE_URL": "http://127.0.0.1:9",
           "VECQ_REDIS_URL": "redis://127.0.0.1:9/0"}
    out = subprocess.run([sys.executable, "-m", "vecq.probe", what], cwd=tmp_path, env=env, capture_output=True,
                         timeout=60)
    assert out.returncode == 1


def test_probe_passes_against_the_stack(stack: Stack) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VECQ_PROBE_URL": stack.api_url or "",
           "VECQ_REDIS_URL": stack.redis_url or "", "VECQ_HEARTBEAT_TTL_S": TEST_ENV["VECQ_HEARTBEAT_TTL_S"]}
    for what in ("api", "worker"):
        out = subprocess.run([sys.executable, "-m", "vecq.probe", what], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, (what, out.stderr)


def test_metrics_can_require_a_key_allowed_on_every_collection(new_stack) -> None:  # type: ignore[no-untyped-def]
    """/metrics names every collection: with VECQ_METRICS_NEED_KEY it is refused without a key (401) and to a key
    limited to some collections (403), and served to a key allowed on all of them."""
    s = new_stack(workers=1, env={"VECQ_API_KEYS": "admin,team:team-*:rw", "VECQ_METRICS_NEED_KEY": "1"})
    with httpx.Client(base_url=s.api_url or "", timeout=30) as api:
        assert api.post("/v1/collections", json={"name": "team-m", "dim": 2},
                        headers={"X-API-Key": "team"}).status_code == 201
        assert api.get("/metrics").status_code == 401
        limited = api.get("/metrics", headers={"X-API-Key": "team"})
        assert limited.status_code == 403 and limited.json()["error"]["code"] == "forbidden"
        full = api.get("/metrics", headers={"X-API-Key": "admin"})
        assert full.status_code == 200 and 'vecq_collection_rows{collection="team-m",part="growing"} 0.0' in full.text
        assert api.get("/healthz").status_code == 200
