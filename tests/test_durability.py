"""Issue 5: durability. Real processes only: private stacks (redis-server with AOF, Celery workers, the API),
SIGKILL of real pool children, Redis stopped and started again on the same AOF."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis

from common import jobs, keys
from common.celery_app import ADD, POISON, make_celery
from common.codec import encode_vectors
from common.settings import Settings
from tests.conftest import log_of
from tests.helpers import pool_children
from vecq.stack import ROOT, Proc, Stack, free_port

# ---------------------------------------------------------------------------------------------------------
# helpers


def client(s: Stack) -> httpx.Client:
    return httpx.Client(base_url=s.api_url or "", timeout=60)


def create(api: httpx.Client, name: str, dim: int, index: str = "Flat", metric: str = "l2") -> dict[str, Any]:
    resp = api.post("/v1/collections", params={"wait": 30},
                    json={"name": name, "dim": dim, "metric": metric, "index": index})
    assert resp.status_code == 201, resp.text
    return resp.json()


def add(api: httpx.Client, name: str, vectors: np.ndarray, ids: list[str]) -> dict[str, Any]:
    resp = api.post(f"/v1/collections/{name}/vectors", params={"wait": 60},
                    json={"vectors": np.asarray(vectors, dtype=np.float64).tolist(), "ids": ids})
    assert resp.status_code == 200, resp.text
    return resp.json()


def delete(api: httpx.Client, name: str, ids: list[str]) -> dict[str, Any]:
    resp = api.post(f"/v1/collections/{name}/vectors/delete", params={"wait": 60}, json={"ids": ids})
    assert resp.status_code == 200, resp.text
    return resp.json()


def seal(api: httpx.Client, name: str) -> dict[str, Any]:
    resp = api.post(f"/v1/collections/{name}/seal", params={"wait": 120})
    assert resp.status_code == 200, resp.text
    return resp.json()


def uid_of(r: redis.Redis, name: str) -> str:
    return r.hget(keys.collection(name), "uid").decode()


def job(r: redis.Redis, job_id: str) -> dict[str, Any]:
    raw = jobs.get(r, job_id)
    assert raw is not None, f"no record for job {job_id}"
    return jobs.public(raw)


def wait_for(what: str, predicate: Any, timeout: float, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def pool_child(worker: Proc, timeout: float = 30) -> int:
    return wait_for(f"pool child of {worker.name}", lambda: (pool_children(worker.pid) or [0])[0], timeout)


def main_of(s: Stack, child_pid: int) -> Proc:
    """The stack's worker main process that owns `child_pid`: we only ever signal processes we started."""
    for w in s.workers:
        if child_pid in pool_children(w.pid):
            return w
    raise AssertionError(f"pid {child_pid} is not a pool child of this stack's workers")


def heartbeats(r: redis.Redis) -> dict[int, dict[str, Any]]:
    """pid -> heartbeat of every live worker child."""
    out = {}
    for wid in r.zrange(keys.WORKERS, 0, -1):
        raw = r.get(keys.heartbeat(wid.decode()))
        if raw:
            beat = json.loads(raw)
            out[beat["pid"]] = beat
    return out


def results_by_worker(api: httpx.Client, name: str, queries: np.ndarray, workers: int, k: int = 10,
                      tries: int = 60) -> dict[str, list[list[tuple[str, float]]]]:
    """The same search answered by each of `workers` distinct worker processes: worker -> [(id, score)] rows."""
    seen: dict[str, list[list[tuple[str, float]]]] = {}
    body = {"vectors": queries.astype(np.float64).tolist(), "k": k}

    def one(_: int) -> dict[str, Any]:
        resp = api.post(f"/v1/collections/{name}/search", json=body)
        assert resp.status_code == 200, resp.text
        return resp.json()

    with cf.ThreadPoolExecutor(2) as pool:
        for _ in range(tries):
            # Two requests at once: one idle worker cannot take both, so every worker gets its turn.
            for res in pool.map(one, range(2)):
                seen[res["worker"]] = [[(h["id"], h["score"]) for h in row] for row in res["results"]]
            if len(seen) >= workers:
                return seen
    raise AssertionError(f"only {len(seen)} of {workers} workers answered")


