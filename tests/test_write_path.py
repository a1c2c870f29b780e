"""Issue 3: collections, the WAL, and W index copies that agree (3 real workers)."""

from __future__ import annotations

import concurrent.futures as cf
import time
import uuid

import httpx
import numpy as np
import pytest
import redis

from common import keys
from tests.helpers import add, brute_force, count, delete, ids_of, search


def test_collection_crud(api: httpx.Client, make_collection) -> None:  # type: ignore[no-untyped-def]
    name = make_collection(dim=4, metric="cosine", index="HNSW16")
    got = api.get(f"/v1/collections/{name}").json()
    assert got["dim"] == 4 and got["metric"] == "cosine" and got["index"] == "HNSW16" and got["count"] == 0
    assert name in [c["name"] for c in api.get("/v1/collections").json()["collections"]]
    again = api.post("/v1/collections", json={"name": name, "dim": 4})
    assert again.status_code == 409 and again.json()["error"]["field"] == "name"
    assert api.delete(f"/v1/collections/{name}").status_code == 204
    assert api.get(f"/v1/collections/{name}").status_code == 404
    # re-created under the same name: starts empty, old vectors never come back
    make_again = api.post("/v1/collections", json={"name": name, "dim": 4})
    assert make_again.status_code == 201 and make_again.json()["count"] == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "bad name", "dim": 4}, "name"),
        ({"name": "x", "dim": 0}, "dim"),
        ({"name": "x", "dim": 5000}, "dim"),
        ({"name": "x", "dim": 4, "metric": "hamming"}, "metric"),
        ({"name": "x", "dim": 4, "index": "NoSuchIndex"}, "index"),
        ({"name": "x", "dim": 4, "index": "NSG32"}, "index"),  # its search ignores deletes: the probe refuses it
        ({"name": "x", "dim": 4, "index": "LSH"}, "index"),
    ],
)
def test_create_collection_rejects(api: httpx.Client, body: dict, field: str) -> None:
    resp = api.post("/v1/collections", json=body)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == field


def test_read_your_writes_across_workers(api: httpx.Client, make_collection) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    name = make_collection(dim=16)
    add(api, name, rng.standard_normal((200, 16)), ids=[f"old{i}" for i in range(200)])
    fresh = rng.standard_normal((20, 16)) + 50  # far from everything else
    add(api, name, fresh, ids=[f"new{i}" for i in range(20)])
    workers = set()
    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: search(api, name, fresh[i % 20 : i % 20 + 1], k=1), range(50)))
    for i, res in enumerate(results):
        assert ids_of(res) == [[f"new{i % 20}"]]
        workers.add(res["worker"])
    assert len(workers) >= 2, workers


@pytest.mark.parametrize("index", ["Flat", "HNSW32"])
def test_upsert_and_delete(api: httpx.Client, make_collection, index: str) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(2)
    name = make_collection(dim=8, index=index)
    data = rng.standard_normal((100, 8))
    add(api, name, data, ids=[f"v{i}" for i in range(100)], metadata=[{"i": i} for i in range(100)])
    assert count(api, name) == 100
    # upsert v0 far away: its old position must never be returned again
    moved = data[0] + 100
    add(api, name, [moved], ids=["v0"], metadata=[{"i": "moved"}])
    assert count(api, name) == 100
    for _ in range(6):  # several searches: every worker's copy
        res = search(api, name, data[:1], k=5, include_metadata=True)
        assert "v0" not in ids_of(res)[0]
        top = search(api, name, [moved], k=1, include_metadata=True)["results"][0][0]
        assert top["id"] == "v0" and top["metadata"] == {"i": "moved"} and top["score"] < 1e-3
    deleted = delete(api, name, ["v1", "v2", "nope"])
    assert deleted["deleted"] == 2
    assert count(api, name) == 98
    for _ in range(6):
        res = search(api, name, data[1:3], k=3)
        assert all("v1" not in row and "v2" not in row for row in ids_of(res))
    assert api.get(f"/v1/collections/{name}/vectors/v1").status_code == 404
    got = api.get(f"/v1/collections/{name}/vectors/v3").json()
    assert got["id"] == "v3" and np.allclose(got["vector"], data[3], atol=1e-6) and got["metadata"] == {"i": 3}


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_flat_matches_numpy_brute_force(api: httpx.Client, make_collection, metric: str) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    name = make_collection(dim=24, metric=metric)
    data = rng.standard_normal((500, 24)).astype(np.float32)
    queries = rng.standard_normal((20, 24)).astype(np.float32)
    add(api, name, data, ids=[str(i) for i in range(500)])
    res = search(api, name, queries, k=10)
    want_ids, want_scores = brute_force(data, queries, 10, metric)
    for row, ids, scores in zip(res["results"], want_ids, want_scores, strict=True):
        assert [int(h["id"]) for h in row] == ids.tolist()
        assert np.allclose([h["score"] for h in row], scores, atol=1e-4)


