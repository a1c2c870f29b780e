"""Issue #14: sealed segments, built once and mapped by every worker; trained indexes. Real redis-server and Celery
worker processes (private stacks where a test kills or configures them)."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import faiss
import httpx
import numpy as np
import redis

from common import keys
from tests.conftest import log_of
from tests.helpers import add, brute_force, delete, ids_of, pool_children, search, wait_job
from vecq.stack import Stack


def seal(api: httpx.Client, name: str) -> dict[str, Any]:
    resp = api.post(f"/v1/collections/{name}/seal", params={"wait": 120})
    assert resp.status_code == 200, resp.text
    return resp.json()


def info(api: httpx.Client, name: str) -> dict[str, Any]:
    resp = api.get(f"/v1/collections/{name}")
    assert resp.status_code == 200, resp.text
    return resp.json()


def create(api: httpx.Client, dim: int, index: str = "Flat", metric: str = "l2") -> str:
    name = f"seg-{uuid.uuid4().hex[:10]}"
    resp = api.post("/v1/collections", json={"name": name, "dim": dim, "metric": metric, "index": index})
    assert resp.status_code == 201, resp.text
    return name


def by_worker(api: httpx.Client, name: str, queries: np.ndarray, workers: int, k: int = 10,
              **extra: Any) -> dict[str, list[list[tuple[str, float]]]]:
    """Search until `workers` distinct workers have answered; their results, by worker."""
    out: dict[str, list[list[tuple[str, float]]]] = {}
    deadline = time.monotonic() + 30
    while len(out) < workers and time.monotonic() < deadline:
        res = search(api, name, queries, k=k, **extra)
        out[res["worker"]] = [[(h["id"], h["score"]) for h in row] for row in res["results"]]
    assert len(out) == workers, out.keys()
    return out


def test_flat_identical_before_and_after_seals_across_three_segments(stack: Stack, api: httpx.Client) -> None:
    """Three seals with upserts and deletes touching every segment, plus a growing tail: every worker answers
    exactly the brute-force ids and the scores it gave before each seal."""
    dim, rng = 16, np.random.default_rng(21)
    name = create(api, dim)
    truth: dict[str, np.ndarray] = {}
    queries = rng.standard_normal((30, dim)).astype(np.float32)

    def write_round(round_: int) -> None:
        ids = [f"v{int(i)}" for i in rng.choice(2000, size=400, replace=False)]
        vectors = rng.standard_normal((400, dim)).astype(np.float32)
        add(api, name, vectors, ids)
        truth.update(zip(ids, vectors, strict=True))
        gone = [f"v{int(i)}" for i in rng.choice(2000, size=40, replace=False)]
        delete(api, name, gone)
        for vid in gone:
            truth.pop(vid, None)

    def expected() -> list[list[str]]:
        ids = sorted(truth)
        order, _ = brute_force(np.array([truth[i] for i in ids]), queries, 10, "l2")
        return [[ids[j] for j in row] for row in order]

    for round_ in range(3):
        write_round(round_)
        before = by_worker(api, name, queries, workers=3)
        sealed = seal(api, name)
        assert sealed["sealed"], sealed
        after = by_worker(api, name, queries, workers=3)
        first = next(iter(after.values()))
        assert next(iter(before.values())) == first and all(rows == first for rows in after.values())
    write_round(3)  # the growing tail
    assert ids_of(search(api, name, queries)) == expected()
    described = info(api, name)
    assert len(described["segments"]) == 3 and described["count"] == len(truth)
    assert described["growing_rows"] > 0 and described["sealed_rows"] == sum(s["rows"] for s in described["segments"])
    assert all(s["mapped"] and s["spec"] == "Flat" and s["bytes"] > 0 for s in described["segments"])
    # A vector read by id comes from whichever segment holds its live row.
    some = sorted(truth)[:5]
    for vid in some:
        got = api.get(f"/v1/collections/{name}/vectors/{vid}").json()
        assert np.allclose(got["vector"], truth[vid])


def _recall(found: list[list[str]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & {f"r{j}" for j in t}) / len(t) for f, t in zip(found, truth, strict=True)]))


def test_hnsw_and_ivf_segments_recall_at_least_one_index(stack: Stack, api: httpx.Client) -> None:
    """Segments of HNSW32 and of a trained IVF (trained on the collection's own rows at its first seal): recall@10
    at least that of one in-process index of the same spec over all the rows."""
    dim, rng = 32, np.random.default_rng(22)
    data = rng.standard_normal((6000, dim)).astype(np.float32)
    queries = rng.standard_normal((100, dim)).astype(np.float32)
    truth, _ = brute_force(data, queries, 10, "l2")
    for spec, params in (("HNSW32", {"efSearch": 64}), ("IVF32,Flat", {"nprobe": 4})):
        name = create(api, dim, spec)
        for part in range(3):
            rows = slice(part * 2000, (part + 1) * 2000)
            add(api, name, data[rows], [f"r{i}" for i in range(rows.start, rows.stop)])
            if part == 0 and spec.startswith("IVF"):  # not trained yet: exact, in the growing segment
                exact = ids_of(search(api, name, queries[:5], params=params))
                assert exact == [[f"r{j}" for j in row] for row in brute_force(data[:2000], queries[:5], 10, "l2")[0]]
            assert seal(api, name)["sealed"]
        found = ids_of(search(api, name, queries, params=params))
        single = faiss.index_factory(dim, spec)
        if not single.is_trained:
            single.train(data[:2000])  # vecq trained on its first seal's rows
        single.add(data)
        if spec.startswith("IVF"):
            faiss.extract_index_ivf(single).nprobe = 4
        else:
            single.hnsw.efSearch = 64
        _, labels = single.search(queries, 10)
        one_index = _recall([[f"r{j}" for j in row] for row in labels], truth)
        assert _recall(found, truth) >= one_index - 0.005, (spec, _recall(found, truth), one_index)
        described = info(api, name)
        assert [s["rows"] for s in described["segments"]] == [2000, 2000, 2000]


def test_auto_seal_compaction_and_log_trim(new_stack) -> None:  # type: ignore[no-untyped-def]
    """Past VECQ_SEAL_EVERY_ROWS a seal runs on its own; past VECQ_COMPACT_MAX_SEGMENTS the segments are merged;
    the log keeps only what no segment covers, and the dedup records of sealed, finished writes are gone."""
    s = new_stack(workers=2, env={"VECQ_SEAL_EVERY_ROWS": "300", "VECQ_COMPACT_MAX_SEGMENTS": "2",
                                  "VECQ_COMPACT_DEAD_FRACTION": "0.2"})
    r = redis.Redis.from_url(s.redis_url or "")
    dim, rng = 8, np.random.default_rng(23)
    with httpx.Client(base_url=s.api_url or "", timeout=60) as api:
        name = create(api, dim)
        data = rng.standard_normal((1200, dim)).astype(np.float32)
        for start in range(0, 1200, 100):
            add(api, name, data[start:start + 100], [f"a{i}" for i in range(start, start + 100)])
        delete(api, name, [f"a{i}" for i in range(0, 1200, 2)])  # half dead: a compaction is due too

        def settled() -> dict[str, Any] | None:
            # At most VECQ_COMPACT_MAX_SEGMENTS segments once a compaction ran: one that ran before the delete was
            # sealed already dropped the rows it deletes, and the delete's tombstones then make a segment of their
            # own, which nothing makes due for a compaction (two segments, no dead rows).
            d = info(api, name)
            compacted = "type=compact " in log_of(s, "worker1") + log_of(s, "worker2")
            return d if compacted and len(d["segments"]) <= 2 and d["growing_rows"] < 300 and \
                d["sealed_lsn"] != "0-0" else None

        deadline = time.monotonic() + 60
        while (described := settled()) is None:
            assert time.monotonic() < deadline, info(api, name)
            time.sleep(0.3)
        logs = log_of(s, "worker1") + log_of(s, "worker2")
        assert logs.count("type=seal ") >= 3 and "type=compact " in logs
        uid = r.hget(keys.collection(name), "uid").decode()
        assert r.xlen(keys.wal(name, uid)) <= 13 - 3  # trimmed to the newest seal
        assert r.hlen(keys.dedup(name, uid)) <= 13 - 3
        assert described["count"] == 600
        ids = ids_of(search(api, name, data[1:20:2], k=1))
        assert [row[0] for row in ids] == [f"a{i}" for i in range(1, 20, 2)]
        assert search(api, name, data[0:1], k=1)["results"][0][0]["id"] != "a0"
    r.close()


def test_a_seal_due_while_another_seal_holds_the_lock_still_runs(new_stack) -> None:  # type: ignore[no-untyped-def]
    """Writes past VECQ_SEAL_EVERY_ROWS while the collection's seal lock is held (a seal running): the seal they
    request cannot run then, and writes meanwhile cannot request another. When the holder is done, the seal must
    still happen, without waiting for a later write (an upload's rows would otherwise stay in every worker's
    growing segment). The holder is a seal job whose id the test took the lock with (its own run, redelivered
    here, would not see writes made after it read the log: so the refused seal is requested again once it is
    done); a compaction's lock, held meanwhile, holds no seal back."""
    from common import collections, segments
    from common.celery_app import SEAL, make_celery
    from common.settings import Settings

    s = new_stack(workers=1, env={"VECQ_SEAL_EVERY_ROWS": "100"})
    r = redis.Redis.from_url(s.redis_url or "")
    data = np.random.default_rng(26).standard_normal((200, 8)).astype(np.float32)
    with httpx.Client(base_url=s.api_url or "", timeout=60) as api:
        name = create(api, 8)
        col = collections.get(r, name)
        holder = uuid.uuid4().hex
        assert segments.lock(r, col, 120, owner=holder)  # as a seal that is running
        assert segments.lock(r, col, 120, owner="a-compaction", kind="compact")
        add(api, name, data[:150], [f"h{i}" for i in range(150)])  # past the threshold: a seal is requested ...
        deadline = time.monotonic() + 30
        while "type=seal " not in log_of(s, "worker1"):  # ... and finds the lock held
            assert time.monotonic() < deadline
            time.sleep(0.1)
        add(api, name, data[150:], [f"h{i}" for i in range(150, 200)])  # while its request is pending
        assert info(api, name)["sealed_rows"] == 0
        producer = make_celery(Settings(redis_url=s.redis_url, queue="vecq"))
        producer.send_task(SEAL, kwargs={"collection": name, "uid": col.uid}, task_id=holder, queue="vecq")
        deadline = time.monotonic() + 30
        while (described := info(api, name))["sealed_rows"] < 200:
            assert time.monotonic() < deadline, described  # no further write comes to request it
            time.sleep(0.2)
        assert described["growing_rows"] == 0 and described["count"] == 200
        deadline = time.monotonic() + 30
        while log_of(s, "worker1").count("type=seal ") < 3:  # refused, the holder's, and the one it owed
            assert time.monotonic() < deadline, log_of(s, "worker1")
            time.sleep(0.2)
    r.close()


def test_workers_map_the_same_segment_file(new_stack) -> None:  # type: ignore[no-untyped-def]
    """Two workers on one host search one sealed segment from the same file, mapped (file-backed in smaps), not
    each from a private copy."""
    s = new_stack(workers=2)
    with httpx.Client(base_url=s.api_url or "", timeout=60) as api:
        name = create(api, 32, "HNSW32")
        data = np.random.default_rng(24).standard_normal((3000, 32)).astype(np.float32)
        add(api, name, data, [f"m{i}" for i in range(3000)])
        segment = seal(api, name)["segment"]
        by_worker(api, name, data[:3], workers=2)
        children = [c for w in s.workers for c in pool_children(w.pid)]
        assert len(children) == 2
        for pid in children:
            smaps = Path(f"/proc/{pid}/smaps").read_text()
            assert f"{segment}/index.faiss" in smaps and f"{segment}/vectors.npy" in smaps, pid


def test_seal_killed_half_way_is_redone_and_nothing_is_lost_or_doubled(new_stack) -> None:  # type: ignore[no-untyped-def]
    s = new_stack(workers=2)
    r = redis.Redis.from_url(s.redis_url or "")
    dim, n = 32, 30_000  # an HNSW build of a few seconds: time to kill it
    data = np.random.default_rng(25).standard_normal((n, dim)).astype(np.float32)
    with httpx.Client(base_url=s.api_url or "", timeout=120) as api:
        name = create(api, dim, "HNSW32")
        for start in range(0, n, 10_000):
            add(api, name, data[start:start + 10_000], [f"k{i}" for i in range(start, start + 10_000)])
        job_id = api.post(f"/v1/collections/{name}/seal", params={"wait": 0}).json()["job_id"]
        deadline = time.monotonic() + 30
        while (job := api.get(f"/v1/jobs/{job_id}").json())["status"] != "running":
            assert time.monotonic() < deadline, job
            time.sleep(0.02)
        time.sleep(0.5)  # into the build
        victim = int(job["worker"].rsplit("-", 1)[1])
        os.kill(victim, signal.SIGKILL)
        done = wait_job(api, job_id, timeout=120)
        assert done["status"] == "succeeded" and done["attempts"] == 2 and done["result"]["sealed"], done
        described = info(api, name)
        assert described["count"] == n and [s["rows"] for s in described["segments"]] == [n]
        uid = r.hget(keys.collection(name), "uid").decode()
        store = s.data_dir / "segments" / name / uid
        listed = {seg["id"] for seg in described["segments"]}
        assert listed <= {p.name for p in store.iterdir()}
        hits = search(api, name, data[:200:10], k=1, params={"efSearch": 128})
        assert [row[0]["id"] for row in hits["results"]] == [f"k{i}" for i in range(0, 200, 10)]
        # Every row once: the segment's ids are exactly the written ones.
        assert all(api.get(f"/v1/collections/{name}/vectors/k{i}").status_code == 200 for i in (0, n // 2, n - 1))
    r.close()


def test_a_worker_restarted_answers_from_the_segments_at_once(new_stack) -> None:  # type: ignore[no-untyped-def]
    s = new_stack(workers=1)
    with httpx.Client(base_url=s.api_url or "", timeout=60) as api:
        name = create(api, 16, "IVF16,Flat")
        data = np.random.default_rng(26).standard_normal((2000, 16)).astype(np.float32)
        add(api, name, data, [f"c{i}" for i in range(2000)])
        assert seal(api, name)["sealed"]
        add(api, name, data[:10] + 5, [f"t{i}" for i in range(10)])  # a tail after the seal
        s.workers[0].stop()
        s.workers.clear()
        s.start_worker(2)
        s.wait_ready(timeout=60, workers=1)
        res = search(api, name, data[:10] + 5, k=1, params={"nprobe": 16})
        assert [row[0]["id"] for row in res["results"]] == [f"t{i}" for i in range(10)]
        assert f"loaded collection={name} vectors=2010 segments=1" in log_of(s, "worker2")