def same_everywhere(by_worker: dict[str, list[list[tuple[str, float]]]]) -> list[list[tuple[str, float]]]:
    answers = list(by_worker.values())
    for other in answers[1:]:
        assert other == answers[0], "workers disagree"
    return answers[0]


@contextlib.contextmanager
def vecq_up(data_dir: Path, env: dict[str, str], workers: int) -> Iterator[tuple[str, str]]:
    """Run `vecq up` (the CLI) on `data_dir`; yields (API URL, Redis URL); Ctrl-C (SIGINT) stops it."""
    port = free_port()
    child_env = {**os.environ, **env, "VECQ_DATA_DIR": str(data_dir), "VECQ_API_PORT": str(port),
                 "PYTHONPATH": str(ROOT)}
    child_env.pop("VECQ_REDIS_URL", None)
    log_path = data_dir / "vecq-up.log"
    with open(log_path, "ab") as log:
        up = subprocess.Popen([sys.executable, "-m", "vecq.cli", "up", "--workers", str(workers)], env=child_env,
                              cwd=ROOT, stdout=log, stderr=log, start_new_session=True)
    started = []  # its children run in sessions of their own: remember them, to stop them if it cannot
    try:
        api_url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            started[:] = pool_children(up.pid)
            assert up.poll() is None, log_path.read_text()
            try:
                resp = httpx.get(f"{api_url}/readyz", timeout=2)
            except httpx.HTTPError:
                return False
            return resp.status_code == 200 and resp.json().get("workers", 0) >= workers

        wait_for("vecq up", ready, 90, every=0.2)
        found = re.search(r"embedded Redis at (redis://\S+)", log_path.read_text())
        assert found, log_path.read_text()
        yield api_url, found.group(1)
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait(5)
        for pid in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def restart_workers(s: Stack, count: int) -> None:
    for w in s.workers:  # the main processes only: each finishes its current job, then stops its pool
        os.kill(w.pid, signal.SIGTERM)
    for w in s.workers:
        w.stop(timeout=30)
    s.workers.clear()
    for i in range(count):
        s.start_worker(i + 1)
    s.wait_ready(timeout=90, workers=count)


def wal_entries(r: redis.Redis, name: str, uid: str) -> list[tuple[str, dict[bytes, bytes]]]:
    return [(lsn.decode(), fields) for lsn, fields in r.xrange(keys.wal(name, uid))]


# ---------------------------------------------------------------------------------------------------------
# tests


