"""Issue 4 (search jobs: sync wait, POST-then-poll, scale) and issue 10 (coalescing keeps answers exact)."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
import redis.asyncio as aredis

from api import batches
from common import jobs, keys, scripts
from tests.conftest import log_of
from tests.helpers import add, ids_of, pool_children, search, wait_job
from vecq.stack import Stack


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def _create(url: str, name: str, dim: int, index: str = "Flat") -> None:
    resp = httpx.post(f"{url}/v1/collections", json={"name": name, "dim": dim, "index": index}, timeout=60)
    assert resp.status_code == 201, resp.text


def _searches(url: str, name: str, bodies: list[dict[str, object]]) -> list[httpx.Response]:
    """Every body POSTed to the collection's search at once, one connection each: what coalescing batches."""
    async def go() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            return await asyncio.gather(*[client.post(f"/v1/collections/{name}/search", json=b) for b in bodies])

    return asyncio.run(go())


def test_500_concurrent_sync_searches_coalescing_on_and_off(new_stack) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = new_stack(workers=2)
    off_url = stack.api_url
    rng = np.random.default_rng(10)
    name = "burst"
    data = rng.standard_normal((5000, 32)).astype(np.float32)
    _create(stack.api_url or "", name, 32)
    with httpx.Client(base_url=stack.api_url or "", timeout=60) as client:
        for start in range(0, 5000, 2500):
            add(client, name, data[start : start + 2500], ids=[f"v{i}" for i in range(start, start + 2500)])
    picks = rng.choice(5000, 500, replace=False)
    queries = data[picks] + rng.standard_normal((500, 32)).astype(np.float32) * 0.01
    answers: dict[str, list[list[str]]] = {}
    for mode in ("on", "off"):
        if mode == "off":
            stack.api.stop()  # type: ignore[union-attr]
            off_url = stack.start_api(extra_env={"VECQ_COALESCE": "0"})
            stack.wait_ready(workers=2)
        api_pid = stack.api.pid  # type: ignore[union-attr]
        peak = [_threads(api_pid)]
        stop = threading.Event()

        def sample(pid: int, stop: threading.Event, peak: list[int]) -> None:
            while not stop.is_set():
                peak.append(_threads(pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, args=(api_pid, stop, peak))
        sampler.start()
        try:
            responses = _searches(off_url or "", name, [{"vector": q.tolist(), "k": 5} for q in queries])
        finally:
            stop.set()
            sampler.join()
        assert [r.status_code for r in responses] == [200] * 500, {r.status_code for r in responses}
        answers[mode] = [[h["id"] for h in r.json()["results"][0]] for r in responses]
        assert [row[0] for row in answers[mode]] == [f"v{i}" for i in picks]
        # No thread per waiting request: the thread count stays far below the 500 requests in flight.
        assert max(peak) <= 16, max(peak)
    assert answers["on"] == answers["off"]


def test_two_api_processes_coalesce_on_their_own_and_bad_input_fails_alone(new_stack) -> None:  # type: ignore[no-untyped-def]
    """uvicorn --workers 2: each process batches its own searches and gets its batches' answers back on its own
    channel. Bad input fails alone: a wrong dim or k is refused before batching, and parameters the index does not
    take are refused by the worker, in a lane of their own (a lane is one collection and one set of parameters)."""
    stack: Stack = new_stack(workers=2)
    stack.api.stop()  # type: ignore[union-attr]
    url = stack.start_api(processes=2, extra_env={"VECQ_WORKERS": "2", "VECQ_API_PROCESSES": "2"})
    stack.wait_ready(workers=2)
    rng = np.random.default_rng(13)
    data = rng.standard_normal((3000, 16)).astype(np.float32)
    _create(url, "multi", 16)
    with httpx.Client(base_url=url, timeout=60) as client:
        add(client, "multi", data, ids=[f"p{i}" for i in range(3000)])
    picks = rng.choice(3000, 300, replace=False)
    bodies: list[dict[str, object]] = [{"vector": (data[i] + 0.001).tolist(), "k": 3} for i in picks]
    bad = {7: {"vector": [0.0] * 15, "k": 3}, 42: {"vector": data[0].tolist(), "k": 0},
           99: {"vector": data[0].tolist(), "k": 3, "params": {"nprobe": 4}}}
    for i, body in bad.items():
        bodies[i] = body

    responses = _searches(url, "multi", bodies)
    for i, (resp, pick) in enumerate(zip(responses, picks, strict=True)):
        if i in bad:
            assert resp.status_code == 422 and resp.json()["error"]["field"], (i, resp.text)
        else:
            assert resp.status_code == 200, resp.text
            assert resp.json()["results"][0][0]["id"] == f"p{pick}"
    members = [int(m) for log in (log_of(stack, "worker1"), log_of(stack, "worker2"))
               for m in re.findall(r"type=search-batch .*?members=(\d+)", log)]
    assert sum(members) >= 297 and max(members) > 1, members  # answered in batches, every one accounted for


def test_post_then_poll_matches_sync(api: httpx.Client, make_collection) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(11)
    name = make_collection(dim=8)
    data = rng.standard_normal((300, 8))
    add(api, name, data, ids=[f"p{i}" for i in range(300)], metadata=[{"i": i} for i in range(300)])
    body = {"vectors": data[:3].tolist(), "k": 4, "include_metadata": True}
    queued = api.post(f"/v1/collections/{name}/search", params={"wait": 0}, json=body)
    assert queued.status_code == 202
    ticket = queued.json()
    assert ticket["status"] == "queued" and ticket["status_url"] == f"/v1/jobs/{ticket['job_id']}"
    job = wait_job(api, ticket["job_id"])
    assert job["status"] == "succeeded" and job["type"] == "search" and job["collection"] == name
    assert job["submitted_at"] <= job["started_at"] <= job["finished_at"]
    sync = api.post(f"/v1/collections/{name}/search", json=body).json()
    assert job["result"]["results"] == sync["results"]
    assert [row[0]["id"] for row in sync["results"]] == ["p0", "p1", "p2"]
    assert sync["results"][0][0]["metadata"] == {"i": 0}


def test_unknown_and_expired_jobs_are_404(stack: Stack, api: httpx.Client, make_collection) -> None:  # type: ignore[no-untyped-def]
    assert api.get(f"/v1/jobs/{uuid.uuid4().hex}").status_code == 404
    assert api.get(f"/v1/jobs/{uuid.uuid4().hex}", params={"wait": 1}).status_code == 404
    missing = api.delete(f"/v1/jobs/{uuid.uuid4().hex}")
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "job_id"
    name = make_collection(dim=2)
    # a second API process on the same Redis whose job records live one second
    short = Stack(data_dir=stack.data_dir, env={"VECQ_JOB_TTL_S": "1"}, redis_url=stack.redis_url,
                  log_dir=stack.log_dir)
    url = short.start_api()
    try:
        short.wait_ready()
        ticket = httpx.post(f"{url}/v1/collections/{name}/search", params={"wait": 0},
                            json={"vector": [0, 1]}, timeout=30).json()
        assert api.get(f"/v1/jobs/{ticket['job_id']}").status_code == 200
        time.sleep(2.5)
        assert api.get(f"/v1/jobs/{ticket['job_id']}").status_code == 404
    finally:
        short.stop()


def test_failed_job_maps_to_status(api: httpx.Client, make_collection) -> None:  # type: ignore[no-untyped-def]
    name = make_collection(dim=2)
    add(api, name, [[0, 1]], ids=["a"])
    # efSearch on a Flat index: the worker refuses it; sync → 422 naming the field, async → failed job
    resp = api.post(f"/v1/collections/{name}/search", json={"vector": [0, 1], "params": {"efSearch": 16}})
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "params.efSearch"
    ticket = api.post(f"/v1/collections/{name}/search", params={"wait": 0},
                      json={"vector": [0, 1], "params": {"efSearch": 16}}).json()
    job = wait_job(api, ticket["job_id"])
    assert job["status"] == "failed" and job["error"]["field"] == "params.efSearch"
    assert api.delete(f"/v1/jobs/{ticket['job_id']}").status_code == 409
    assert api.post("/v1/collections/nope-nope/search", json={"vector": [0, 1]}).status_code == 404


def test_no_workers_then_202_then_completes(new_stack) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = new_stack(workers=1)
    url = stack.api_url or ""
    _create(url, "late", 2)
    with httpx.Client(base_url=url, timeout=60) as client:
        add(client, "late", [[0, 1], [1, 0]], ids=["a", "b"])
        stack.workers[0].stop()
        stack.workers.clear()
        started = time.monotonic()
        resp = client.post("/v1/collections/late/search", params={"wait": 2}, json={"vector": [1, 0.1], "k": 1})
        elapsed = time.monotonic() - started
        assert resp.status_code == 202, resp.text
        assert 1.9 <= elapsed < 4, elapsed
        job_id = resp.json()["job_id"]
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
        # a queued job can be canceled, and then never runs
        doomed = client.post("/v1/collections/late/search", params={"wait": 0}, json={"vector": [0, 1]}).json()
        canceled = client.delete(f"/v1/jobs/{doomed['job_id']}")
        assert canceled.status_code == 202 and canceled.json()["status"] == "canceled"
        stack.start_worker()
        job = wait_job(client, job_id, timeout=60)
        assert job["status"] == "succeeded" and ids_of(job["result"]) == [["b"]]
        assert client.get(f"/v1/jobs/{doomed['job_id']}").json()["status"] == "canceled"


def test_redis_down_is_503_not_a_hang(new_stack) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = new_stack(workers=1)
    url = stack.api_url or ""
    _create(url, "gone", 2)
    stack.redis_proc.stop()  # type: ignore[union-attr]
    started = time.monotonic()
    resp = httpx.post(f"{url}/v1/collections/gone/search", params={"wait": 5}, json={"vector": [0, 1]}, timeout=30)
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "unavailable"
    assert time.monotonic() - started < 5
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 503
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200


@pytest.mark.parametrize("index", ["Flat", "HNSW32"])
def test_mixed_k_and_flags_in_one_burst(api: httpx.Client, make_collection, index: str) -> None:  # type: ignore[no-untyped-def]
    """Coalesced requests with different k and include flags each get exactly their own answer."""
    rng = np.random.default_rng(12)
    name = make_collection(dim=8, index=index)
    data = rng.standard_normal((400, 8))
    add(api, name, data, ids=[f"m{i}" for i in range(400)], metadata=[{"i": i} for i in range(400)])
    bodies = [{"vector": data[i].tolist(), "k": 1 + i % 7, "include_metadata": i % 2 == 0,
               "include_vectors": i % 3 == 0} for i in range(60)]
    want = [search(api, name, [b["vector"]], k=b["k"])["results"][0] for b in bodies]

    for b, resp, expected in zip(bodies, _searches(str(api.base_url), name, bodies), want, strict=True):
        assert resp.status_code == 200
        row = resp.json()["results"][0]
        assert [h["id"] for h in row] == [h["id"] for h in expected] and len(row) == b["k"]
        assert all(("metadata" in h) == b["include_metadata"] for h in row)
        assert all(("vector" in h) == b["include_vectors"] for h in row)
        if b["include_metadata"]:
            assert row[0]["metadata"] == {"i": int(row[0]["id"][1:])}


def _job_keys(r: redis.Redis) -> int:
    return sum(1 for k in r.scan_iter(match="vecq:job:*", count=1000) if not k.endswith(b":watchers"))


def test_a_search_answered_while_waiting_leaves_no_record(api: httpx.Client, r: redis.Redis, make_collection) -> None:  # type: ignore[no-untyped-def]
    """Its id is never shown, so a record would only fill Redis (a day of them at a thousand searches a second)."""
    name = make_collection(dim=4)
    add(api, name, np.eye(4), ids=["a", "b", "c", "d"])
    before = _job_keys(r)
    responses = _searches(str(api.base_url), name, [{"vector": [1, 0, 0, 0], "k": 1}] * 40)
    assert {resp.status_code for resp in responses} == {200}
    assert _job_keys(r) == before


def _batch_keys(r: redis.Redis) -> set[bytes]:
    return set(r.scan_iter(match=f"{keys.PREFIX}:batch:*", count=1000))


def test_outcomes_every_member_had_go_within_seconds_and_a_shown_ones_stay(api: httpx.Client, r: redis.Redis,
                                                                             make_collection) -> None:  # type: ignore[no-untyped-def]
    """Outcomes held their batch's longest wait and a margin (~60 s) pile up with the search rate: the soak saw
    Redis grow 24 MB. Read by nobody once every member has its answer, they go at the API's next sweep; a batch
    whose member was shown its id (wait=0) keeps them, for that member's record."""
    name = make_collection(dim=4)
    add(api, name, np.eye(4), ids=["a", "b", "c", "d"])  # a write batch: swept too
    before = _batch_keys(r)
    assert {resp.status_code for resp in _searches(str(api.base_url), name, [{"vector": [1, 0, 0, 0], "k": 1}] * 20)
            } == {200}
    deadline = time.monotonic() + 5 * batches.SWEEP_EVERY_S
    while _batch_keys(r) - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _batch_keys(r) - before, "the answered batches' outcomes are still held"
    ticket = api.post(f"/v1/collections/{name}/search", params={"wait": 0}, json={"vector": [1, 0, 0, 0], "k": 1})
    assert ticket.status_code == 202
    assert wait_job(api, ticket.json()["job_id"])["status"] == "succeeded"
    time.sleep(3 * batches.SWEEP_EVERY_S)
    kept = _batch_keys(r) - before
    assert len(kept) == 1 and r.ttl(kept.pop()) > 20


@pytest.mark.parametrize("record_first", [True, False])
def test_a_shown_member_ends_up_finished_whichever_script_runs_first(r: redis.Redis, record_first: bool) -> None:
    """The API makes a member's record when it shows the id; the worker finishes records and keeps the batch's
    outcomes. In either order the record ends up with the result."""
    batch_id, job_id = uuid.uuid4().hex, uuid.uuid4().hex
    result = {"results": [[{"id": "a", "score": 0.5}]], "lsn": "1-0", "took_ms": 1.0, "worker": "w1"}
    conn = r.connection_pool.connection_kwargs

    def finish() -> None:
        with r.pipeline(transaction=False) as pipe:
            jobs.finish_members(pipe, batch_id, [({"job_id": job_id}, result, None)], reply_to=None,
                                started_at=time.time(), worker="w1", hold_s=60)
            scripts.execute(pipe)

    def record() -> None:
        async def go() -> None:
            client = aredis.Redis(host=conn["host"], port=conn["port"], db=conn.get("db", 0))
            try:
                await jobs.amember_record(client, job_id, batch_id, "c", ttl=600, scope="s", submitted_at=time.time())
            finally:
                await client.aclose()

        asyncio.run(go())

    for step in ((record, finish) if record_first else (finish, record)):
        step()
    raw = jobs.get(r, job_id)
    assert raw is not None
    job = jobs.public(raw)
    assert (job["status"], job["type"], job["collection"], job["result"]) == ("succeeded", "search", "c", result)
    assert jobs.scope_of(raw) == "s" and 500 < r.ttl(keys.job(job_id)) <= 600
    assert 0 < r.ttl(keys.batch_outcomes(batch_id)) <= 60


# Issue 16: what no client, lost message or lost worker may do to an API process ---------------------------------


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith(f"{name} "))


