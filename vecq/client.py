"""A small typed client for vecq's HTTP API: `Client` (sync) and `AsyncClient` (async), over httpx.

    from vecq.client import Client

    with Client("http://127.0.0.1:8000", api_key=None) as vq:
        vq.create_collection("docs", dim=128, exist_ok=True)
        job = vq.upload("docs", "vectors.npy", id_prefix="doc-")      # .npy/.parquet path, array or Table
        hits = vq.search("docs", query, k=10, include_metadata=True)
        print(job.result["count"], hits.results[0][0].id)

Write methods (`add`, `upload`, `upload_npy`) return the job (`common.schemas.Job`): with `wait=True` once it
has finished (raising `JobFailed` if it failed), else as queued. An error answer of the API raises the
`common.errors` class of its code (`NotFound`, `InvalidInput`, ...) that is also a `VecqHTTPError`, with the
HTTP `status`, `code`, `message` and `field`. Answers 503 and 429 are retried (bounded, honouring Retry-After).

How the two clients share their code (the pattern of httpx's own BaseClient): every operation is written once,
in `BaseClient`, as a generator that yields the requests (`Call`) it needs and gets their responses sent back.
It does no I/O; `Client` runs it with blocking sends and `AsyncClient` with awaited ones. So what a method
sends, how it reads the answers and when it waits for a job are in one place.

This module and what it imports (common.schemas, common.errors, common.status, common.codec, common.filters)
need httpx, numpy and pydantic only: `pip install vecq` installs the client without the server.
"""

from __future__ import annotations

import asyncio
import io
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
import numpy as np

from common import errors
from common.errors import STATUS_BY_CODE, VecqError
from common.schemas import CollectionOut, Job, SearchResponse
from common.status import TERMINAL as TERMINAL
from common.status import JobStatus

DEFAULT_URL = "http://127.0.0.1:8000"
NPY = "application/x-npy"
PARQUET = "application/vnd.apache.parquet"
PIECE_BYTES = 4 * 1024 * 1024  # what an upload sends per write
DEFAULT_RETRIES = 3  # answers 503/429 retried at most this often per request
DEFAULT_MAX_RETRY_WAIT = 10.0  # seconds: no single wait before a retry is longer, whatever Retry-After says
LONG_POLL_S = 30.0  # one GET /v1/jobs/{id}?wait= of wait_job

__all__ = ["AsyncClient", "BaseClient", "Client", "JobFailed", "VecqHTTPError"]

T = TypeVar("T")


# Errors ----------------------------------------------------------------------------------------------------