def test_sigkill_child_mid_add_job_still_succeeds_exactly_once(new_stack) -> None:  # type: ignore[no-untyped-def]
    n, dim = 100_000, 16
    s = new_stack(workers=2, env={"VECQ_WAL_CHUNK_BYTES": "2048"})  # 32 rows a chunk: 3,125 WAL entries
    r = redis.Redis.from_url(s.redis_url or "")
    settings = Settings(redis_url=s.redis_url, queue="vecq")
    producer = make_celery(settings)
    with client(s) as api:
        name = f"kill-{uuid.uuid4().hex[:8]}"
        create(api, name, dim)
        uid = uid_of(r, name)
        data = np.random.default_rng(5).standard_normal((n, dim)).astype(np.float32)
        ids = [f"v{i}" for i in range(n)]
        job_id = uuid.uuid4().hex
        jobs.create(r, job_id, "add", name, ttl=600, total=n)  # what the API does before it sends a job
        producer.send_task(ADD, kwargs={"collection": name, "vectors_b64": encode_vectors(data), "ids": ids},
                           task_id=job_id, queue="vecq")
        # Kill the child that runs the job once it has appended part of it, never all of it.
        wait_for("a tenth of the chunks", lambda: r.xlen(keys.wal(name, uid)) >= 300, 60, every=0.005)
        victim = int(job(r, job_id)["worker"].rsplit("-", 1)[1])
        owner = main_of(s, victim)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        appended_at_kill = r.xlen(keys.wal(name, uid))
        assert appended_at_kill < 3125, "the job finished before the kill: nothing was proven"

        wait_for("the redelivery", lambda: job(r, job_id)["attempts"] >= 2, 60)
        redelivered_s = time.monotonic() - killed_at
        done = wait_for("the job to finish",
                        lambda: (j := job(r, job_id))["status"] in jobs.TERMINAL and j, 120, every=0.1)
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 2 and done["result"]["count"] == n
        assert done["progress"] == {"done": n, "total": n}  # chunks skipped on redelivery are not counted twice
        print(f"redelivered {redelivered_s:.2f}s after SIGKILL; {appended_at_kill} of 3125 chunks were in")

        # Exactly once in the log: every id in exactly one entry, one entry per chunk.
        entries = wal_entries(r, name, uid)
        assert len(entries) == 3125
        logged = [vid for _, f in entries for vid in json.loads(f[b"ids"])]
        assert len(logged) == n and logged == ids
        assert api.get(f"/v1/collections/{name}").json()["count"] == n

        # Exactly once in every worker's index: each sampled vector finds itself once, first, at distance ~0.
        sample = np.random.default_rng(6).choice(n, 200, replace=False)
        by_worker = results_by_worker(api, name, data[sample], workers=2, k=5)
        for rows in by_worker.values():
            for i, row in zip(sample, rows, strict=True):
                got = [vid for vid, _ in row]
                assert got[0] == f"v{i}" and got.count(f"v{i}") == 1 and row[0][1] < 1e-4, (i, row)
        # The killed child was replaced, and its replacement reports its load time per collection.
        new_child = pool_child(owner)
        assert new_child != victim
        beat = wait_for("the replacement's heartbeat", lambda: heartbeats(r).get(new_child), 30)
        assert beat["collections"][name]["load_s"] is not None
    r.close()


def test_restart_all_workers_same_ids_and_scores(new_stack) -> None:  # type: ignore[no-untyped-def]
    dim = 16
    s = new_stack(workers=2)
    r = redis.Redis.from_url(s.redis_url or "")
    rng = np.random.default_rng(7)
    queries = rng.standard_normal((50, dim))
    with client(s) as api:
        before: dict[str, list[list[tuple[str, float]]]] = {}
        seals: dict[str, dict[str, Any]] = {}
        for index in ("Flat", "HNSW32"):
            name = f"rs-{index.lower()}-{uuid.uuid4().hex[:6]}"
            create(api, name, dim, index=index)
            data = rng.standard_normal((3000, dim))
            add(api, name, data[:2000], [f"a{i}" for i in range(2000)])
            delete(api, name, [f"a{i}" for i in range(0, 2000, 7)])
            add(api, name, data[:100] + 0.01, [f"a{i}" for i in range(100)])  # upserts: tombstones
            sealed = seals[name] = seal(api, name)  # restart = sealed segments + the log tail
            assert sealed["sealed"] and sealed["rows"] == 2000 - 286 + 15
            add(api, name, data[2000:], [f"b{i}" for i in range(1000)])
            delete(api, name, [f"b{i}" for i in range(0, 1000, 5)])
            before[name] = same_everywhere(results_by_worker(api, name, queries, workers=2))
        restart_workers(s, 2)
        for name, expected in before.items():
            assert same_everywhere(results_by_worker(api, name, queries, workers=2)) == expected
        # Load time per collection: in every child's heartbeat and in the worker logs.
        pools = {c for w in s.workers for c in pool_children(w.pid)}
        beats = {pid: beat for pid, beat in heartbeats(r).items() if pid in pools}  # not the stopped ones
        assert len(beats) == 2
        for beat in beats.values():
            for name in before:
                assert beat["collections"][name]["load_s"] >= 0
        logs = log_of(s, "worker1") + log_of(s, "worker2")
        for name, sealed in seals.items():
            # The copy that did not run the seal job reopened its segments; both restarted ones loaded them.
            assert len(re.findall(rf"loaded collection={name} vectors=\d+ segments=1 sealed_lsn={sealed['lsn']} "
                                  r"applied=\S+ seconds=[\d.]+", logs)) >= 2
            assert f"collection={name}: segments changed" in logs
    r.close()


