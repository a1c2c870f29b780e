"""A small typed client for vecq's HTTP API: `Client` (sync) and `AsyncClient` (async), over httpx.

    from vecq.client import Client

    with Client("http://127.0.0.1:8000", api_key=None) as vq:
        vq.create_collection("docs", dim=128, exist_ok=True)
        job = vq.upload("docs", "vectors.npy", id_prefix="doc-")      # .npy/.parquet path, array or Table
        hits = vq.search("docs", query, k=10, include_metadata=True)
        print(job.result["count"], hits.results[0][0].id)

Write methods (`add`, `upload`, `upload_npy`) return the job (`common.schemas.Job`): with `wait=True` once it
has finished (raising `JobFailed` if it failed), else as queued. HTTP errors raise `VecqHTTPError` with the
API's `code`, `message` and `field`.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from common.schemas import CollectionOut, Job, SearchResponse
from common.status import TERMINAL as TERMINAL

DEFAULT_URL = "http://127.0.0.1:8000"
NPY = "application/x-npy"
PARQUET = "application/vnd.apache.parquet"
PIECE_BYTES = 4 * 1024 * 1024  # what an upload sends per write

__all__ = ["AsyncClient", "Client", "JobFailed", "VecqHTTPError"]


class VecqHTTPError(Exception):
    """An error answer of the API: `{"error": {"code", "message", "field"}}` and its HTTP status."""

    def __init__(self, status: int | None, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{status or ''} {code}: {message}" + (f" (field {field})" if field else ""))
        self.status = status
        self.code = code
        self.message = message
        self.field = field


_STATUS_OF_CODE = {"invalid": 422, "not_found": 404, "conflict": 409, "too_large": 413, "forbidden": 403}


class JobFailed(VecqHTTPError):
    """A job that was waited for ended failed or canceled; `job.error` says why."""

    def __init__(self, job: Job) -> None:
        error = job.error
        code = error.code if error else job.status
        super().__init__(_STATUS_OF_CODE.get(code), code, error.message if error else f"job {job.status}",
                         error.field if error else None)
        self.job = job


def default_url(url: str | None = None) -> str:
    return url or os.environ.get("VECQ_URL") or DEFAULT_URL


def default_api_key(api_key: str | None = None) -> str | None:
    return api_key or os.environ.get("VECQ_API_KEY") or None


# What both clients share: building requests and reading answers (no I/O here) ----------------------------


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        error = resp.json()["error"]
        raise VecqHTTPError(resp.status_code, str(error.get("code")), str(error.get("message")), error.get("field"))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise VecqHTTPError(resp.status_code, "http_error", resp.text[:500] or resp.reason_phrase) from None


def _queued(resp: httpx.Response, job_type: str, collection: str) -> Job:
    _raise_for(resp)
    body = resp.json()
    return Job(job_id=body["job_id"], type=job_type, collection=collection, status=body.get("status", "queued"))


def _add_body(vectors: Any, ids: Sequence[str] | None, metadata: Sequence[dict[str, Any] | None] | None
              ) -> dict[str, Any]:
    body: dict[str, Any] = {"vectors": np.asarray(vectors, dtype=np.float64).tolist()}
    if ids is not None:
        body["ids"] = list(ids)
    if metadata is not None:
        body["metadata"] = list(metadata)
    return body


def _search_body(vectors: Any, k: int, params: dict[str, int] | None, include_metadata: bool,
                 include_vectors: bool, consistency: str, min_lsn: str | None, filter: dict[str, Any] | None = None,
                 offset: int = 0, score_threshold: float | None = None) -> dict[str, Any]:
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


def _as_npy_array(array: Any) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array, got shape {a.shape}")
    if a.dtype not in (np.dtype("<f4"), np.dtype("<f8")):
        a = a.astype("<f4")
    return np.ascontiguousarray(a)


def _npy_header(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, np.lib.format.header_data_from_array_1_0(array))
    return out.getvalue()


def _npy_pieces(array: np.ndarray) -> tuple[int, Iterator[bytes]]:
    """An array as .npy bytes, streamed from its own memory (no whole copy): (length, pieces)."""
    header = _npy_header(array)
    data = memoryview(array).cast("B")

    def pieces() -> Iterator[bytes]:
        yield header
        for i in range(0, len(data), PIECE_BYTES):
            yield bytes(data[i : i + PIECE_BYTES])

    return len(header) + len(data), pieces()


def _file_pieces(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while piece := f.read(PIECE_BYTES):
            yield piece


def _source(source: Any) -> tuple[str, int, Iterator[bytes] | bytes, Path | None]:
    """(content type, length, body, path) of an upload: a .npy or .parquet path, an array, or a pyarrow Table."""
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        suffix = path.suffix.lower()
        if suffix not in (".npy", ".parquet"):
            raise ValueError(f"upload takes .npy or .parquet files, got {path.name}")
        return (NPY if suffix == ".npy" else PARQUET), path.stat().st_size, _file_pieces(path), path
    if type(source).__module__.startswith("pyarrow"):
        import pyarrow.parquet as pq

        out = io.BytesIO()
        pq.write_table(source, out)
        return PARQUET, out.tell(), out.getvalue(), None
    length, pieces = _npy_pieces(_as_npy_array(source))
    return NPY, length, pieces, None


# Sync ------------------------------------------------------------------------------------------------------


class Client:
    """Sync client. `Client(url=None, api_key=None)`: defaults from $VECQ_URL / $VECQ_API_KEY."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0,
                 http: httpx.Client | None = None) -> None:
        key = default_api_key(api_key)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = http or httpx.Client(base_url=default_url(url), headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        resp = self.http.request(method, path, **kwargs)
        _raise_for(resp)
        return resp

    # Collections
    def create_collection(self, name: str, dim: int, metric: str = "l2", index: str = "Flat", *,
                          exist_ok: bool = False) -> CollectionOut:
        """Create a collection. With exist_ok, an existing one of the same dim is returned instead of a 409."""
        resp = self.http.post("/v1/collections", json={"name": name, "dim": dim, "metric": metric, "index": index})
        if resp.status_code == 409 and exist_ok:
            existing = self.get_collection(name)
            if existing.dim != dim:
                raise VecqHTTPError(409, "conflict", f"collection {name!r} exists with dim {existing.dim}", "dim")
            return existing
        if resp.status_code == 202:
            self.wait_job(resp.json()["job_id"])
            return self.get_collection(name)
        _raise_for(resp)
        return CollectionOut.model_validate(resp.json())

    def list_collections(self) -> list[CollectionOut]:
        return [CollectionOut.model_validate(c) for c in self._request("GET", "/v1/collections").json()["collections"]]

    def get_collection(self, name: str) -> CollectionOut:
        return CollectionOut.model_validate(self._request("GET", f"/v1/collections/{name}").json())

    def delete_collection(self, name: str) -> None:
        self._request("DELETE", f"/v1/collections/{name}")

    # Writes
    def add(self, name: str, vectors: Any, ids: Sequence[str] | None = None,
            metadata: Sequence[dict[str, Any] | None] | None = None, *, wait: bool = True,
            timeout: float | None = None) -> Job:
        """Upsert up to max_vectors_per_request vectors as JSON; use `upload` for more."""
        resp = self.http.post(f"/v1/collections/{name}/vectors", params={"wait": 0},
                              json=_add_body(vectors, ids, metadata))
        job = _queued(resp, "add", name)
        return self.wait_job(job.job_id, timeout=timeout) if wait else job

    def upload(self, name: str, source: Any, *, id_prefix: str | None = None, id_start: int = 0,
               wait: bool = True, timeout: float | None = None) -> Job:
        """Bulk upsert: `source` is a .npy or .parquet path, a 2-D array (sent as .npy) or a pyarrow Table
        (sent as Parquet). Rows without ids get `id_prefix` + (id_start + row), or generated ids."""
        content_type, length, body, _ = _source(source)
        resp = self.http.post(f"/v1/collections/{name}/vectors", params=_upload_params(id_prefix, id_start),
                              content=body, headers={"content-type": content_type, "content-length": str(length)})
        job = _queued(resp, "ingest", name)
        return self.wait_job(job.job_id, timeout=timeout) if wait else job

    def upload_npy(self, name: str, vectors: Any, *, id_prefix: str | None = None, id_start: int = 0,
                   wait: bool = True, timeout: float | None = None) -> Job:
        """The .npy path: an array (streamed from its memory, float32/float64 as they are) or a .npy file."""
        if not isinstance(vectors, str | os.PathLike):
            vectors = _as_npy_array(vectors)
        return self.upload(name, vectors, id_prefix=id_prefix, id_start=id_start, wait=wait, timeout=timeout)

    # Search
    def search(self, name: str, vectors: Any, k: int = 10, *, params: dict[str, int] | None = None,
               include_metadata: bool = False, include_vectors: bool = False, consistency: str = "strong",
               min_lsn: str | None = None, filter: dict[str, Any] | None = None, offset: int = 0,
               score_threshold: float | None = None, timeout: float | None = None) -> SearchResponse:
        """One query (1-D) or many (2-D); one result list per query. `filter` keeps the vectors whose metadata
        matches (docs/filters.md), e.g. `{"lang": "en", "year": {"$gte": 2020}}`."""
        body = _search_body(vectors, k, params, include_metadata, include_vectors, consistency, min_lsn, filter,
                            offset, score_threshold)
        resp = self._request("POST", f"/v1/collections/{name}/search", json=body)
        if resp.status_code == 202:  # the API's wait ran out: the job goes on
            return SearchResponse.model_validate(self.wait_job(resp.json()["job_id"], timeout=timeout).result)
        return SearchResponse.model_validate(resp.json())

    def count(self, name: str, filter: dict[str, Any] | None = None, *, consistency: str = "strong") -> int:
        """How many vectors match `filter` (all of them without one)."""
        body = {"filter": filter, "consistency": consistency}
        resp = self._request("POST", f"/v1/collections/{name}/count", params={"wait": 60}, json=body)
        return int(resp.json()["count"])

    def delete_where(self, name: str, filter: dict[str, Any], *, timeout: float | None = 60) -> int:
        """Delete every vector whose metadata matches `filter`; how many were deleted."""
        resp = self._request("POST", f"/v1/collections/{name}/vectors/delete", json={"filter": filter})
        return int(self.wait_job(resp.json()["job_id"], timeout=timeout).result["deleted"])

    # Jobs
    def get_job(self, job_id: str, wait: float = 0) -> Job:
        """The job record; `wait` long-polls up to that many seconds for it to end."""
        params = {"wait": wait} if wait else None
        return Job.model_validate(self._request("GET", f"/v1/jobs/{job_id}", params=params).json())

    def wait_job(self, job_id: str, timeout: float | None = None, *, check: bool = True) -> Job:
        """Until the job ends (TimeoutError after `timeout` seconds). With check, a failed job raises JobFailed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = 30.0 if deadline is None else deadline - time.monotonic()
            job = self.get_job(job_id, wait=max(0.05, min(30.0, remaining)))
            if job.status in TERMINAL:
                if check and job.status != "succeeded":
                    raise JobFailed(job)
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout}s")


# Async -----------------------------------------------------------------------------------------------------


async def _aiter(pieces: Iterator[bytes] | bytes, path: Path | None) -> AsyncIterator[bytes]:
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


class AsyncClient:
    """Async client, the same methods as `Client`, awaited."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0,
                 http: httpx.AsyncClient | None = None) -> None:
        key = default_api_key(api_key)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = http or httpx.AsyncClient(base_url=default_url(url), headers=headers, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        resp = await self.http.request(method, path, **kwargs)
        _raise_for(resp)
        return resp

    async def create_collection(self, name: str, dim: int, metric: str = "l2", index: str = "Flat", *,
                                exist_ok: bool = False) -> CollectionOut:
        resp = await self.http.post("/v1/collections",
                                    json={"name": name, "dim": dim, "metric": metric, "index": index})
        if resp.status_code == 409 and exist_ok:
            existing = await self.get_collection(name)
            if existing.dim != dim:
                raise VecqHTTPError(409, "conflict", f"collection {name!r} exists with dim {existing.dim}", "dim")
            return existing
        if resp.status_code == 202:
            await self.wait_job(resp.json()["job_id"])
            return await self.get_collection(name)
        _raise_for(resp)
        return CollectionOut.model_validate(resp.json())

    async def list_collections(self) -> list[CollectionOut]:
        resp = await self._request("GET", "/v1/collections")
        return [CollectionOut.model_validate(c) for c in resp.json()["collections"]]

    async def get_collection(self, name: str) -> CollectionOut:
        return CollectionOut.model_validate((await self._request("GET", f"/v1/collections/{name}")).json())

    async def delete_collection(self, name: str) -> None:
        await self._request("DELETE", f"/v1/collections/{name}")

    async def add(self, name: str, vectors: Any, ids: Sequence[str] | None = None,
                  metadata: Sequence[dict[str, Any] | None] | None = None, *, wait: bool = True,
                  timeout: float | None = None) -> Job:
        resp = await self.http.post(f"/v1/collections/{name}/vectors", params={"wait": 0},
                                    json=_add_body(vectors, ids, metadata))
        job = _queued(resp, "add", name)
        return await self.wait_job(job.job_id, timeout=timeout) if wait else job

    async def upload(self, name: str, source: Any, *, id_prefix: str | None = None, id_start: int = 0,
                     wait: bool = True, timeout: float | None = None) -> Job:
        content_type, length, body, path = _source(source)
        resp = await self.http.post(f"/v1/collections/{name}/vectors", params=_upload_params(id_prefix, id_start),
                                    content=_aiter(body, path),
                                    headers={"content-type": content_type, "content-length": str(length)})
        job = _queued(resp, "ingest", name)
        return await self.wait_job(job.job_id, timeout=timeout) if wait else job

    async def upload_npy(self, name: str, vectors: Any, *, id_prefix: str | None = None, id_start: int = 0,
                         wait: bool = True, timeout: float | None = None) -> Job:
        if not isinstance(vectors, str | os.PathLike):
            vectors = _as_npy_array(vectors)
        return await self.upload(name, vectors, id_prefix=id_prefix, id_start=id_start, wait=wait, timeout=timeout)

    async def search(self, name: str, vectors: Any, k: int = 10, *, params: dict[str, int] | None = None,
                     include_metadata: bool = False, include_vectors: bool = False, consistency: str = "strong",
                     min_lsn: str | None = None, filter: dict[str, Any] | None = None, offset: int = 0,
                     score_threshold: float | None = None, timeout: float | None = None) -> SearchResponse:
        body = _search_body(vectors, k, params, include_metadata, include_vectors, consistency, min_lsn, filter,
                            offset, score_threshold)
        resp = await self._request("POST", f"/v1/collections/{name}/search", json=body)
        if resp.status_code == 202:
            job = await self.wait_job(resp.json()["job_id"], timeout=timeout)
            return SearchResponse.model_validate(job.result)
        return SearchResponse.model_validate(resp.json())

    async def count(self, name: str, filter: dict[str, Any] | None = None, *, consistency: str = "strong") -> int:
        body = {"filter": filter, "consistency": consistency}
        resp = await self._request("POST", f"/v1/collections/{name}/count", params={"wait": 60}, json=body)
        return int(resp.json()["count"])

    async def delete_where(self, name: str, filter: dict[str, Any], *, timeout: float | None = 60) -> int:
        resp = await self._request("POST", f"/v1/collections/{name}/vectors/delete", json={"filter": filter})
        return int((await self.wait_job(resp.json()["job_id"], timeout=timeout)).result["deleted"])

    async def get_job(self, job_id: str, wait: float = 0) -> Job:
        params = {"wait": wait} if wait else None
        return Job.model_validate((await self._request("GET", f"/v1/jobs/{job_id}", params=params)).json())

    async def wait_job(self, job_id: str, timeout: float | None = None, *, check: bool = True) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = 30.0 if deadline is None else deadline - time.monotonic()
            job = await self.get_job(job_id, wait=max(0.05, min(30.0, remaining)))
            if job.status in TERMINAL:
                if check and job.status != "succeeded":
                    raise JobFailed(job)
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout}s")