class VecqHTTPError(VecqError):
    """An error answer of the API: `{"error": {"code", "message", "field"}}` and its HTTP `status`.

    What the client raises is a subclass that is also the `common.errors` class of the code (`error_class`), so
    `except VecqHTTPError`, `except errors.NotFound` and `except errors.VecqError` all catch a 404."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message, field)
        # Instance values over the class's: the status the server really answered, and a code this client may
        # not know (a newer server's) stays visible.
        self.status = status  # type: ignore[misc]
        self.code = code  # type: ignore[misc]

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}" + (f" (field {self.field})" if self.field else "")

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as the call that makes it again: its class is made at run time (error_class), so pickle cannot
        # name it, and its args are not its __init__'s (a process pool or a task queue re-raises it elsewhere).
        return http_error, (self.status, self.code, self.message, self.field)


_HTTP_ERROR_CLASSES: dict[type[VecqError], type[VecqHTTPError]] = {VecqError: VecqHTTPError}


def error_class(code: str) -> type[VecqHTTPError]:
    """The class the client raises for `code`: VecqHTTPError and the common.errors class of the code."""
    base = errors.CLASS_BY_CODE.get(code, VecqError)
    if base not in _HTTP_ERROR_CLASSES:
        made = type(base.__name__, (VecqHTTPError, base), {"__module__": __name__, "__qualname__": base.__name__})
        _HTTP_ERROR_CLASSES[base] = cast(type[VecqHTTPError], made)
    return _HTTP_ERROR_CLASSES[base]


def http_error(status: int, code: str, message: str, field: str | None = None) -> VecqHTTPError:
    return error_class(code)(status, code, message, field)


class JobFailed(VecqHTTPError):
    """A job that was waited for ended failed or canceled; `job.error` says why, `status` is the HTTP status
    its code has (`STATUS_BY_CODE`), as if the API had answered with it."""

    def __init__(self, job: Job) -> None:
        error = job.error
        code = error.code if error else str(job.status)
        super().__init__(STATUS_BY_CODE.get(code, VecqError.status), code,
                         error.message if error else f"job {job.status}", error.field if error else None)
        self.job = job

    def __reduce__(self) -> tuple[Any, ...]:
        return JobFailed, (self.job,)


def raise_for(resp: httpx.Response) -> None:
    """Raise the error an answer of 400 and above carries (a proxy's non-JSON error page too)."""
    if resp.status_code < 400:
        return
    try:
        error = resp.json()["error"]
        code, message, field = str(error["code"]), str(error.get("message", "")), error.get("field")
    except (ValueError, KeyError, TypeError):
        raise http_error(resp.status_code, "http_error", resp.text[:500] or resp.reason_phrase) from None
    raise http_error(resp.status_code, code, message, field if isinstance(field, str) else None)


def default_url(url: str | None = None) -> str:
    return url or os.environ.get("VECQ_URL") or DEFAULT_URL


def default_api_key(api_key: str | None = None) -> str | None:
    return api_key or os.environ.get("VECQ_API_KEY") or None


# Requests and bodies (no I/O) ------------------------------------------------------------------------------


Body = Iterator[bytes] | bytes


@dataclass(frozen=True)
class Call:
    """One request an operation needs. `body` is called once per attempt, so a retried upload is read again
    from its start; `file` is the file it reads, if any (the async client reads it in a thread)."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    body: Callable[[], Body] | None = None
    headers: dict[str, str] | None = None
    file: Path | None = None


Op = Generator[Call, httpx.Response, T]


def _add_body(vectors: Any, ids: Sequence[str] | None, metadata: Sequence[dict[str, Any] | None] | None
              ) -> dict[str, Any]:
    body: dict[str, Any] = {"vectors": np.asarray(vectors, dtype=np.float64).tolist()}
    if ids is not None:
        body["ids"] = list(ids)
    if metadata is not None:
        body["metadata"] = list(metadata)
    return body


def _search_body(vectors: Any, k: int, params: dict[str, int] | None, include_metadata: bool,
                 include_vectors: bool, consistency: str, min_lsn: str | None, filter: dict[str, Any] | None,
                 offset: int, score_threshold: float | None) -> dict[str, Any]:
    q = np.asarray(vectors, dtype=np.float64)
    body: dict[str, Any] = {"vector": q.tolist()} if q.ndim == 1 else {"vectors": q.tolist()}
    body.update(k=k, include_metadata=include_metadata, include_vectors=include_vectors, consistency=consistency)
    optional = {"params": params or None, "min_lsn": min_lsn, "filter": filter or None, "offset": offset or None,
                "score_threshold": score_threshold}
    body.update({key: value for key, value in optional.items() if value is not None})
    return body


def _upload_params(id_prefix: str | None, id_start: int) -> dict[str, Any]:
    params: dict[str, Any] = {"wait": 0}
    if id_prefix is not None:
        params["id_prefix"] = id_prefix
    if id_start:
        params["id_start"] = id_start
    return params


def _as_npy_array(array: Any) -> np.ndarray[Any, Any]:
    a = np.asarray(array)
    if a.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array, got shape {a.shape}")
    if a.dtype not in (np.dtype("<f4"), np.dtype("<f8")):
        a = a.astype("<f4")
    return np.ascontiguousarray(a)


def _npy_header(array: np.ndarray[Any, Any]) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, np.lib.format.header_data_from_array_1_0(array))
    return out.getvalue()


def _npy_pieces(array: np.ndarray[Any, Any]) -> tuple[int, Callable[[], Iterator[bytes]]]:
    """An array as .npy bytes, streamed from its own memory (no whole copy): (length, pieces)."""
    header = _npy_header(array)
    data = array.data.cast("B")  # the array is C-contiguous (_as_npy_array)

    def pieces() -> Iterator[bytes]:
        yield header
        for i in range(0, len(data), PIECE_BYTES):
            yield bytes(data[i : i + PIECE_BYTES])

    return len(header) + len(data), pieces


def _file_pieces(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while piece := f.read(PIECE_BYTES):
            yield piece


@dataclass(frozen=True)
class Upload:
    content_type: str
    length: int
    body: Callable[[], Body]
    file: Path | None = None


def _upload_source(source: Any) -> Upload:
    """An upload's body: a .npy or .parquet path, an array (sent as .npy), or a pyarrow Table (sent as Parquet)."""
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        suffix = path.suffix.lower()
        if suffix not in (".npy", ".parquet"):
            raise ValueError(f"upload takes .npy or .parquet files, got {path.name}")
        return Upload(NPY if suffix == ".npy" else PARQUET, path.stat().st_size, lambda: _file_pieces(path), path)
    if type(source).__module__.startswith("pyarrow"):
        import pyarrow.parquet as pq  # only a caller holding a pyarrow Table gets here: pyarrow is installed

        out = io.BytesIO()
        pq.write_table(source, out)
        data = out.getvalue()
        return Upload(PARQUET, len(data), lambda: data)
    length, pieces = _npy_pieces(_as_npy_array(source))
    return Upload(NPY, length, pieces)


def retry_after(resp: httpx.Response) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    value = resp.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


# The operations, once for both clients ---------------------------------------------------------------------


class BaseClient:
    """What `Client` and `AsyncClient` share: configuration, the retry rule and every operation as an `Op`."""

    def __init__(self, url: str | None, api_key: str | None, *, retries: int, max_retry_wait: float) -> None:
        self.base_url = default_url(url)
        key = default_api_key(api_key)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.retries = retries
        self.max_retry_wait = max_retry_wait

    def retry_delay(self, resp: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before sending the request again, or None to take this answer.

        Only 503 (Redis unreachable, no capacity) and 429 (a lane full) are retried. vecq answers them before
        the request had any effect (nothing written, no job queued), so retrying is safe for every method,
        writes included. The wait is the server's Retry-After, else an exponential backoff; each wait is at
        most `max_retry_wait`, and after `retries` retries the error answer is the caller's."""
        if resp.status_code not in errors.RETRYABLE or attempt >= self.retries:
            return None
        asked = retry_after(resp)
        backoff = 0.5 * 2**attempt
        return min(self.max_retry_wait, backoff if asked is None else asked)

    # Collections

    def _create_collection(self, name: str, dim: int, metric: str, index: str, exist_ok: bool
                           ) -> Op[CollectionOut]:
        resp = yield Call("POST", "/v1/collections", json={"name": name, "dim": dim, "metric": metric,
                                                           "index": index})
        if resp.status_code == 409 and exist_ok:
            existing = yield from self._get_collection(name)
            if existing.dim != dim:
                raise http_error(409, "conflict", f"collection {name!r} exists with dim {existing.dim}", "dim")
            return existing
        if resp.status_code == 202:
            yield from self._wait_job(resp.json()["job_id"], None, True)
            return (yield from self._get_collection(name))
        raise_for(resp)
        return CollectionOut.model_validate(resp.json())

    def _list_collections(self) -> Op[list[CollectionOut]]:
        resp = yield from self._checked(Call("GET", "/v1/collections"))
        return [CollectionOut.model_validate(c) for c in resp.json()["collections"]]

    def _get_collection(self, name: str) -> Op[CollectionOut]:
        resp = yield from self._checked(Call("GET", f"/v1/collections/{name}"))
        return CollectionOut.model_validate(resp.json())

    def _delete_collection(self, name: str) -> Op[None]:
        yield from self._checked(Call("DELETE", f"/v1/collections/{name}"))

    def _workers(self) -> Op[dict[str, Any]]:
        resp = yield from self._checked(Call("GET", "/v1/workers"))
        return cast(dict[str, Any], resp.json())

    # Writes

    def _add(self, name: str, vectors: Any, ids: Sequence[str] | None,
             metadata: Sequence[dict[str, Any] | None] | None, wait: bool, timeout: float | None) -> Op[Job]:
        resp = yield from self._checked(Call("POST", f"/v1/collections/{name}/vectors", params={"wait": 0},
                                             json=_add_body(vectors, ids, metadata)))
        return (yield from self._queued(resp, "add", name, wait, timeout))

    def _upload(self, name: str, source: Any, id_prefix: str | None, id_start: int, wait: bool,
                timeout: float | None) -> Op[Job]:
        upload = _upload_source(source)
        headers = {"content-type": upload.content_type, "content-length": str(upload.length)}
        resp = yield from self._checked(Call("POST", f"/v1/collections/{name}/vectors",
                                             params=_upload_params(id_prefix, id_start), body=upload.body,
                                             headers=headers, file=upload.file))
        return (yield from self._queued(resp, "ingest", name, wait, timeout))

    def _queued(self, resp: httpx.Response, job_type: str, collection: str, wait: bool, timeout: float | None
                ) -> Op[Job]:
        body = resp.json()
        job = Job(job_id=body["job_id"], type=job_type, collection=collection,
                  status=body.get("status", JobStatus.QUEUED))
        if not wait:
            return job
        return (yield from self._wait_job(job.job_id, timeout, True))

    def _delete_where(self, name: str, filter: dict[str, Any], timeout: float | None) -> Op[int]:
        resp = yield from self._checked(Call("POST", f"/v1/collections/{name}/vectors/delete",
                                             json={"filter": filter}))
        job = yield from self._wait_job(resp.json()["job_id"], timeout, True)
        return int(job.result["deleted"])

    # Reads

    def _search(self, name: str, body: dict[str, Any], timeout: float | None) -> Op[SearchResponse]:
        resp = yield from self._checked(Call("POST", f"/v1/collections/{name}/search", json=body))
        if resp.status_code == 202:  # the API's wait ran out: the job goes on
            job = yield from self._wait_job(resp.json()["job_id"], timeout, True)
            return SearchResponse.model_validate(job.result)
        return SearchResponse.model_validate(resp.json())

    def _count(self, name: str, filter: dict[str, Any] | None, consistency: str) -> Op[int]:
        resp = yield from self._checked(Call("POST", f"/v1/collections/{name}/count", params={"wait": 60},
                                             json={"filter": filter, "consistency": consistency}))
        return int(resp.json()["count"])

    # Jobs

    def _get_job(self, job_id: str, wait: float) -> Op[Job]:
        resp = yield from self._checked(Call("GET", f"/v1/jobs/{job_id}", params={"wait": wait} if wait else None))
        return Job.model_validate(resp.json())

    def _cancel_job(self, job_id: str) -> Op[Job]:
        resp = yield from self._checked(Call("DELETE", f"/v1/jobs/{job_id}"))
        return Job.model_validate(resp.json())

    def _wait_job(self, job_id: str, timeout: float | None, check: bool) -> Op[Job]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = LONG_POLL_S if deadline is None else deadline - time.monotonic()
            job = yield from self._get_job(job_id, max(0.05, min(LONG_POLL_S, remaining)))
            if job.status in TERMINAL:
                if check and job.status != JobStatus.SUCCEEDED:
                    raise JobFailed(job)
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout}s")

    @staticmethod
    def _checked(call: Call) -> Op[httpx.Response]:
        resp = yield call
        raise_for(resp)
        return resp


def _finish(op: Op[T], send: Callable[[Call], httpx.Response]) -> T:
    try:
        call = next(op)
        while True:
            call = op.send(send(call))
    except StopIteration as done:
        return cast(T, done.value)


# Sync ------------------------------------------------------------------------------------------------------


class Client(BaseClient):
    """Sync client. `Client(url=None, api_key=None)`: defaults from $VECQ_URL / $VECQ_API_KEY. `retries` and
    `max_retry_wait` bound the retries of 503/429 answers (see `BaseClient.retry_delay`)."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0,
                 http: httpx.Client | None = None, retries: int = DEFAULT_RETRIES,
                 max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT) -> None:
        super().__init__(url, api_key, retries=retries, max_retry_wait=max_retry_wait)
        self.http = http or httpx.Client(base_url=self.base_url, headers=self.headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _send(self, call: Call) -> httpx.Response:
        attempt = 0
        while True:
            resp = self.http.request(call.method, call.path, params=call.params, json=call.json,
                                     content=call.body() if call.body else None, headers=call.headers)
            delay = self.retry_delay(resp, attempt)
            if delay is None:
                return resp
            time.sleep(delay)
            attempt += 1

    def _run(self, op: Op[T]) -> T:
        return _finish(op, self._send)

    # Collections
    def create_collection(self, name: str, dim: int, metric: str = "l2", index: str = "Flat", *,
                          exist_ok: bool = False) -> CollectionOut:
        """Create a collection. With exist_ok, an existing one of the same dim is returned instead of a 409."""
        return self._run(self._create_collection(name, dim, metric, index, exist_ok))

    def list_collections(self) -> list[CollectionOut]:
        return self._run(self._list_collections())

    def get_collection(self, name: str) -> CollectionOut:
        return self._run(self._get_collection(name))

    def delete_collection(self, name: str) -> None:
        self._run(self._delete_collection(name))

    def workers(self) -> dict[str, Any]:
        """`GET /v1/workers`: live workers, the copies they hold, queue depths."""
        return self._run(self._workers())

    # Writes
    def add(self, name: str, vectors: Any, ids: Sequence[str] | None = None,
            metadata: Sequence[dict[str, Any] | None] | None = None, *, wait: bool = True,
            timeout: float | None = None) -> Job:
        """Upsert up to max_vectors_per_request vectors as JSON; use `upload` for more."""
        return self._run(self._add(name, vectors, ids, metadata, wait, timeout))

    def upload(self, name: str, source: Any, *, id_prefix: str | None = None, id_start: int = 0,
               wait: bool = True, timeout: float | None = None) -> Job:
        """Bulk upsert: `source` is a .npy or .parquet path, a 2-D array (sent as .npy) or a pyarrow Table
        (sent as Parquet). Rows without ids get `id_prefix` + (id_start + row), or generated ids."""
        return self._run(self._upload(name, source, id_prefix, id_start, wait, timeout))

    def upload_npy(self, name: str, vectors: Any, *, id_prefix: str | None = None, id_start: int = 0,
                   wait: bool = True, timeout: float | None = None) -> Job:
        """The .npy path: an array (streamed from its memory, float32/float64 as they are) or a .npy file."""
        if not isinstance(vectors, str | os.PathLike):
            vectors = _as_npy_array(vectors)
        return self.upload(name, vectors, id_prefix=id_prefix, id_start=id_start, wait=wait, timeout=timeout)

    def delete_where(self, name: str, filter: dict[str, Any], *, timeout: float | None = 60) -> int:
        """Delete every vector whose metadata matches `filter`; how many were deleted."""
        return self._run(self._delete_where(name, filter, timeout))

    # Reads
    def search(self, name: str, vectors: Any, k: int = 10, *, params: dict[str, int] | None = None,
               include_metadata: bool = False, include_vectors: bool = False, consistency: str = "strong",
               min_lsn: str | None = None, filter: dict[str, Any] | None = None, offset: int = 0,
               score_threshold: float | None = None, timeout: float | None = None) -> SearchResponse:
        """One query (1-D) or many (2-D); one result list per query. `filter` keeps the vectors whose metadata
        matches (docs/filters.md), e.g. `{"lang": "en", "year": {"$gte": 2020}}`."""
        body = _search_body(vectors, k, params, include_metadata, include_vectors, consistency, min_lsn, filter,
                            offset, score_threshold)
        return self._run(self._search(name, body, timeout))

    def count(self, name: str, filter: dict[str, Any] | None = None, *, consistency: str = "strong") -> int:
        """How many vectors match `filter` (all of them without one)."""
        return self._run(self._count(name, filter, consistency))

    # Jobs
    def get_job(self, job_id: str, wait: float = 0) -> Job:
        """The job record; `wait` long-polls up to that many seconds for it to end."""
        return self._run(self._get_job(job_id, wait))

    def cancel_job(self, job_id: str) -> Job:
        """Cancel a queued job (its record, now canceled); a job that already ran raises Conflict (409)."""
        return self._run(self._cancel_job(job_id))

    def wait_job(self, job_id: str, timeout: float | None = None, *, check: bool = True) -> Job:
        """Until the job ends (TimeoutError after `timeout` seconds). With check, a failed job raises JobFailed."""
        return self._run(self._wait_job(job_id, timeout, check))


# Async -----------------------------------------------------------------------------------------------------


async def _aiter(pieces: Body, path: Path | None) -> AsyncIterator[bytes]:
    if isinstance(pieces, bytes):
        yield pieces
        return
    if path is None:  # an array in memory: slicing it is cheap
        for piece in pieces:
            yield piece
        return
    while True:  # a file: read in a thread, so the event loop keeps running
        piece = await asyncio.to_thread(next, pieces, b"")
        if not piece:
            return
        yield piece


class AsyncClient(BaseClient):
    """Async client, the same methods as `Client`, awaited."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0,
                 http: httpx.AsyncClient | None = None, retries: int = DEFAULT_RETRIES,
                 max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT) -> None:
        super().__init__(url, api_key, retries=retries, max_retry_wait=max_retry_wait)
        self.http = http or httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _send(self, call: Call) -> httpx.Response:
        attempt = 0
        while True:
            resp = await self.http.request(call.method, call.path, params=call.params, json=call.json,
                                           content=_aiter(call.body(), call.file) if call.body else None,
                                           headers=call.headers)
            delay = self.retry_delay(resp, attempt)
            if delay is None:
                return resp
            await asyncio.sleep(delay)
            attempt += 1

    async def _run(self, op: Op[T]) -> T:
        try:
            call = next(op)
            while True:
                call = op.send(await self._send(call))
        except StopIteration as done:
            return cast(T, done.value)

    async def create_collection(self, name: str, dim: int, metric: str = "l2", index: str = "Flat", *,
                                exist_ok: bool = False) -> CollectionOut:
        return await self._run(self._create_collection(name, dim, metric, index, exist_ok))

    async def list_collections(self) -> list[CollectionOut]:
        return await self._run(self._list_collections())

    async def get_collection(self, name: str) -> CollectionOut:
        return await self._run(self._get_collection(name))

    async def delete_collection(self, name: str) -> None:
        await self._run(self._delete_collection(name))

    async def workers(self) -> dict[str, Any]:
        return await self._run(self._workers())

    async def add(self, name: str, vectors: Any, ids: Sequence[str] | None = None,
                  metadata: Sequence[dict[str, Any] | None] | None = None, *, wait: bool = True,
                  timeout: float | None = None) -> Job:
        return await self._run(self._add(name, vectors, ids, metadata, wait, timeout))

    async def upload(self, name: str, source: Any, *, id_prefix: str | None = None, id_start: int = 0,
                     wait: bool = True, timeout: float | None = None) -> Job:
        return await self._run(self._upload(name, source, id_prefix, id_start, wait, timeout))

    async def upload_npy(self, name: str, vectors: Any, *, id_prefix: str | None = None, id_start: int = 0,
                         wait: bool = True, timeout: float | None = None) -> Job:
        if not isinstance(vectors, str | os.PathLike):
            vectors = _as_npy_array(vectors)
        return await self.upload(name, vectors, id_prefix=id_prefix, id_start=id_start, wait=wait, timeout=timeout)

    async def delete_where(self, name: str, filter: dict[str, Any], *, timeout: float | None = 60) -> int:
        return await self._run(self._delete_where(name, filter, timeout))

    async def search(self, name: str, vectors: Any, k: int = 10, *, params: dict[str, int] | None = None,
                     include_metadata: bool = False, include_vectors: bool = False, consistency: str = "strong",
                     min_lsn: str | None = None, filter: dict[str, Any] | None = None, offset: int = 0,
                     score_threshold: float | None = None, timeout: float | None = None) -> SearchResponse:
        body = _search_body(vectors, k, params, include_metadata, include_vectors, consistency, min_lsn, filter,
                            offset, score_threshold)
        return await self._run(self._search(name, body, timeout))

    async def count(self, name: str, filter: dict[str, Any] | None = None, *, consistency: str = "strong") -> int:
        return await self._run(self._count(name, filter, consistency))

    async def get_job(self, job_id: str, wait: float = 0) -> Job:
        return await self._run(self._get_job(job_id, wait))

    async def cancel_job(self, job_id: str) -> Job:
        return await self._run(self._cancel_job(job_id))

    async def wait_job(self, job_id: str, timeout: float | None = None, *, check: bool = True) -> Job:
        return await self._run(self._wait_job(job_id, timeout, check))