def test_k_beyond_count_and_empty(api: httpx.Client, make_collection) -> None:  # type: ignore[no-untyped-def]
    name = make_collection(dim=3)
    assert search(api, name, [[1, 2, 3]], k=5)["results"] == [[]]
    add(api, name, [[1, 2, 3], [3, 2, 1]], ids=["a", "b"])
    row = search(api, name, [[1, 2, 3]], k=50)["results"][0]
    assert [h["id"] for h in row] == ["a", "b"]


def test_concurrent_writers_each_vector_exactly_once(api: httpx.Client, make_collection) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(4)
    name = make_collection(dim=8)
    batches = [(rng.standard_normal((250, 8)), [f"c{c}-{i}" for i in range(250)]) for c in range(4)]
    with cf.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda b: add(api, name, b[0], ids=b[1]), batches))
    assert count(api, name) == 1000
    everything = np.concatenate([b[0] for b in batches])
    every_id = [i for b in batches for i in b[1]]
    res = search(api, name, everything[::10], k=1)
    assert [row[0] for row in ids_of(res)] == every_id[::10]
    # exactly once: the k nearest of a vector hold its id once, and the whole set is 1000 distinct ids
    full = search(api, name, everything[:1], k=1000)
    seen = [h["id"] for h in full["results"][0]]
    assert len(seen) == 1000 and set(seen) == set(every_id)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"vectors": [[1, 2]]}, "vectors[0]"),
        ({"vectors": [[1, 2, 3], [1, 2]]}, "vectors[1]"),
        ({"vectors": [[1, "x", 3]]}, "vectors[0][1]"),
        ({"vectors": []}, "vectors"),
        ({"vectors": [[1, 2, 3]], "ids": ["a", "b"]}, "ids"),
        ({"vectors": [[1, 2, 3], [1, 2, 3]], "ids": ["a", "a"]}, "ids[1]"),
        ({"vectors": [[1, 2, 3]], "metadata": [{}, {}]}, "metadata"),
        ({"vectors": [[1, 2, 3]], "ids": ["x" * 300]}, "ids[0]"),
        ({"vectors": [[1, 2, 3]], "metadata": [{"a": "x" * 70000}]}, "metadata[0]"),
        ({"vectors": [[1, 2, 1e39]]}, "vectors[0]"),
    ],
)
def test_bad_writes_are_422_and_lose_nothing(api: httpx.Client, make_collection, body: dict, field: str) -> None:  # type: ignore[no-untyped-def]
    name = make_collection(dim=3)
    add(api, name, [[1, 0, 0]], ids=["keep"])
    resp = api.post(f"/v1/collections/{name}/vectors", params={"wait": 10}, json=body)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == field
    assert count(api, name) == 1
    assert ids_of(search(api, name, [[1, 0, 0]], k=5)) == [["keep"]]


def test_nan_token_is_422(api: httpx.Client, make_collection) -> None:  # type: ignore[no-untyped-def]
    name = make_collection(dim=2)
    resp = api.post(f"/v1/collections/{name}/vectors", content=b'{"vectors": [[1, NaN]]}',
                    headers={"content-type": "application/json"})
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "body"