def test_redis_and_worker_restart_lose_no_acknowledged_write(new_stack) -> None:  # type: ignore[no-untyped-def]
    dim = 8
    # A small size threshold (the count one is out of reach): seals and trims happen on their own while writes
    # go on, and the restarted workers start from the segments.
    s = new_stack(workers=2, env={"VECQ_SEAL_EVERY_BYTES": "16384"})
    r = redis.Redis.from_url(s.redis_url or "")
    name = f"aof-{uuid.uuid4().hex[:8]}"
    acked: dict[str, list[float]] = {}
    stop = threading.Event()
    with client(s) as api:
        create(api, name, dim)
        rng = np.random.default_rng(8)

        def writer() -> None:
            batch = 0
            while not stop.is_set():
                vectors = rng.standard_normal((20, dim))
                ids = [f"w{batch}-{i}" for i in range(20)]
                batch += 1
                try:
                    resp = api.post(f"/v1/collections/{name}/vectors", params={"wait": 10},
                                    json={"vectors": vectors.tolist(), "ids": ids}, timeout=15)
                except httpx.HTTPError:
                    continue
                if resp.status_code == 200:  # acknowledged: must survive
                    acked.update(zip(ids, vectors.tolist(), strict=True))

        thread = threading.Thread(target=writer)
        thread.start()
        wait_for("40 acknowledged batches", lambda: len(acked) >= 800, 60)
        assert s.redis_proc is not None
        s.redis_proc.stop()  # SIGTERM: what `vecq up` does on Ctrl-C
        stop.set()
        thread.join(30)
        s.api.stop() if s.api else None
        for w in s.workers:
            w.stop(timeout=30)
        s.workers.clear()
    r.close()
    assert list((s.data_dir / "segments").glob(f"{name}/*/*/segment.json")), "no automatic seal was written"
    # One seal request at a time: not a seal job for every write past the threshold.
    logs = log_of(s, "worker1") + log_of(s, "worker2")
    seal_jobs = logs.count("type=seal ")
    adds = logs.count("type=add ") + sum(int(n) for n in re.findall(r"type=add-batch \S+ members=(\d+)", logs))
    assert 1 <= seal_jobs <= adds // 4, (seal_jobs, adds)

    # `vecq up` on the same data dir, as a user would run it again: its embedded Redis (on a port of its own
    # this time) replays the AOF, its workers start from the sealed segments and the log tail.
    restarted_at = time.time()
    with vecq_up(s.data_dir, s.env, workers=2) as (api_url, redis_url):
        r = redis.Redis.from_url(redis_url)
        with httpx.Client(base_url=api_url, timeout=60) as api:
            info = api.get(f"/v1/collections/{name}").json()
            assert info["sealed_lsn"] != "0-0" and info["segments"], "no automatic seal was taken"
            assert info["count"] >= len(acked)
            ids = sorted(acked)
            vectors = np.array([acked[i] for i in ids])
            for start in range(0, len(ids), 500):
                chunk = slice(start, start + 500)
                for rows in results_by_worker(api, name, vectors[chunk], workers=2, k=1).values():
                    assert [row[0][0] for row in rows] == ids[chunk]
            beats = [b for b in heartbeats(r).values() if b["started_at"] > restarted_at]
            assert len(beats) == 2
            for beat in beats:  # loaded from the segments, then the tail
                assert beat["collections"][name]["load_s"] is not None
        r.close()
    assert f"loaded collection={name} vectors=" in (s.data_dir / "vecq-up.log").read_text()


