"""Concurrent single writes leave as coalesced add jobs (api/writer.py): each keeps its own job id, outcome and
LSN, nothing is lost or applied twice, and the log order decides between upserts of one id."""

from __future__ import annotations

import concurrent.futures as cf
import time
from typing import Any

import httpx
import numpy as np
import redis

from common import keys
from tests.helpers import count, wait_job
from vecq.stack import Stack


def publishes(r: redis.Redis) -> int:
    """Celery publishes each job with one LPUSH: Redis's own count of them."""
    return int(r.info("commandstats").get("cmdstat_lpush", {}).get("calls", 0))


def write_all(client: httpx.Client, name: str, bodies: list[dict[str, Any]], threads: int = 32
              ) -> list[httpx.Response]:
    def one(body: dict[str, Any]) -> httpx.Response:
        return client.post(f"/v1/collections/{name}/vectors", params={"wait": 60}, json=body)

    with cf.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, bodies))


def lsn_key(lsn: str) -> tuple[int, int]:
    ms, seq = lsn.split("-")
    return int(ms), int(seq)


def test_concurrent_writes_are_coalesced_and_each_is_acknowledged(api: httpx.Client, r: redis.Redis,
                                                                   make_collection) -> None:  # type: ignore[no-untyped-def]
    name = make_collection(dim=8)
    rng = np.random.default_rng(7)
    rows = rng.standard_normal((160, 8)).astype(np.float32)
    bodies = [{"vectors": [rows[i].tolist()], "ids": [f"w{i}"], "metadata": [{"i": i}]} for i in range(160)]
    before = publishes(r)
    answers = write_all(api, name, bodies)
    sent = publishes(r) - before
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200][:3]
    results = [a.json() for a in answers]
    assert [res["ids"] for res in results] == [[f"w{i}"] for i in range(160)]
    assert all(res["count"] == 1 for res in results)
    assert sent < 160 // 2, f"{sent} jobs published for 160 concurrent writes: not coalesced"
    entries = r.xlen(keys.wal(name, r.hget(keys.collection(name), "uid").decode()))
    assert entries <= sent, f"{entries} log entries for {sent} add jobs: a batch is one entry"
    assert count(api, name) == 160
    metrics = api.get("/metrics").text  # the lanes are dropped once idle
    assert "vecq_write_lanes 0.0" in metrics and "vecq_write_pending 0.0" in metrics
    newest = max((res["lsn"] for res in results), key=lsn_key)
    for i in (0, 57, 159):
        got = api.get(f"/v1/collections/{name}/vectors/w{i}").json()
        assert np.allclose(got["vector"], rows[i]) and got["metadata"] == {"i": i}
        hit = api.post(f"/v1/collections/{name}/search", params={"wait": 30},
                       json={"vector": rows[i].tolist(), "k": 1, "consistency": "session", "min_lsn": newest})
        assert hit.json()["results"][0][0]["id"] == f"w{i}"


def test_upserts_of_one_id_end_with_the_newest_log_entry(api: httpx.Client, make_collection) -> None:  # type: ignore[no-untyped-def]
    name = make_collection(dim=4)
    bodies = [{"vectors": [[float(i), 1.0, 2.0, 3.0]], "ids": ["hot"], "metadata": [{"v": i}]} for i in range(48)]
    answers = write_all(api, name, bodies, threads=24)
    assert all(a.status_code == 200 for a in answers)
    last = max(range(48), key=lambda i: lsn_key(answers[i].json()["lsn"]))
    got = api.get(f"/v1/collections/{name}/vectors/hot").json()
    assert got["vector"] == [float(last), 1.0, 2.0, 3.0] and got["metadata"] == {"v": last}
    assert count(api, name) == 1


def test_off_sends_a_job_per_write_with_the_same_outcome(new_stack) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = new_stack(workers=2, env={"VECQ_COALESCE_WRITES": "0"})
    r = redis.Redis.from_url(stack.redis_url or "")
    with httpx.Client(base_url=stack.api_url or "", timeout=60) as client:
        assert client.post("/v1/collections", json={"name": "plain", "dim": 2}).status_code == 201
        before = publishes(r)
        answers = write_all(client, "plain", [{"vectors": [[i, 1]], "ids": [f"p{i}"]} for i in range(40)], 16)
        assert all(a.status_code == 200 and a.json()["ids"] == [f"p{i}"] for i, a in enumerate(answers))
        assert publishes(r) - before >= 40
        assert count(client, "plain") == 40
    r.close()


def test_a_write_whose_wait_runs_out_gets_a_record_and_lands_later(new_stack) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = new_stack(workers=1)
    with httpx.Client(base_url=stack.api_url or "", timeout=60) as client:
        assert client.post("/v1/collections", json={"name": "late", "dim": 2}).status_code == 201
        stack.workers[0].stop()
        stack.workers.clear()
        started = time.monotonic()
        resp = client.post("/v1/collections/late/vectors", params={"wait": 1.5},
                           json={"vectors": [[1, 2]], "ids": ["a"], "metadata": [{"late": True}]})
        assert resp.status_code == 202, resp.text
        assert 1.4 <= time.monotonic() - started < 4
        job_id = resp.json()["job_id"]
        record = client.get(f"/v1/jobs/{job_id}").json()
        assert record["status"] == "queued" and record["type"] == "add" and record["collection"] == "late"
        stack.start_worker()
        job = wait_job(client, job_id, timeout=60)
        assert job["status"] == "succeeded" and job["result"]["ids"] == ["a"], job
        got = client.get("/v1/collections/late/vectors/a").json()
        assert got["vector"] == [1.0, 2.0] and got["metadata"] == {"late": True}