def test_session_and_eventual_consistency(api: httpx.Client, make_collection) -> None:  # type: ignore[no-untyped-def]
    name = make_collection(dim=2)
    lsn = add(api, name, [[0, 1]], ids=["a"])["lsn"]
    for _ in range(6):
        res = search(api, name, [[0, 1]], k=1, consistency="session", min_lsn=lsn)
        assert ids_of(res) == [["a"]]
        assert tuple(map(int, res["lsn"].split("-"))) >= tuple(map(int, lsn.split("-")))
    res = search(api, name, [[0, 1]], k=1, consistency="eventual")
    assert res["results"][0] in ([], [{"id": "a", "score": 0.0}])
    bad = api.post(f"/v1/collections/{name}/search", json={"vector": [0, 1], "consistency": "session"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "min_lsn"


def test_eventual_reads_converge_within_the_bound(api: httpx.Client, make_collection) -> None:  # type: ignore[no-untyped-def]
    """`eventual` searches what a copy has applied, but never a copy caught up longer ago than
    VECQ_EVENTUAL_MAX_LAG_S (1 s): after a write, every worker's eventual answer includes it within the bound,
    even when only eventual searches read the collection."""
    name = make_collection(dim=2)
    add(api, name, [[1, 0]], ids=["old"])
    for _ in range(6):  # every worker has a copy, caught up before the next write
        search(api, name, [[1, 0]], k=1)
    add(api, name, [[0, 1]], ids=["new"])
    written = time.monotonic()
    seen: dict[str, float] = {}
    while len(seen) < 3 and time.monotonic() - written < 10:
        res = search(api, name, [[0, 1]], k=1, consistency="eventual")
        if ids_of(res) == [["new"]]:
            seen.setdefault(res["worker"], time.monotonic() - written)
        time.sleep(0.05)
    assert len(seen) == 3, seen
    assert max(seen.values()) < 2.5, seen  # 1 s bound, plus the searches' own time on a loaded machine


def test_a_deleted_collection_is_never_searched_from_a_copy_left_behind(stack, api: httpx.Client, r,  # type: ignore[no-untyped-def]
                                                                       make_collection) -> None:
    """A worker holding a copy of a collection deleted elsewhere answers 404 (not_found), not hits from the copy:
    every catch-up checks the collection's uid (an API process whose cache still has the old record sends it)."""
    from common import collections, jobs
    from common.celery_app import SEARCH, make_celery
    from common.codec import encode_vectors
    from common.settings import Settings

    name = make_collection(dim=2)
    add(api, name, [[0, 1]], ids=["a"])
    for _ in range(6):
        assert ids_of(search(api, name, [[0, 1]], k=1)) == [["a"]]  # every worker holds a copy
    uid = collections.get(r, name).uid
    assert api.delete(f"/v1/collections/{name}").status_code == 204
    producer = make_celery(Settings(redis_url=stack.redis_url))
    for _ in range(6):
        job_id = uuid.uuid4().hex
        jobs.create(r, job_id, "search", name, ttl=60)
        producer.send_task(SEARCH, task_id=job_id, queue="vecq", kwargs={
            "collection": name, "uid": uid, "vectors_b64": encode_vectors(np.array([[0, 1]], dtype=np.float32))})
        deadline = time.monotonic() + 30
        while (record := jobs.public(jobs.get(r, job_id) or {}))["status"] not in jobs.TERMINAL:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert record["status"] == "failed" and record["error"]["code"] == "not_found", record


def test_create_is_owned_by_its_job_and_chunks_are_fixed_at_submission(stack, api: httpx.Client, r) -> None:  # type: ignore[no-untyped-def]
    """A create redelivered after its worker died finds the record it made (not a 409 for its own client), and
    an add's WAL chunks follow the rows per entry fixed when it was submitted, not the redelivering worker's."""
    from common import collections, keys
    from common.celery_app import ADD, make_celery
    from common.codec import encode_vectors
    from common.errors import Conflict
    from common.settings import Settings

    col = collections.new_collection(f"own-{uuid.uuid4().hex[:8]}", 2, "l2", "Flat")
    made = collections.create(r, col, 1000, owner="job-1")
    again = collections.create(r, collections.new_collection(col.name, 2, "l2", "Flat"), 1000, owner="job-1")
    assert again.uid == made.uid  # the same record, not a second incarnation
    with pytest.raises(Conflict):
        collections.create(r, collections.new_collection(col.name, 2, "l2", "Flat"), 1000, owner="job-2")
    producer = make_celery(Settings(redis_url=stack.redis_url))
    job_id = uuid.uuid4().hex
    producer.send_task(ADD, task_id=job_id, queue="vecq", kwargs={
        "collection": col.name, "vectors_b64": encode_vectors(np.ones((10, 2), dtype=np.float32)), "chunk_rows": 3})
    deadline = time.monotonic() + 30
    while r.xlen(keys.wal(col.name, made.uid)) < 4:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert r.xlen(keys.wal(col.name, made.uid)) == 4  # 3 + 3 + 3 + 1 rows


def test_an_ended_job_keeps_no_watchers_set(api: httpx.Client, r: redis.Redis, make_collection) -> None:  # type: ignore[no-untyped-def]
    """Found by the soak's census of Redis (bench/soak.py): each job's watchers set (the API processes to tell when
    it ends) lived as long as its record, a day, and was 41 % of what a write left in Redis though nobody reads it
    once the job has ended. The job's end deletes it, and a long poll of an ended job adds none."""
    name = make_collection(dim=4)
    resp = api.post(f"/v1/collections/{name}/vectors", params={"wait": 10}, json={"vectors": [[1, 2, 3, 4]],
                                                                                  "ids": ["a"]})
    assert resp.status_code == 200, resp.text
    waited = api.get("/v1/jobs", params={"collection": name}).json()["jobs"][0]["job_id"]
    assert r.exists(keys.job(waited)) and not r.exists(keys.job_watchers(waited))
    resp = api.post(f"/v1/collections/{name}/vectors", json={"vectors": [[4, 3, 2, 1]], "ids": ["b"]})
    assert resp.status_code == 202, resp.text
    polled = resp.json()["job_id"]
    assert api.get(f"/v1/jobs/{polled}", params={"wait": 10}).json()["status"] == "succeeded"
    assert api.get(f"/v1/jobs/{polled}", params={"wait": 10}).json()["status"] == "succeeded"
    assert r.exists(keys.job(polled)) and not r.exists(keys.job_watchers(polled))
    canceled = api.delete(f"/v1/jobs/{polled}")
    assert canceled.status_code == 409  # it ran: nothing to cancel, and still no watchers set
    assert not r.exists(keys.job_watchers(polled))