def test_new_worker_after_seal_and_trim_serves_identical_results(new_stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dim = 16
    shared = tmp_path / "shared-segments"  # VECQ_SEGMENT_DIR: what workers on several hosts would mount
    s = new_stack(workers=2, env={"VECQ_SEGMENT_DIR": str(shared)})
    r = redis.Redis.from_url(s.redis_url or "")
    rng = np.random.default_rng(9)
    queries = rng.standard_normal((50, dim))
    with client(s) as api:
        expected = {}
        seals: dict[str, dict[str, Any]] = {}
        for index in ("Flat", "HNSW32"):
            name = f"seal-{index.lower()}-{uuid.uuid4().hex[:6]}"
            create(api, name, dim, index=index)
            uid = uid_of(r, name)
            data = rng.standard_normal((2100, dim))
            add(api, name, data[:1500], [f"a{i}" for i in range(1500)])
            # Both workers hold copies with dead rows before the seal leaves them out.
            delete(api, name, [f"a{i}" for i in range(0, 1500, 3)])
            add(api, name, data[:50] * 1.01, [f"a{i}" for i in range(50)])
            same_everywhere(results_by_worker(api, name, queries, workers=2))
            # Written but applied by neither copy: the seal covers it, so the copy that does not run the seal
            # job finds the entries it still needs trimmed away, and must open the segment.
            add(api, name, data[2000:], [f"c{i}" for i in range(100)])
            sealed = seals[name] = seal(api, name)
            assert sealed["rows"] == 1000 + 17 + 100
            # Trimmed up to the LSN the seal covers, never further.
            entries = wal_entries(r, name, uid)
            assert [lsn for lsn, _ in entries] == [sealed["lsn"]]
            assert r.get(keys.trim(name, uid)).decode() == sealed["lsn"]
            assert (shared / name / uid / sealed["segment"] / "segment.json").exists()
            assert not (s.data_dir / "segments").exists()
            add(api, name, data[1500:2000], [f"b{i}" for i in range(500)])  # the tail after the seal
            # Every copy converges on the segment plus the same tail: same ids, same scores, on every worker.
            expected[name] = same_everywhere(results_by_worker(api, name, queries, workers=2))
            assert f"collection={name}: segments changed" in log_of(s, "worker1") + log_of(s, "worker2")
        fresh = s.start_worker(3)
        wait_for("the new worker", lambda: len(heartbeats(r)) == 3, 60)
        for w in s.workers[:2]:
            w.stop(timeout=30)
        for name, rows in expected.items():
            assert same_everywhere(results_by_worker(api, name, queries, workers=1)) == rows
        logs = log_of(s, "worker3")
        for name, sealed in seals.items():
            assert f"loaded collection={name} vectors=1617 segments=1 sealed_lsn={sealed['lsn']}" in logs
        assert fresh.alive()
    r.close()


def test_poison_job_fails_after_bounded_retries(new_stack) -> None:  # type: ignore[no-untyped-def]
    s = new_stack(workers=2)  # VECQ_ENABLE_TEST_TASKS=1, VECQ_MAX_ATTEMPTS=3 (tests/conftest.py)
    r = redis.Redis.from_url(s.redis_url or "")
    producer = make_celery(Settings(redis_url=s.redis_url, queue="vecq"))
    dim = 8
    with client(s) as api:
        name = f"poison-{uuid.uuid4().hex[:6]}"
        create(api, name, dim)
        data = np.random.default_rng(10).standard_normal((100, dim))
        add(api, name, data, [f"p{i}" for i in range(100)])
        job_id = uuid.uuid4().hex
        started = time.monotonic()
        jobs.create(r, job_id, "poison", name, ttl=600)  # what the API does before it sends a job
        producer.send_task(POISON, kwargs={"collection": name}, task_id=job_id, queue="vecq")
        served = 0
        while job(r, job_id)["status"] not in jobs.TERMINAL:  # other workers keep serving meanwhile
            assert time.monotonic() - started < 90, job(r, job_id)
            resp = api.post(f"/v1/collections/{name}/search", json={"vector": data[served % 100].tolist(), "k": 1})
            assert resp.status_code == 200, resp.text
            assert resp.json()["results"][0][0]["id"] == f"p{served % 100}"
            served += 1
        took = time.monotonic() - started
        done = job(r, job_id)
        assert done["status"] == "failed" and done["error"]["code"] == "poisoned", done
        assert done["attempts"] == 4  # 3 deliveries that each killed a child, the 4th refused to run it
        logs = lambda: sum(log_of(s, f"worker{i}").count("exited with 'signal 9") for i in (1, 2))  # noqa: E731
        # Each delivery that ran it lost its child. The main process logs a child's death when it notices it,
        # which on a loaded machine can trail the 4th delivery's refusal on the other worker.
        deadline = time.monotonic() + 15
        while (lost := logs()) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert lost == 3, lost
        time.sleep(3)  # no endless redelivery loop: nothing more happens to it
        assert job(r, job_id)["attempts"] == 4 and logs() == lost
        assert all(w.alive() for w in s.workers)
        print(f"poison job failed after {took:.1f}s; {served} searches served meanwhile")
    r.close()


def test_slow_start_does_not_get_a_replacement_child_killed(new_stack) -> None:  # type: ignore[no-untyped-def]
    """Celery SIGKILLs a replacement pool child that has not started within worker_proc_alive_timeout (4 s by
    default; the first child is spared). A child loads every collection before it starts, so vecq sets that
    timeout from worker_init_timeout_s: a start longer than 4 s must go through. Loads are fast since segments
    are mapped, so the test-only start delay stands in for a slow one (a shared volume, a long log tail)."""
    s = new_stack(workers=1, env={"VECQ_TEST_START_DELAY_S": "5"})
    r = redis.Redis.from_url(s.redis_url or "")
    worker = s.workers[0]
    with client(s) as api:
        name = f"slow-{uuid.uuid4().hex[:6]}"
        create(api, name, 8)
        add(api, name, np.eye(5, 8), [f"s{i}" for i in range(5)])
        first = pool_child(worker)
        killed_at = time.monotonic()
        os.kill(first, signal.SIGKILL)  # its replacement sleeps, then loads the collection, before it starts

        def loaded() -> dict[str, Any] | None:
            for pid, beat in heartbeats(r).items():
                if pid != first and beat["collections"].get(name, {}).get("load_s") is not None:
                    return {"pid": pid, **beat["collections"][name]}
            return None

        beat = wait_for("the replacement's load", loaded, 60, every=0.2)
        took = time.monotonic() - killed_at
        assert took > 4.5, f"the replacement started in {took:.1f}s: not slow enough to prove anything"
        # With Celery's default the child would have been killed 4 s after its fork, before it could report.
        time.sleep(1)
        assert pool_children(worker.pid) == [beat["pid"]] and worker.alive()
        assert "Timed out waiting for UP message" not in log_of(s, "worker1")
        res = api.post(f"/v1/collections/{name}/search", json={"vectors": np.eye(5, 8).tolist(), "k": 1}).json()
        assert [row[0]["id"] for row in res["results"]] == [f"s{i}" for i in range(5)]
    r.close()


def sleeping_job(s: Stack, r: redis.Redis, seconds: float) -> tuple[str, dict[str, Any]]:
    """A test sleep job sent straight to Celery, once a worker runs it: its id and its running record."""
    job_id = uuid.uuid4().hex
    jobs.create(r, job_id, "sleep", None, ttl=600)
    make_celery(Settings(redis_url=s.redis_url, queue="vecq")).send_task(
        "vecq.test.sleep", kwargs={"seconds": seconds}, task_id=job_id, queue="vecq")
    return job_id, wait_for("the job to start", lambda: (x := job(r, job_id))["status"] == "running" and x, 30)


def test_a_job_of_a_worker_killed_whole_runs_again_elsewhere_within_30s(new_stack) -> None:  # type: ignore[no-untyped-def]
    """A worker's main process and child killed together (OOM, `docker kill`): nobody acks or rejects its job, and
    Celery would leave it unacked until the visibility timeout (40 minutes). The reaper of a live worker gives it
    back once the dead worker's heartbeat has expired (3 s here), and another worker runs it."""
    s = new_stack(workers=2)
    r = redis.Redis.from_url(s.redis_url or "")
    job_id, running = sleeping_job(s, r, seconds=4)
    victim = main_of(s, int(running["worker"].rsplit("-", 1)[1]))
    victim.signal(signal.SIGKILL)  # the whole process group: main process and pool child
    killed_at = time.monotonic()
    done = wait_for("the job to run again", lambda: (x := job(r, job_id))["status"] in jobs.TERMINAL and x, 40,
                    every=0.2)
    assert time.monotonic() - killed_at < 30
    assert done["status"] == "succeeded" and done["attempts"] == 2 and done["worker"] != running["worker"], done
    assert "gave back job=" + job_id in log_of(s, "worker1") + log_of(s, "worker2")
    r.close()


def test_a_pool_child_killed_while_its_main_process_stalls_runs_its_job_again_once(new_stack) -> None:  # type: ignore[no-untyped-def]
    """A pool child killed while its main process is too slow to put its job back (a loaded machine; here the
    main process is stopped): the reaper gives the job back once the child's heartbeat has expired and another
    worker runs it. When the main process resumes, its own requeue (reject on worker lost) must find nothing to put
    back: under the same delivery tag it requeued the delivery the other worker was running, and the job ran a
    third time beside it (`attempts` 3: the twins seen in loaded test runs)."""
    s = new_stack(workers=2)
    r = redis.Redis.from_url(s.redis_url or "")
    job_id, running = sleeping_job(s, r, seconds=10)
    child = int(running["worker"].rsplit("-", 1)[1])
    stalled = main_of(s, child)
    stalled.signal(signal.SIGSTOP, group=False)
    try:
        os.kill(child, signal.SIGKILL)
        wait_for("the job to run on the other worker",
                 lambda: (x := job(r, job_id))["worker"] != running["worker"] and x["status"] == "running", 30)
    finally:
        stalled.signal(signal.SIGCONT, group=False)
    wait_for("a new pool child of the resumed worker", lambda: pool_children(stalled.pid) not in ([], [child]), 30)
    done = wait_for("the job to end", lambda: (x := job(r, job_id))["status"] in jobs.TERMINAL and x, 30)
    assert done["status"] == "succeeded" and done["attempts"] == 2, done
    time.sleep(1)  # a third delivery would be claimed by the resumed worker's idle child within milliseconds
    assert job(r, job_id)["attempts"] == 2 and not r.llen("vecq"), job(r, job_id)
    r.close()


def test_a_job_that_meets_a_redis_restart_still_finishes(new_stack) -> None:  # type: ignore[no-untyped-def]
    """Found by the soak (bench/soak.py), which restarts Redis under load: a job that met Redis gone (its WAL
    append ran but the reply was lost to the shutdown, then its finish found Redis down) raised out of run_job.
    Celery acked it, and its record stayed `running` for the job TTL: a write applied but never acknowledged,
    its client polling a job that would never end. A job now waits for Redis to come back and finishes."""
    s = new_stack(workers=1)
    assert s.redis_proc is not None and s.redis_url is not None
    r = redis.Redis.from_url(s.redis_url)
    producer = make_celery(Settings(redis_url=s.redis_url, queue="vecq"))
    job_id = uuid.uuid4().hex
    jobs.create(r, job_id, "sleep", None, ttl=600)
    producer.send_task("vecq.test.sleep", kwargs={"seconds": 2}, task_id=job_id, queue="vecq")
    wait_for("the job to start", lambda: job(r, job_id)["status"] == "running", 30)
    r.close()
    port = int(s.redis_url.rsplit(":", 1)[1].split("/")[0])
    s.redis_proc.stop()  # SIGTERM while the job sleeps: it finishes while Redis is down
    time.sleep(6)
    s.start_redis(port)  # the same port and AOF
    r = redis.Redis.from_url(s.redis_url)
    done = wait_for("the job to finish", lambda: (x := job(r, job_id))["status"] in jobs.TERMINAL and x, 30,
                    every=0.2)
    assert done["status"] == "succeeded" and done["attempts"] == 1 and done["result"] == {"slept": 2}, done
    assert "redis unavailable" in log_of(s, "worker1")
    r.close()


def test_a_job_killed_at_its_hard_time_limit_ends_failed(new_stack) -> None:  # type: ignore[no-untyped-def]
    """A job that sleeps through its soft time limit (as a long FAISS call does) is killed at the hard one; its
    record ends `failed` with a timeout, not `running` until it expires, and the worker serves on."""
    s = new_stack(workers=1, env={"VECQ_TASK_TIME_LIMIT_S": "10"})
    r = redis.Redis.from_url(s.redis_url or "")
    producer = make_celery(Settings(redis_url=s.redis_url, queue="vecq"))
    job_id = uuid.uuid4().hex
    jobs.create(r, job_id, "sleep", None, ttl=600)
    producer.send_task("vecq.test.sleep", kwargs={"seconds": 30, "stubborn": True}, task_id=job_id, queue="vecq")
    done = wait_for("the job to end", lambda: (x := job(r, job_id))["status"] in jobs.TERMINAL and x, 30, every=0.2)
    assert done["status"] == "failed" and done["error"]["code"] == "timeout", done
    assert 9 <= done["finished_at"] - done["started_at"] < 15, done
    with client(s) as api:
        name = f"after-{uuid.uuid4().hex[:6]}"
        create(api, name, 2)  # a replacement child took over
    r.close()


def test_segment_files_survive_a_writer_killed_half_way(tmp_path: Path) -> None:
    """Unit: the on-disk format alone. A writer that dies before its rename leaves a temp dir, and one that dies
    before the manifest commit an unlisted dir: readers never open either, and the next seal sweeps both once
    they are older than the grace time; what the manifest lists stays."""
    from common.collections import new_collection
    from worker import segment_files
    from worker.index import build, factory
    from worker.segment_files import SegmentRows

    col = new_collection("unit", 4, "l2", "Flat")
    rows = SegmentRows(["a", "b", "c"], np.eye(3, 4, dtype=np.float32), ["gone"], ['{"k":1}', None, None])
    listed, size = segment_files.write(tmp_path, col, "0001-listed", build(factory(4, "l2", "Flat"), rows.vectors),
                                       rows)
    assert size > 0 and (listed / "segment.json").exists()
    base = segment_files.collection_dir(tmp_path, col)
    (base / ".tmp-dead-writer").mkdir()  # a writer SIGKILLed half-way
    (base / ".tmp-dead-writer" / "index.faiss").write_bytes(b"partial")
    unlisted, _ = segment_files.write(tmp_path, col, "0002-unlisted", build(factory(4, "l2", "Flat"), rows.vectors),
                                      rows)
    assert segment_files.sweep(tmp_path, col, keep={"0001-listed"}) == 0  # young: maybe a seal about to commit
    assert segment_files.sweep(tmp_path, col, keep={"0001-listed"}, grace_s=0) == 2
    assert listed.exists() and not unlisted.exists() and not (base / ".tmp-dead-writer").exists()


def test_seal_lock_one_at_a_time_but_a_redelivery_takes_its_own_back(new_stack) -> None:  # type: ignore[no-untyped-def]
    from common import segments
    from common.collections import new_collection

    s = new_stack(workers=0, api=False)  # a Redis only
    r = redis.Redis.from_url(s.redis_url or "")
    col = new_collection("locked", 4, "l2", "Flat")
    assert segments.lock(r, col, 60, owner="job-a")
    assert not segments.lock(r, col, 60, owner="job-b")  # one seal per collection at a time
    assert segments.lock(r, col, 60, owner="job-a")  # job-a redelivered after its worker died
    segments.unlock(r, col, "job-b")  # not the holder: no effect
    assert not segments.lock(r, col, 60, owner="job-b")
    segments.unlock(r, col, "job-a")
    assert segments.lock(r, col, 60, owner="job-b")
    r.close()
