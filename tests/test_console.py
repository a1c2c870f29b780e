"""Issue 19: the console (`GET /console`) in a real headless browser, and `GET /v1/jobs`, the recent jobs it lists.

The browser is Debian's chromium (`make test` installs it when run as root with apt-get) driven by playwright's
Python API; no browser is ever downloaded. `VECQ_CONSOLE_SCREENSHOTS=1` makes the browser test write a screenshot
of each page to docs/console/ (the README links them); normal runs leave the tree alone.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import time
import tomllib
import uuid
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from api.auth import scope_of_key
from common import jobs, keys
from common.celery_app import ADD, make_celery
from common.settings import Settings
from tests.conftest import TEST_ENV
from tests.helpers import add, pool_children, search, wait_job
from vecq.stack import ROOT, Stack

CHROMIUM = os.environ.get("VECQ_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = os.environ.get("VECQ_CONSOLE_SCREENSHOTS") == "1"
SHOTS_DIR = ROOT / "docs" / "console"
HEARTBEAT_TTL_S = float(TEST_ENV["VECQ_HEARTBEAT_TTL_S"])
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


# The console ----------------------------------------------------------------------------------------------------


def test_console_files_ship_in_the_package() -> None:
    """pyproject's package data covers every file the console route serves, so an installed vecq has them."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["api"]
    files = [p.relative_to(ROOT / "api").as_posix() for p in (ROOT / "api" / "console").iterdir()]
    assert sorted(files) == ["console/console.css", "console/console.js", "console/index.html"]
    assert all(any(fnmatch(f, pat) for pat in patterns) for f in files), (files, patterns)


def test_console_page_and_files(stack: Stack, api: httpx.Client) -> None:
    page = api.get("/console")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "script-src 'self'" in policy
    assert "http" not in re.sub(r"https?://www\.w3\.org", "", page.text + api.get("/console/console.js").text)
    assert api.get("/console/console.css").headers["content-type"].startswith("text/css")
    assert api.get("/console/console.js").headers["content-type"].startswith("text/javascript")
    assert api.get("/console/%2e%2e%2fmain.py").status_code == 404
    assert api.get("/console/nothing.js").status_code == 404
    assert "/console" not in api.get("/openapi.json").text  # a page for people, not part of the API contract


@pytest.fixture
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM}: `make test` installs Debian's when run as root with apt-get")
    sync_api.expect.set_options(timeout=20_000)
    with sync_api.sync_playwright() as pw:
        # Debian's chromium, never one downloaded by `playwright install`.
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def shoot(page: Any, name: str) -> None:
    if SCREENSHOTS:
        SHOTS_DIR.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS_DIR / f"{name}.png"), full_page=True)


def test_console_without_keys(stack: Stack, api: httpx.Client, browser: Any) -> None:
    """An open API (no keys configured): the console works without asking for one."""
    from playwright.sync_api import expect

    name = f"open-{uuid.uuid4().hex[:8]}"
    create(api, name, dim=4)
    page = browser.new_page()
    page.goto(f"{stack.api_url}/console?refresh=1")
    expect(page.locator(f'#collections-table tr[data-name="{name}"] .count')).to_have_text("0")
    expect(page.locator("#key-form")).to_be_hidden()
    expect(page.locator("#forget-key")).to_be_hidden()
    page.close()


