"""The client's own logic, without a server: retries of 503/429 (bounded, honouring Retry-After) and how error
answers become common.errors classes. A unit test of pure client code over httpx.MockTransport; the client
against the real API is tested in tests/test_ingest.py, tests/test_filtered_search.py and tests/test_cli.py."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Callable

import httpx
import numpy as np
import pytest

from common import errors
from common.schemas import Job
from vecq import client as client_module
from vecq.client import AsyncClient, Client, JobFailed, VecqHTTPError

COLLECTION = {"name": "docs", "dim": 2, "metric": "l2", "index": "Flat", "count": 3, "lsn": "1-0", "created_at": 0}


def error(status: int, code: str, retry_after: str | None = None) -> httpx.Response:
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    return httpx.Response(status, headers=headers, json={"error": {"code": code, "message": "try later",
                                                                   "field": None}})


def scripted(*answers: httpx.Response) -> tuple[list[httpx.Request], Callable[[httpx.Request], httpx.Response]]:
    """A handler answering the given responses in turn, and the requests it saw (their bodies read)."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        return answers[min(len(seen), len(answers)) - 1]

    return seen, handler


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits the client took before retrying, instead of taking them."""
    taken: list[float] = []

    async def async_sleep(seconds: float) -> None:
        taken.append(seconds)

    monkeypatch.setattr(client_module.time, "sleep", taken.append)
    monkeypatch.setattr(client_module.asyncio, "sleep", async_sleep)
    return taken


def sync_client(handler: Callable[[httpx.Request], httpx.Response], retries: int = 3,
                max_retry_wait: float = 10.0) -> Client:
    http = httpx.Client(base_url="http://vecq.test", transport=httpx.MockTransport(handler))
    return Client(http=http, retries=retries, max_retry_wait=max_retry_wait)


def test_503_and_429_are_retried_after_retry_after(sleeps: list[float]) -> None:
    seen, handler = scripted(error(503, "unavailable", "2"), error(429, "too_many_requests", "0.5"),
                             httpx.Response(200, json=COLLECTION))
    with sync_client(handler) as vq:
        assert vq.get_collection("docs").count == 3
    assert len(seen) == 3 and sleeps == [2.0, 0.5]


def test_retries_are_bounded_in_number_and_in_each_wait(sleeps: list[float]) -> None:
    seen, handler = scripted(error(503, "unavailable", "3600"))
    with sync_client(handler, retries=2, max_retry_wait=1.5) as vq, pytest.raises(errors.Unavailable) as refused:
        vq.list_collections()
    assert len(seen) == 3 and sleeps == [1.5, 1.5]  # two retries, each wait capped
    assert isinstance(refused.value, VecqHTTPError) and refused.value.status == 503


def test_without_retry_after_the_wait_backs_off(sleeps: list[float]) -> None:
    _, handler = scripted(error(503, "unavailable"))
    with sync_client(handler, retries=3) as vq, pytest.raises(VecqHTTPError):
        vq.list_collections()
    assert sleeps == [0.5, 1.0, 2.0]


def test_other_errors_are_not_retried(sleeps: list[float]) -> None:
    seen, handler = scripted(error(500, "internal", "1"))
    with sync_client(handler) as vq, pytest.raises(VecqHTTPError) as failed:
        vq.list_collections()
    assert len(seen) == 1 and sleeps == [] and failed.value.code == "internal"


def test_a_retried_upload_sends_its_whole_body_again(sleeps: list[float]) -> None:
    data = np.arange(12, dtype="<f4").reshape(4, 3)
    seen, handler = scripted(error(503, "unavailable", "0"),
                             httpx.Response(202, json={"job_id": "j1", "status": "queued"}))
    with sync_client(handler) as vq:
        job = vq.upload_npy("docs", data, wait=False)
    assert job.job_id == "j1" and len(seen) == 2
    assert seen[0].content == seen[1].content and len(seen[1].content) == int(seen[1].headers["content-length"])
    assert seen[1].content.endswith(data.tobytes())


def test_async_client_retries_the_same_way(sleeps: list[float]) -> None:
    seen, handler = scripted(error(429, "too_many_requests", "1"), httpx.Response(200, json=COLLECTION))

    async def go() -> int:
        http = httpx.AsyncClient(base_url="http://vecq.test", transport=httpx.MockTransport(handler))
        async with AsyncClient(http=http) as avq:
            return (await avq.get_collection("docs")).count

    assert asyncio.run(go()) == 3 and len(seen) == 2 and sleeps == [1.0]


def test_error_answers_are_the_common_error_classes() -> None:
    answers = {"/v1/collections/missing": httpx.Response(404, json={"error": {
                   "code": "not_found", "message": "collection not found", "field": "name"}}),
               "/v1/collections/teapot": httpx.Response(418, json={"error": {"code": "brewing", "message": "no"}}),
               "/v1/collections/proxy": httpx.Response(502, text="<html>bad gateway</html>")}
    with sync_client(lambda request: answers[request.url.path]) as vq:
        with pytest.raises(errors.NotFound) as missing:
            vq.get_collection("missing")
        with pytest.raises(VecqHTTPError) as newer:
            vq.get_collection("teapot")
        with pytest.raises(VecqHTTPError) as proxy:
            vq.get_collection("proxy")
    assert isinstance(missing.value, VecqHTTPError)
    assert (missing.value.status, missing.value.code, missing.value.field) == (404, "not_found", "name")
    assert str(missing.value) == "404 not_found: collection not found (field name)"
    assert (newer.value.status, newer.value.code) == (418, "brewing")  # a code this client does not know
    assert (proxy.value.status, proxy.value.code) == (502, "http_error") and "bad gateway" in proxy.value.message


def test_errors_survive_pickle() -> None:
    """A process pool or a task queue re-raises the client's errors in another process: same class, same fields."""
    for code in ("not_found", "invalid_input", "a_newer_servers_code"):
        error = client_module.http_error(404, code, "gone", "name")
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and isinstance(again, VecqHTTPError)
        assert (again.status, again.code, again.message, again.field, str(again)) == \
            (error.status, error.code, error.message, error.field, str(error))
    failed = JobFailed(Job.model_validate({"job_id": "j", "type": "add", "status": "failed",
                                           "error": {"code": "too_large", "message": "big", "field": "vectors"}}))
    again = pickle.loads(pickle.dumps(failed))
    assert type(again) is JobFailed and again.job == failed.job and (again.status, again.field) == (413, "vectors")


def test_job_failed_takes_its_status_from_the_one_table() -> None:
    failed = Job.model_validate({"job_id": "j", "type": "add", "status": "failed",
                                 "error": {"code": "too_large", "message": "big", "field": "vectors"}})
    canceled = Job.model_validate({"job_id": "k", "type": "add", "status": "canceled"})
    assert JobFailed(failed).status == errors.STATUS_BY_CODE["too_large"] == 413
    assert JobFailed(failed).field == "vectors" and JobFailed(failed).job is failed
    assert (JobFailed(canceled).code, JobFailed(canceled).status) == ("canceled", 409)