def test_read_your_writes_searches_leave_no_lane_behind(api: httpx.Client, make_collection) -> None:  # type: ignore[no-untyped-def]
    """Item 1: every search with its own min_lsn (a client reading its own writes) is a lane of its own. Once
    answered, the lanes go; before, each stayed, and 3,300 of them grew the API by 95 MB."""
    name = make_collection(dim=4)
    add(api, name, np.eye(4), ids=["a", "b", "c", "d"])
    url = str(api.base_url)
    for burst in range(3):
        bodies: list[dict[str, object]] = [{"vector": [1, 0, 0, 0], "k": 1, "consistency": "session",
                                            "min_lsn": f"1-{burst * 100 + i}"} for i in range(100)]
        responses = _searches(url, name, bodies)
        assert {resp.status_code for resp in responses} == {200}
        assert {resp.json()["results"][0][0]["id"] for resp in responses} == {"a"}
    deadline = time.monotonic() + 5
    while (lanes := _metric(url, "vecq_search_lanes")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lanes == 0 and _metric(url, "vecq_search_pending") == 0


def test_a_batch_reply_lost_with_the_subscription_still_answers_at_once(stack: Stack, api: httpx.Client,  # type: ignore[no-untyped-def]
                                                                         r: redis.Redis, make_collection) -> None:
    """Item 6: a batch's one message is lost when the API's subscription drops as it is published. Here Redis
    drops it for the message itself: larger than the pub/sub output buffer limit (32 MB by default, which a big
    batch with include_vectors passes; 1 KB here). The member has no record to find, but its batch's outcomes
    are kept: it answers 200 with its hits as soon as the listener is back, not a 202 once its wait has run out."""
    name = make_collection(dim=64)
    data = np.random.default_rng(16).standard_normal((200, 64))
    add(api, name, data, ids=[f"v{i}" for i in range(200)])
    drops = log_of(stack, "api").count(LOST_SUBSCRIPTION)
    limit = r.config_get("client-output-buffer-limit")["client-output-buffer-limit"]
    r.config_set("client-output-buffer-limit", "pubsub 1024 0 0")  # only the reply list counts: 16 KB fit anyway
    try:
        started = time.monotonic()
        resp = api.post(f"/v1/collections/{name}/search", params={"wait": 8},
                        json={"vector": data[3].tolist(), "k": 50, "include_vectors": True})  # a 67 KB message
        elapsed = time.monotonic() - started
    finally:
        r.config_set("client-output-buffer-limit", limit)
    assert resp.status_code == 200, resp.text
    hits = resp.json()["results"][0]
    assert hits[0]["id"] == "v3" and len(hits) == 50 and len(hits[0]["vector"]) == 64
    assert elapsed < 4, elapsed  # the listener's reconnection, not the 8 s wait
    assert log_of(stack, "api").count(LOST_SUBSCRIPTION) > drops  # the message was lost: Redis closed the subscription
    assert api.post(f"/v1/collections/{name}/search", json={"vector": data[4].tolist(), "k": 1}).status_code == 200


LOST_SUBSCRIPTION = "job listener lost its subscription"


def test_a_batch_lost_with_its_worker_frees_its_slot_and_the_lane_stays_bounded(new_stack) -> None:  # type: ignore[no-untyped-def]
    """Items 7 and 1: a worker dies whole (main process and pool child: a host lost, an OOM kill of the group)
    while it holds a batch. Its message stays unacked until Celery's visibility timeout (40 minutes), so the batch
    never comes back. (A pool child killed alone is no such loss: Celery requeues its job at once.) The lane's one
    slot is given back once the batch's member has had its 202 (and MIN_SLOT_HOLD_S has passed), not after
    BATCH_DONE_TIMEOUT_S; meanwhile wait=0 searches beyond VECQ_COALESCE_MAX_PENDING get 429 + Retry-After
    instead of queueing without bound."""
    stack: Stack = new_stack(workers=1, env={"VECQ_COALESCE_MAX_INFLIGHT": "1", "VECQ_COALESCE_MAX_PENDING": "4"})
    url = stack.api_url or ""
    r = redis.Redis.from_url(stack.redis_url or "")
    _create(url, "lost", 16)
    data = np.random.default_rng(17).standard_normal((1_000, 16)).astype("<f4")
    buf = io.BytesIO()
    np.save(buf, data)
    with httpx.Client(base_url=url, timeout=60) as client:
        added = client.post("/v1/collections/lost/vectors", params={"wait": 120, "id_prefix": "v"},
                            content=buf.getvalue(), headers={"content-type": "application/x-npy"})
        assert added.status_code == 200, added.text
        # The pool child is frozen, so the batch its main process takes (moved to Celery's `unacked` hash) is
        # surely not finished when the group is killed: a search of a growing copy takes milliseconds, and a
        # kill timed on the batch's start raced its end on a loaded machine.
        child = pool_children(stack.workers[0].pid)[0]
        os.kill(child, signal.SIGSTOP)
        first: list[httpx.Response] = []
        searching = threading.Thread(target=lambda: first.append(client.post(
            "/v1/collections/lost/search", params={"wait": 2}, json={"vector": data[0].tolist()})))
        searching.start()
        deadline = time.monotonic() + 30
        while not r.hlen("unacked"):  # the worker has taken the batch
            assert time.monotonic() < deadline, "the batch was never taken"
            time.sleep(0.002)
        stack.workers[0].signal(signal.SIGKILL)  # the whole process group
        assert not any(r.scan_iter(match="vecq:batch:*")), "the batch ended before the kill: nothing was proven"

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=15) as ac:
                return list(await asyncio.gather(*[ac.post("/v1/collections/lost/search", params={"wait": 0},
                                                           json={"vector": data[i].tolist()}) for i in range(10)]))

        burst_started = time.monotonic()
        responses = asyncio.run(burst())
        refused = [resp for resp in responses if resp.status_code == 429]
        assert sorted(resp.status_code for resp in responses) == [202] * 4 + [429] * 6, responses
        assert all(resp.headers["retry-after"] == "1" and resp.json()["error"]["code"] == "too_many_requests"
                   for resp in refused)
        # The four queued left once the lost batch gave its slot back: MIN_SLOT_HOLD_S (5 s) after it was sent.
        queued = time.monotonic() - burst_started
        assert queued < 10, queued

        stack.start_worker(2)
        started = time.monotonic()
        second = client.post("/v1/collections/lost/search", params={"wait": 20},
                             json={"vector": data[5].tolist(), "k": 1})
        assert second.status_code == 200, second.text  # not stuck behind the lost batch's slot
        assert second.json()["results"][0][0]["id"] == "v5" and time.monotonic() - started < 15
        searching.join(30)
        assert first[0].status_code == 202 and first[0].json()["status"] == "queued"  # lost: it runs when redelivered
        for resp in responses:
            if resp.status_code == 202:
                job = wait_job(client, resp.json()["job_id"], timeout=30)
                assert job["status"] == "succeeded", job
    r.close()