def test_console_in_a_browser(new_stack, browser: Any) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    s: Stack = new_stack(workers=2, env={"VECQ_API_KEYS": "admin"})
    admin = client(s, "admin")
    tag = uuid.uuid4().hex[:8]
    name = f"docs-{tag}"
    create(admin, name)
    rng = np.random.default_rng(7)
    data = rng.random((40, 8))
    add(admin, name, data, ids=[f"v{i}" for i in range(40)],
        metadata=[{"n": i, "lang": "en" if i % 2 else "fr"} for i in range(40)])
    bulk = admin.post(f"/v1/collections/{name}/vectors", params={"wait": 60, "id_prefix": "bulk-"}, headers=NPY,
                      content=npy_bytes(rng.random((2000, 8), dtype=np.float32)))
    assert bulk.status_code == 200, bulk.text
    search(admin, name, data[:1], k=1)  # a strong search: the worker that answers it catches up
    ingest_id = listed(admin, type="ingest")[0]["job_id"]
    # A job that fails in the worker: FAISS, which only workers import, refuses the index description.
    broken = admin.post("/v1/collections", params={"wait": 0}, json={"name": f"bad-{tag}", "dim": 8,
                                                                     "index": "NoSuchIndex"}).json()["job_id"]
    broken_record = wait_job(admin, broken)
    assert broken_record["status"] == "failed"

    # Sealed, so the collection page shows a real segment (rows, bytes, spec, LSN range, mapped).
    assert admin.post(f"/v1/collections/{name}/seal", params={"wait": 60}).json()["sealed"]
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    outside: list[str] = []
    crashes: list[str] = []
    page.on("request", lambda req: None if req.url.startswith((f"{s.api_url}/", "data:")) else outside.append(req.url))
    page.on("pageerror", lambda exc: crashes.append(str(exc)))

    # No key yet: the page loads, its first /v1 call is refused, and it asks for a key.
    page.goto(f"{s.api_url}/console?refresh=1", wait_until="load")
    assert not crashes, crashes
    expect(page.locator("#key-form")).to_be_visible()
    page.fill("#key-input", "admin")
    page.click("#key-form button[type=submit]")
    row = page.locator(f'#collections-table tr[data-name="{name}"]')
    expect(row.locator(".count")).to_have_text("2,040")
    expect(row.locator(".spec")).to_have_text("Flat")
    expect(row.locator(".lsn")).to_have_text(admin.get(f"/v1/collections/{name}").json()["lsn"])
    expect(row.locator(".copies")).to_contain_text(re.compile(r"pid \d+: caught up"))
    assert page.evaluate("sessionStorage.getItem('vecq.console.key')") == "admin"
    page.reload()  # the key is kept in the tab: no second prompt
    expect(row.locator(".count")).to_have_text("2,040")
    expect(page.locator("#key-form")).to_be_hidden()
    row.click()
    detail = page.locator("#collection-detail")
    expect(detail.locator("h3")).to_have_text(name)
    expect(detail.locator(".copies-table")).to_contain_text("caught up")
    sealed = admin.get(f"/v1/collections/{name}").json()["segments"]
    assert len(sealed) == 1
    expect(detail.locator("#segments-table tbody tr")).to_contain_text(sealed[0]["id"])
    expect(detail.locator("#segments-table tbody tr")).to_contain_text("2040")
    shoot(page, "collections")

    # Queue depth: 8 jobs of a second on 2 workers keep the queue busy for ~4 s; the chart sees it and drains.
    page.click("#tabs a[data-page=queue]")
    sleepers = [submit_straight(s, "vecq.test.sleep", {"seconds": 1.0, "collection": name}, record=True)
                for _ in range(8)]
    page.wait_for_function("() => Number(document.querySelector('#queue-chart')?.dataset.maxQueued) >= 2")
    for job_id in sleepers:
        assert wait_job(admin, job_id)["status"] == "succeeded"
    expect(page.locator("#queue-summary")).to_contain_text(re.compile(r"^0 waiting · 0 running"))
    shoot(page, "queue")

    # Recent jobs: the failed one shows its error, and opens its record.
    page.click("#tabs a[data-page=jobs]")
    expect(page.locator(f'#jobs-table tr[data-job="{sleepers[-1]}"]')).to_be_visible()
    page.select_option("#jobs-status", "failed")
    failed_row = page.locator(f'#jobs-table tr[data-job="{broken}"]')
    expect(failed_row.locator(".error-text")).to_have_text(
        f"{broken_record['error']['code']}: {broken_record['error']['message']}")
    expect(page.locator("#jobs-table tbody tr")).to_have_count(1)
    failed_row.click()
    expect(page.locator("#job-detail .job-error")).to_contain_text(broken_record["error"]["message"])
    shown = json.loads(page.locator("#job-detail pre.record").text_content() or "")
    assert shown == admin.get(f"/v1/jobs/{broken}").json()
    page.select_option("#jobs-status", "")
    expect(page.locator(f'#jobs-table tr[data-job="{sleepers[0]}"]')).to_be_visible()
    shoot(page, "jobs")
    page.select_option("#jobs-collection", name)
    expect(page.locator(f'#jobs-table tr[data-job="{ingest_id}"]')).to_be_visible()
    expect(page.locator(f'#jobs-table tr[data-job="{broken}"]')).to_have_count(0)

    # Search playground: a stored vector, fetched by id, finds the same hits as the API.
    page.click("#tabs a[data-page=search]")
    page.select_option("#search-collection", name)
    page.fill("#search-id", "v3")
    page.click("#search-load")
    expect(page.locator("#search-load-status")).to_contain_text("vector of v3")
    stored = admin.get(f"/v1/collections/{name}/vectors/v3").json()["vector"]
    assert json.loads(page.input_value("#search-vector")) == stored
    page.fill("#search-k", "5")
    page.click("#search-run")
    hits = page.locator("#search-results .hits-table tbody tr")
    expect(hits).to_have_count(5)
    expected = admin.post(f"/v1/collections/{name}/search",
                          json={"vector": stored, "k": 5, "include_metadata": True}).json()
    want = expected["results"][0]
    assert [hits.nth(i).get_attribute("data-id") for i in range(5)] == [h["id"] for h in want]
    shown_scores = [float(hits.nth(i).locator(".score").get_attribute("data-score") or "nan") for i in range(5)]
    assert shown_scores == pytest.approx([h["score"] for h in want], rel=1e-6, abs=1e-9)
    assert hits.nth(0).get_attribute("data-id") == "v3"
    assert hits.nth(0).locator(".metadata").text_content() == json.dumps(want[0]["metadata"], separators=(",", ":"))
    live = {w["worker"] for w in admin.get("/v1/workers").json()["workers"]}
    assert page.locator("#search-worker").text_content() in live
    assert float(page.locator("#search-took").text_content() or "nan") >= 0
    shoot(page, "search")

    # Bulk ingest: the upload's job with its progress.
    page.click("#tabs a[data-page=ingest]")
    card = page.locator(f'#ingest-list .ingest[data-job="{ingest_id}"]')
    expect(card.locator(".done")).to_have_text("2,000 / 2,000 vectors (100%)")
    expect(card.locator(".badge")).to_have_text("succeeded")
    shoot(page, "ingest")

    # Workers: both alive; one SIGKILLed (no goodbye) is shown gone once its heartbeat is TTL old.
    page.click("#tabs a[data-page=workers]")
    expect(page.locator("#workers-table tr.alive")).to_have_count(2)
    victim = s.workers[0]
    children = set(pool_children(victim.pid))
    victim_id = next(w["worker"] for w in admin.get("/v1/workers").json()["workers"] if w["pid"] in children)
    victim.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    victim.popen.wait(10)
    gone = page.locator(f'#workers-table tr.gone[data-worker="{victim_id}"]')
    expect(gone).to_be_visible(timeout=(HEARTBEAT_TTL_S + 10) * 1000)
    print(f"the console showed the killed worker gone {time.monotonic() - killed_at:.2f}s after SIGKILL")
    expect(page.locator("#workers-table tr.alive")).to_have_count(1)
    expect(page.locator("#workers-summary")).to_contain_text("1 alive, 1 gone")
    shoot(page, "workers")

    assert not crashes, crashes
    assert not outside, f"the console loaded something from outside the API: {outside}"
    page.close()
