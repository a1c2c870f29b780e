"""Issue 19: `GET /v1/jobs`, the recent jobs, listed newest first, filtered, and scoped by API key."""

from __future__ import annotations

import io
import time
import uuid
from typing import Any

import httpx
import numpy as np
import redis

from api.auth import scope_of_key
from common import jobs, keys
from common.celery_app import ADD, make_celery
from common.settings import Settings
from tests.helpers import add, wait_job
from vecq.stack import Stack

NPY = {"content-type": "application/x-npy"}


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def client(s: Stack, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=s.api_url or "", timeout=60, headers=headers)


def create(api: httpx.Client, name: str, dim: int = 8) -> None:
    resp = api.post("/v1/collections", json={"name": name, "dim": dim})
    assert resp.status_code == 201, resp.text


def listed(api: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    resp = api.get("/v1/jobs", params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()["jobs"]


def job_ids(found: list[dict[str, Any]]) -> list[str]:
    return [j["job_id"] for j in found]


def submit_straight(s: Stack, task: str, kwargs: dict[str, Any], *, record: bool, job_type: str = "sleep") -> str:
    """Send a task by name as a Python producer does, with its record first (as the API does) or without any
    (the worker makes it when it claims the job)."""
    r = redis.Redis.from_url(s.redis_url or "")
    job_id = uuid.uuid4().hex
    if record:
        jobs.create(r, job_id, job_type, kwargs.get("collection"), ttl=3600)
    make_celery(Settings(redis_url=s.redis_url)).send_task(task, kwargs=kwargs, task_id=job_id, queue="vecq")
    r.close()
    return job_id


def settled(api: httpx.Client, job_id: str, timeout: float = 60) -> dict[str, Any]:
    """The finished record of a job, waiting first for the record itself (a job sent straight to Celery has
    none until a worker claims it)."""
    deadline = time.monotonic() + timeout
    while api.get(f"/v1/jobs/{job_id}").status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.05)
    return wait_job(api, job_id, timeout=max(1.0, deadline - time.monotonic()))


# GET /v1/jobs ------------------------------------------------------------------------------------------------------


def test_recent_jobs_are_listed_filtered_and_scoped_by_key(new_stack) -> None:  # type: ignore[no-untyped-def]
    s: Stack = new_stack(workers=2, env={"VECQ_API_KEYS": "admin,team:team-*:rw,reader:team-*:ro",
                                         "VECQ_WAL_CHUNK_BYTES": "1024"})
    admin, team, reader = client(s, "admin"), client(s, "team"), client(s, "reader")
    tag = uuid.uuid4().hex[:8]
    mine, other, bulk = f"team-{tag}", f"other-{tag}", f"team-bulk-{tag}"
    for name in (mine, other, bulk):
        create(admin, name)
    rng = np.random.default_rng(19)
    by_team = add(team, mine, rng.random((4, 8)), ids=["a", "b", "c", "d"])  # wait=60: answered in the response
    by_admin = admin.post(f"/v1/collections/{mine}/vectors", params={"wait": 0},
                          json={"vectors": rng.random((2, 8)).tolist()}).json()["job_id"]
    elsewhere = admin.post(f"/v1/collections/{other}/vectors", params={"wait": 0},
                           json={"vectors": rng.random((2, 8)).tolist()}).json()["job_id"]
    waited = team.post(f"/v1/collections/{mine}/search", json={"vector": [0.5] * 8, "k": 2})
    assert waited.status_code == 200, waited.text  # answered while the client waited: no record, never listed
    polled = team.post(f"/v1/collections/{mine}/search", params={"wait": 0}, json={"vector": [0.5] * 8, "k": 2})
    assert polled.status_code == 202, polled.text
    broken = admin.post("/v1/collections", params={"wait": 0}, json={"name": f"bad-{tag}", "dim": 8,
                                                                     "index": "NoSuchIndex"}).json()["job_id"]
    # An upload of 300 rows of 8 float32 is ~10 parts of 1 KiB: the parent is listed, its parts are not.
    upload = admin.post(f"/v1/collections/{bulk}/vectors", params={"wait": 60}, headers=NPY,
                        content=npy_bytes(rng.random((300, 8), dtype=np.float32)))
    assert upload.status_code == 200, upload.text
    # A job sent straight to Celery without a record: the worker makes its record, and lists it, when it claims it.
    straight = submit_straight(s, ADD, {"collection": mine, "vectors": [[0.25] * 8], "ids": ["e"]}, record=False)
    for job_id in (by_admin, elsewhere, broken, straight):
        assert settled(admin, job_id)["status"] in ("succeeded", "failed")
    assert settled(team, polled.json()["job_id"])["status"] == "succeeded"

    everything = listed(admin, limit=500)
    assert all("result" not in j for j in everything)  # summaries: the results are one GET /v1/jobs/{id} away
    submitted = [j["submitted_at"] for j in everything]
    assert submitted == sorted(submitted, reverse=True), "newest first"
    assert {by_admin, elsewhere, broken, straight} <= set(job_ids(everything))
    assert job_ids(listed(team, type="search")) == [polled.json()["job_id"]], \
        "only the search whose id was shown is listed"

    ingests = listed(admin, type="ingest")
    assert len(ingests) == 1 and ingests[0]["collection"] == bulk and ingests[0]["status"] == "succeeded"
    assert ingests[0]["progress"] == {"done": 300, "total": 300}
    assert [j["type"] for j in listed(admin, collection=bulk)] == ["ingest", "create_collection"], "no part listed"

    failed = listed(admin, status="failed")
    assert job_ids(failed) == [broken]
    assert failed[0]["type"] == "create_collection" and failed[0]["error"]["field"] == "index"
    assert failed[0]["error"] == admin.get(f"/v1/jobs/{broken}").json()["error"]

    in_mine = listed(admin, collection=mine)
    assert {j["collection"] for j in in_mine} == {mine}
    assert {by_admin, straight} <= set(job_ids(in_mine))
    assert len(listed(admin, limit=2)) == 2 and job_ids(listed(admin, limit=2)) == job_ids(everything)[:2]
    assert listed(admin, collection=mine, type="delete") == []

    # A key sees what GET /v1/jobs/{id} lets it read, of the collections its glob allows: its own jobs, and jobs
    # sent without a key (no scope) to a collection it may use.
    seen_by_team = job_ids(listed(team, limit=500))
    assert polled.json()["job_id"] in seen_by_team and straight in seen_by_team
    assert by_admin not in seen_by_team and elsewhere not in seen_by_team and broken not in seen_by_team
    assert polled.json()["job_id"] not in job_ids(everything)  # another key's job, as GET /v1/jobs/{id} says
    for job_id in set(job_ids(everything)) | set(seen_by_team):
        for key, seen in ((team, seen_by_team), (admin, job_ids(everything))):
            visible = key.get(f"/v1/jobs/{job_id}").status_code == 200
            assert (job_id in seen) == visible, job_id
    assert job_ids(listed(reader, limit=500)) == [straight]
    assert team.get("/v1/jobs", params={"collection": other}).status_code == 403
    assert httpx.get(f"{s.api_url}/v1/jobs").status_code == 401
    assert admin.get("/v1/jobs", params={"status": "lost"}).status_code == 422
    assert admin.get("/v1/jobs", params={"limit": 0}).status_code == 422
    assert by_team["count"] == 4

    # The index is capped by the append itself: a thousand more records leave it near RECENT_MAX entries.
    r = redis.Redis.from_url(s.redis_url or "")
    for _ in range(jobs.RECENT_MAX + 200):
        jobs.create(r, uuid.uuid4().hex, "sleep", None, ttl=60, scope=scope_of_key("admin"))
    length = r.xlen(keys.RECENT_JOBS)
    r.close()
    assert jobs.RECENT_MAX <= length <= jobs.RECENT_MAX + 100, length  # MAXLEN ~ trims whole stream nodes
    assert len(listed(admin, limit=500)) == 500
