"""Issue 6: bulk ingest (.npy, Parquet) through the API, the CLI and direct task submission."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from common import blobs, formats, jobs
from common.celery_app import ADD, make_celery
from common.errors import InvalidInput
from common.settings import Settings
from tests.helpers import count, ids_of, pool_children, search, wait_job
from vecq.client import AsyncClient, Client, JobFailed, VecqHTTPError
from vecq.stack import ROOT, Stack

NPY = {"content-type": "application/x-npy"}
PARQUET = {"content-type": "application/vnd.apache.parquet"}


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def blob_keys(r: redis.Redis) -> set[bytes]:
    return set(r.scan_iter(match="vecq:blob:*", count=1000))


def blobs_gone(r: redis.Redis, keep: frozenset[bytes] = frozenset(), timeout: float = 10) -> bool:
    """The job is finished first and its blob deleted right after: allow that moment."""
    deadline = time.monotonic() + timeout
    while not blob_keys(r) <= keep:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def cli(stack: Stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vecq.cli", "ingest", *args, "--url", stack.api_url or "",
                           "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


# Pure functions ------------------------------------------------------------------------------------------


def test_npy_layout_and_streamed_value_check() -> None:
    data = np.arange(5 * 3, dtype="<f8").reshape(5, 3)
    data[3, 2] = np.nan
    body = npy_bytes(data)
    assert formats.npy_layout(body[:5], complete=False) is None
    layout = formats.npy_layout(body, complete=True)
    assert layout is not None and (layout.rows, layout.cols, layout.dtype.str) == (5, 3, "<f8")
    assert layout.size == len(body)
    with pytest.raises(InvalidInput, match="truncated"):
        formats.check_npy(layout, 3, len(body) - 1)
    with pytest.raises(InvalidInput, match="dimension 3"):
        formats.check_npy(layout, 4)
    # values split at awkward places (mid-value) are still checked, and the bad row is named
    checker = formats.NpyValues(layout)
    with pytest.raises(InvalidInput) as bad:
        for i in range(0, len(body), 7):
            checker.feed(body[i : i + 7])
    assert bad.value.field == "vectors[3]"
    clean = npy_bytes(np.ones((4, 3), dtype="<f4"))
    ok = formats.NpyValues(formats.npy_layout(clean, complete=True))  # type: ignore[arg-type]
    for i in range(0, len(clean), 5):
        ok.feed(clean[i : i + 5])
    assert ok.values == 12
    overflow = npy_bytes(np.array([[1.0, 1e39]]))
    with pytest.raises(InvalidInput):
        formats.NpyValues(formats.npy_layout(overflow, complete=True)).feed(overflow)  # type: ignore[arg-type]


def _pieces(body: bytes, sizes: tuple[int, ...] = (1, 3, 2)) -> list[bytes]:
    """`body` cut into pieces of 1-3 bytes: what a client streaming a file may send, the first one under 8."""
    out, i = [], 0
    while i < len(body):
        size = sizes[len(out) % len(sizes)]
        out.append(body[i : i + size])
        i += size
    return out


@pytest.mark.parametrize("kind", ["npy", None])  # None: application/octet-stream, told apart by its magic
def test_upload_head_checks_a_body_cut_anywhere(kind: str | None) -> None:
    clean = np.random.default_rng(64).standard_normal((20, 3)).astype("<f4")
    head = formats.UploadHead(kind, dim=3)
    for piece in _pieces(npy_bytes(clean)):
        head.feed(piece)
    assert head.finish() == "npy" and head.values is not None and head.values.values == 60
    dirty = clean.copy()
    dirty[7, 2] = np.nan
    head = formats.UploadHead(kind, dim=3)
    with pytest.raises(InvalidInput) as bad:
        for piece in _pieces(npy_bytes(dirty)):
            head.feed(piece)
    assert bad.value.field == "vectors[7]"
    if kind is None:
        parquet = formats.UploadHead(None, dim=3)
        for piece in _pieces(parquet_bytes(pa.table({"vector": [[1.0, 2, 3]]}))):
            parquet.feed(piece)
        assert parquet.finish() == "parquet" and parquet.values is None


def test_parquet_footer_alone_gives_the_schema() -> None:
    table = pa.table({"id": ["a", "b"], "vector": [[1.0, 2.0], [3.0, 4.0]], "tag": ["x", None]})
    data = parquet_bytes(table)
    length = formats.parquet_footer_length(data[-8:], len(data))
    shape = formats.parquet_shape(data[-8 - length : -8], dim=2)
    assert shape.rows == 2 and shape.has_ids and shape.metadata_columns == ("tag",)
    with pytest.raises(InvalidInput) as no_vector:
        formats.parquet_shape(data[-8 - length : -8][:10], dim=2)
    assert no_vector.value.field == "body"
    with pytest.raises(InvalidInput):
        formats.parquet_footer_length(data[-9:-1], len(data))
    assert formats.table_metadata(table, 100) == ['{"tag":"x"}', None]


def test_blob_ranges_cross_segments() -> None:
    blob = blobs.Blob(id="b", size=25, segments=3, segment_bytes=10)
    assert list(blob.ranges(5, 22)) == [("vecq:blob:b-0", 5, 9), ("vecq:blob:b-1", 0, 9), ("vecq:blob:b-2", 0, 1)]
    with pytest.raises(InvalidInput):
        blobs.check_id("a-b")


def test_blob_round_trip(r: redis.Redis) -> None:
    data = os.urandom(1000)
    blob_id = blobs.put(r, data, ttl=60, segment_bytes=300, format="npy")
    blob = blobs.info(r, blob_id)
    assert blob.segments == 4 and blob.attrs["format"] == "npy"
    assert blobs.read(r, blob) == data and blobs.read(r, blob, 250, 620) == data[250:620]
    blobs.delete(r, blob_id)
    assert not any(blob_id.encode() in k for k in blob_keys(r))


# Through the API -----------------------------------------------------------------------------------------


def test_npy_50k_through_the_api(api: httpx.Client, make_collection, r: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(60)
    name = make_collection(dim=64)
    data = rng.standard_normal((50_000, 64)).astype(np.float32)
    before = frozenset(blob_keys(r))
    queued = api.post(f"/v1/collections/{name}/vectors", params={"id_prefix": "row-"}, content=npy_bytes(data),
                      headers=NPY)
    assert queued.status_code == 202, queued.text
    job = wait_job(api, queued.json()["job_id"], timeout=120)
    assert job["status"] == "succeeded", job
    assert job["type"] == "ingest" and job["progress"] == {"done": 50_000, "total": 50_000}
    assert job["result"]["count"] == 50_000 and "ids" not in job["result"]  # over 10,000: left out
    assert count(api, name) == 50_000
    picks = [0, 16_383, 16_384, 31_337, 49_999]  # both sides of a part boundary (16,384 rows of 64-d)
    res = search(api, name, data[picks], k=1)
    assert ids_of(res) == [[f"row-{i}"] for i in picks]
    assert res["results"][0][0]["score"] < 1e-4
    # the session lsn the job returned covers every part
    lsn = job["result"]["lsn"]
    assert ids_of(search(api, name, data[:1], k=1, consistency="session", min_lsn=lsn)) == [["row-0"]]
    assert blobs_gone(r, before), "the upload's blob is deleted once the job ends"


def test_npy_float64_generated_ids_and_wait(api: httpx.Client, make_collection) -> None:  # type: ignore[no-untyped-def]
    name = make_collection(dim=8, metric="cosine")
    data = np.random.default_rng(61).standard_normal((300, 8))  # float64
    resp = api.post(f"/v1/collections/{name}/vectors", params={"wait": 60}, content=npy_bytes(data), headers=NPY)
    assert resp.status_code == 200, resp.text
    ids = resp.json()["ids"]
    assert len(ids) == 300 == len(set(ids)) and resp.json()["count"] == 300
    assert ids_of(search(api, name, data[[7, 250]], k=1)) == [[ids[7]], [ids[250]]]


def _post_in_pieces(url: str, path: str, body: bytes, slow_bytes: int = 200) -> httpx.Response:
    """POST `body` as application/octet-stream in chunks of 1-3 bytes. The first `slow_bytes` go one chunk at a
    time with a pause after each, so that the API reads them as separate pieces (the magic and the .npy header
    arrive split), the rest as fast as they go."""
    async def chunks() -> AsyncIterator[bytes]:
        sent = 0
        for piece in _pieces(body):
            yield piece
            sent += len(piece)
            if sent <= slow_bytes:
                await asyncio.sleep(0.003)

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await client.post(path, params={"wait": 60}, content=chunks(),
                                     headers={"content-type": "application/octet-stream"})

    return asyncio.run(go())


def test_npy_in_chunks_of_a_few_bytes(api: httpx.Client, make_collection, r: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    """Issue 16, item 10: the kind, the header and the values of an octet-stream .npy are checked at the right
    offsets whatever the chunk boundaries: valid data is accepted and counted, a NaN refused, nothing stored."""
    name = make_collection(dim=3)
    data = np.random.default_rng(65).standard_normal((200, 3)).astype("<f4")
    resp = _post_in_pieces(str(api.base_url), f"/v1/collections/{name}/vectors", npy_bytes(data))
    assert resp.status_code == 200, resp.text
    assert resp.json()["count"] == 200 and count(api, name) == 200
    assert ids_of(search(api, name, data[[5]], k=1)) == [[resp.json()["ids"][5]]]
    before = frozenset(blob_keys(r))
    data[150, 1] = np.nan
    bad = _post_in_pieces(str(api.base_url), f"/v1/collections/{name}/vectors", npy_bytes(data))
    assert bad.status_code == 422, bad.text
    assert bad.json()["error"]["field"] == "vectors[150]"
    assert count(api, name) == 200
    assert blobs_gone(r, before), "a rejected upload leaves no blob behind"


def test_parquet_with_metadata_through_the_api(api: httpx.Client, make_collection) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(62)
    name = make_collection(dim=16)
    n = 20_000
    data = rng.standard_normal((n, 16)).astype(np.float32)
    table = pa.table({
        "id": [f"doc{i}" for i in range(n)],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(data.ravel()), 16),
        "title": [f"title {i}" for i in range(n)],
        "year": [1900 + i % 120 for i in range(n)],
        "score": [None if i % 3 == 0 else i / 7 for i in range(n)],
    })
    resp = api.post(f"/v1/collections/{name}/vectors", params={"wait": 120}, content=parquet_bytes(table),
                    headers=PARQUET)
    assert resp.status_code == 200, resp.text
    assert resp.json()["count"] == n
    assert count(api, name) == n
    res = search(api, name, data[[0, 1, 19_999]], k=1, include_metadata=True)
    hits = [row[0] for row in res["results"]]
    assert [h["id"] for h in hits] == ["doc0", "doc1", "doc19999"]
    assert hits[0]["metadata"] == {"title": "title 0", "year": 1900}  # null score left out
    assert hits[1]["metadata"] == {"title": "title 1", "year": 1901, "score": pytest.approx(1 / 7)}
    assert hits[2]["metadata"]["year"] == 1900 + 19_999 % 120
    # upsert: the same ids again with new vectors replace, never add
    moved = pa.table({"id": ["doc0"], "vector": [(data[0] + 100).tolist()], "title": ["moved"]})
    again = api.post(f"/v1/collections/{name}/vectors", params={"wait": 60}, content=parquet_bytes(moved),
                     headers=PARQUET)
    assert again.status_code == 200 and again.json()["ids"] == ["doc0"]
    assert count(api, name) == n
    top = search(api, name, [data[0] + 100], k=1, include_metadata=True)["results"][0][0]
    assert top["id"] == "doc0" and top["metadata"] == {"title": "moved"}


def test_parquet_without_ids_uses_prefix(api: httpx.Client, make_collection) -> None:  # type: ignore[no-untyped-def]
    name = make_collection(dim=3)
    table = pa.table({"vector": [[1.0, 0, 0], [0, 1.0, 0]], "k": ["a", "b"]})
    resp = api.post(f"/v1/collections/{name}/vectors", params={"wait": 60, "id_prefix": "p", "id_start": 10},
                    content=parquet_bytes(table), headers=PARQUET)
    assert resp.status_code == 200 and resp.json()["ids"] == ["p10", "p11"]
    with_ids = pa.table({"id": ["x"], "vector": [[1.0, 0, 0]]})
    clash = api.post(f"/v1/collections/{name}/vectors", params={"id_prefix": "p"}, content=parquet_bytes(with_ids),
                     headers=PARQUET)
    assert clash.status_code == 422 and clash.json()["error"]["field"] == "id_prefix"


def _np(shape: tuple[int, ...], dtype: str = "<f4", fill: float = 1.0) -> np.ndarray:
    return np.full(shape, fill, dtype=dtype)


def _with_nan() -> bytes:
    a = _np((100, 3))
    a[42, 1] = np.nan
    return npy_bytes(a)


def _bad_vector_late() -> bytes:
    # 40,000 rows: more than two parts; the bad one comes last, so partial writes would show
    a = np.random.default_rng(63).standard_normal((40_000, 3)).astype(np.float32)
    vectors = a.tolist()
    vectors[35_000] = [1.0, 2.0]
    return parquet_bytes(pa.table({"id": [f"r{i}" for i in range(40_000)], "vector": vectors}))


def _parquet_dup_ids() -> bytes:
    return parquet_bytes(pa.table({"id": ["a", "b", "a"], "vector": [[1.0, 2, 3]] * 3}))


def _parquet_nan() -> bytes:
    return parquet_bytes(pa.table({"vector": [[1.0, 2, 3], [1.0, float("nan"), 3]]}))


BAD_UPLOADS = {
    "truncated npy": (lambda: npy_bytes(_np((100, 3)))[:-10], NPY, "body"),
    "npy trailing bytes": (lambda: npy_bytes(_np((10, 3))) + b"xx", NPY, "body"),
    "float16 npy": (lambda: npy_bytes(_np((10, 3), "<f2")), NPY, "body"),
    "int64 npy": (lambda: npy_bytes(np.ones((10, 3), dtype="<i8")), NPY, "body"),
    "big-endian npy": (lambda: npy_bytes(_np((10, 3), ">f4")), NPY, "body"),
    "3-D npy": (lambda: npy_bytes(_np((4, 3, 1))), NPY, "body"),
    "1-D npy": (lambda: npy_bytes(_np((3,))), NPY, "body"),
    "fortran npy": (lambda: npy_bytes(np.asfortranarray(np.arange(30, dtype="<f4").reshape(10, 3))), NPY, "body"),
    "wrong dim npy": (lambda: npy_bytes(_np((10, 4))), NPY, "body"),
    "NaN in npy": (_with_nan, NPY, "vectors[42]"),
    "float32 overflow": (lambda: npy_bytes(_np((5, 3), "<f8", 1e39)), NPY, "vectors[0]"),
    "not npy": (lambda: b"hello, world" * 10, NPY, "body"),
    "empty": (lambda: b"", NPY, "body"),
    "malformed parquet": (lambda: b"PAR1" + os.urandom(300) + b"PAR1", PARQUET, "body"),
    "truncated parquet": (lambda: parquet_bytes(pa.table({"vector": [[1.0, 2, 3]]}))[:-20], PARQUET, "body"),
    "parquet without vector": (lambda: parquet_bytes(pa.table({"v": [[1.0, 2, 3]]})), PARQUET, "vector"),
    "parquet string vector": (lambda: parquet_bytes(pa.table({"vector": [["a", "b", "c"]]})), PARQUET, "vector"),
    "parquet wrong length late": (_bad_vector_late, PARQUET, "vectors[35000]"),
    "parquet duplicate ids": (_parquet_dup_ids, PARQUET, "ids[2]"),
    "parquet NaN": (_parquet_nan, PARQUET, "vectors[1]"),
    "octet-stream garbage": (lambda: os.urandom(64), {"content-type": "application/octet-stream"}, "body"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_uploads_are_422_and_apply_nothing(api: httpx.Client, make_collection, r: redis.Redis,  # type: ignore[no-untyped-def]
                                               case: str) -> None:
    make_body, headers, field = BAD_UPLOADS[case]
    name = make_collection(dim=3)
    api.post(f"/v1/collections/{name}/vectors", params={"wait": 30}, json={"vectors": [[1, 0, 0]], "ids": ["keep"]})
    before = blob_keys(r)
    resp = api.post(f"/v1/collections/{name}/vectors", params={"wait": 60}, content=make_body(), headers=headers)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == field, resp.json()
    assert count(api, name) == 1
    assert ids_of(search(api, name, [[1, 0, 0]], k=5)) == [["keep"]]
    assert blobs_gone(r, frozenset(before)), "a rejected upload leaves no blob behind"


def test_unsupported_content_type_is_415(api: httpx.Client, make_collection) -> None:  # type: ignore[no-untyped-def]
    name = make_collection(dim=3)
    resp = api.post(f"/v1/collections/{name}/vectors", content=b"1,2,3", headers={"content-type": "text/csv"})
    assert resp.status_code == 415, resp.text


def test_upload_limit_is_413(new_stack) -> None:  # type: ignore[no-untyped-def]
    stack = new_stack(workers=1, env={"VECQ_MAX_UPLOAD_BYTES": "65536"})
    with httpx.Client(base_url=stack.api_url or "", timeout=60) as api:
        assert api.post("/v1/collections", json={"name": "lim", "dim": 8}).status_code == 201
        big = npy_bytes(np.ones((2100, 8), dtype="<f4"))  # 67,328 bytes
        declared = api.post("/v1/collections/lim/vectors", content=big, headers=NPY)
        assert declared.status_code == 413 and declared.json()["error"]["field"] == "body"
        chunked = api.post("/v1/collections/lim/vectors", headers=NPY,
                           content=(big[i : i + 8192] for i in range(0, len(big), 8192)))
        assert chunked.status_code == 413, chunked.text
        small = api.post("/v1/collections/lim/vectors", params={"wait": 30}, headers=NPY,
                         content=npy_bytes(np.ones((1000, 8), dtype="<f4")))
        assert small.status_code == 200 and small.json()["count"] == 1000
        # A Parquet file of a few KB whose rows decode to 4 MB of vectors: refused from its footer, before any
        # worker decodes it (a zip bomb of vectors would otherwise take a worker's memory).
        bomb = io.BytesIO()
        column = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(131_072 * 8, dtype=np.float32)), 8)
        pq.write_table(pa.table({"vector": column}), bomb, compression="zstd")
        assert len(bomb.getvalue()) < 65536
        expands = api.post("/v1/collections/lim/vectors", content=bomb.getvalue(),
                           headers={"content-type": "application/vnd.apache.parquet"})
        assert expands.status_code == 413 and expands.json()["error"]["field"] == "body", expands.text
        r = redis.Redis.from_url(stack.redis_url or "")
        assert blobs_gone(r)
        r.close()


def test_failed_part_fails_the_parent(stack: Stack, api: httpx.Client, make_collection,  # type: ignore[no-untyped-def]
                                      r: redis.Redis) -> None:
    name = make_collection(dim=3)
    parent = uuid.uuid4().hex
    jobs.create(r, parent, "ingest", name, ttl=600, total=10)
    celery = make_celery(Settings(redis_url=stack.redis_url))
    # a part whose upload has expired: it fails, and so must the upload's job
    celery.send_task(ADD, kwargs={"collection": name, "blob": uuid.uuid4().hex, "rows": [0, 10], "parent": parent},
                     task_id=uuid.uuid4().hex, ignore_result=True)
    job = wait_job(api, parent, timeout=30)
    assert job["status"] == "failed" and job["error"]["field"] == "blob", job
    assert count(api, name) == 0


# Through the Python client and the CLI ---------------------------------------------------------------------


def test_client_sync_and_async(stack: Stack, make_collection, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    name = make_collection(dim=4)
    data = np.random.default_rng(64).standard_normal((2_000, 4)).astype(np.float32)
    np.save(tmp_path / "far.npy", data[:3] - 50)
    with Client(stack.api_url) as vq:
        assert name in [c.name for c in vq.list_collections()]
        job = vq.upload_npy(name, data, id_prefix="c")
        assert job.status == "succeeded" and job.result["count"] == 2_000 and job.progress.done == 2_000
        res = vq.search(name, data[5], k=1)
        assert res.results[0][0].id == "c5"
        added = vq.add(name, [[9, 9, 9, 9]], ids=["nine"], metadata=[{"n": 9}])
        assert added.result["ids"] == ["nine"]
        assert vq.get_collection(name).count == 2_001
        with pytest.raises(VecqHTTPError) as missing:
            vq.get_collection("no-such-collection")
        assert missing.value.status == 404 and missing.value.field == "name"
        with pytest.raises(JobFailed) as bad:
            vq.upload(name, pa.table({"vector": [[1.0, 2, 3, float("inf")]]}))
        assert bad.value.code == "invalid" and bad.value.field == "vectors[0]"

    async def run_async() -> None:
        async with AsyncClient(stack.api_url) as avq:
            job = await avq.upload(name, data[:10] + 50, id_prefix="a")
            assert job.result["ids"][0] == "a0"
            hits = await avq.search(name, data[:2] + 50, k=1, include_metadata=True)
            assert [row[0].id for row in hits.results] == ["a0", "a1"]
            from_file = await avq.upload(name, tmp_path / "far.npy", id_prefix="f")  # streamed from disk
            assert from_file.result["ids"] == ["f0", "f1", "f2"]
            assert (await avq.search(name, data[2] - 50, k=1)).results[0][0].id == "f2"
            assert (await avq.get_collection(name)).count == 2_014

    asyncio.run(run_async())


def test_cli_ingest_npy_50k_is_idempotent(stack: Stack, api: httpx.Client, tmp_path: Path) -> None:
    data = np.random.default_rng(65).standard_normal((50_000, 64)).astype(np.float32)
    path = tmp_path / "vectors.npy"
    np.save(path, data)
    name = f"cli-{uuid.uuid4().hex[:8]}"
    first = cli(stack, str(path), "--collection", name, "--create", "--batch", "20000", "--id-prefix", "v")
    assert first.returncode == 0, first.stderr
    assert "50000 vectors" in first.stdout and "count 0 -> 50000" in first.stdout, first.stdout
    assert count(api, name) == 50_000
    assert ids_of(search(api, name, data[[0, 19_999, 20_000, 49_999]], k=1)) == \
        [["v0"], ["v19999"], ["v20000"], ["v49999"]]
    again = cli(stack, str(path), "--collection", name, "--batch", "20000", "--id-prefix", "v")
    assert again.returncode == 0, again.stderr
    assert "count 50000 -> 50000" in again.stdout, again.stdout


def test_cli_ingest_parquet_fvecs_jsonl(stack: Stack, api: httpx.Client, tmp_path: Path) -> None:
    rng = np.random.default_rng(66)
    data = rng.standard_normal((3_000, 8)).astype(np.float32)
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(3_000)], "vector": data.tolist(),
                             "color": ["red" if i % 2 else "blue" for i in range(3_000)]}),
                   tmp_path / "v.parquet", row_group_size=700)
    fvecs = np.hstack([np.full((500, 1), 8, dtype="<i4").view("<f4"), data[:500] + 10])
    fvecs.tofile(tmp_path / "v.fvecs")
    with open(tmp_path / "v.jsonl", "w") as f:
        for i in range(200):
            extra = {"tag": "t"} if i % 2 else {"tag": 5}  # mixed types: no Parquet schema, sent as JSON
            f.write(json.dumps({"id": f"j{i}", "vector": (data[i] - 10).tolist(), **extra}) + "\n")
    name = f"cli-{uuid.uuid4().hex[:8]}"
    out = cli(stack, str(tmp_path / "v.parquet"), "--collection", name, "--create", "--metric", "cosine",
              "--batch", "1000")
    assert out.returncode == 0, out.stderr
    assert api.get(f"/v1/collections/{name}").json()["metric"] == "cosine"
    out = cli(stack, str(tmp_path / "v.fvecs"), "--collection", name, "--id-prefix", "f")
    assert out.returncode == 0, out.stderr
    out = cli(stack, str(tmp_path / "v.jsonl"), "--collection", name)
    assert out.returncode == 0, out.stderr
    assert count(api, name) == 3_700
    got = {h["id"]: h for h in
           (search(api, name, data[[1]], k=1, include_metadata=True)["results"][0]
            + search(api, name, [data[3] + 10], k=1)["results"][0]
            + search(api, name, [data[7] - 10], k=1, include_metadata=True)["results"][0])}
    assert got["p1"]["metadata"] == {"color": "red"}
    assert "f3" in got and got["j7"]["metadata"] == {"tag": "t"}
    wrong = cli(stack, str(tmp_path / "v.fvecs"), "--collection", "no-such-collection-x")
    assert wrong.returncode != 0 and "not found" in wrong.stderr


# Direct submission, no HTTP ----------------------------------------------------------------------------------


PRODUCER = textwrap.dedent("""
    import json, sys, time, uuid
    import numpy as np, redis
    from common import blobs, jobs
    from common.celery_app import make_celery
    from common.settings import get_settings

    name = sys.argv[1]
    settings = get_settings()  # VECQ_REDIS_URL from the environment
    app = make_celery(settings)
    r = redis.Redis.from_url(settings.effective_redis_url)
    data = np.load(sys.argv[2])
    add_id = uuid.uuid4().hex
    app.send_task("vecq.add", kwargs={"collection": name, "vectors": data[:100].tolist(),
                                      "ids": [f"d{i}" for i in range(100)],
                                      "metadata": [{"i": i} for i in range(100)]}, task_id=add_id)
    # a bulk payload goes by reference: a blob in Redis, then the ingest job
    blob = blobs.put(r, open(sys.argv[2], "rb").read(), ttl=600)
    ingest_id = uuid.uuid4().hex
    app.send_task("vecq.ingest", kwargs={"collection": name, "blob": blob, "id_prefix": "b", "id_start": 100},
                  task_id=ingest_id)
    out = {}
    deadline = time.time() + 60
    while len(out) < 2 and time.time() < deadline:
        for job_id in (add_id, ingest_id):
            raw = jobs.get(r, job_id)
            if raw and jobs.public(raw)["status"] in jobs.TERMINAL:
                out[job_id] = jobs.public(raw)
        time.sleep(0.05)
    print(json.dumps([out.get(add_id), out.get(ingest_id)]))
""")


def test_direct_submission_from_another_process(stack: Stack, api: httpx.Client, make_collection,  # type: ignore[no-untyped-def]
                                                tmp_path: Path) -> None:
    name = make_collection(dim=12)
    data = np.random.default_rng(67).standard_normal((5_000, 12)).astype(np.float32)
    np.save(tmp_path / "d.npy", data)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VECQ_")}
    env.update(VECQ_REDIS_URL=stack.redis_url or "", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", PRODUCER, name, str(tmp_path / "d.npy")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    add_job, ingest_job = json.loads(done.stdout.strip().splitlines()[-1])
    assert add_job["status"] == "succeeded" and add_job["result"]["ids"][:2] == ["d0", "d1"], add_job
    assert ingest_job["status"] == "succeeded" and ingest_job["result"]["count"] == 5_000, ingest_job
    assert ingest_job["progress"] == {"done": 5_000, "total": 5_000}
    assert count(api, name) == 5_100
    res = search(api, name, data[[3, 4_000]], k=2, include_metadata=True)
    assert {h["id"] for h in res["results"][0]} == {"d3", "b103"}
    assert next(h for h in res["results"][0] if h["id"] == "d3")["metadata"] == {"i": 3}
    assert ids_of(res)[1][0] == "b4100"
    # the job records are readable over HTTP too
    assert api.get(f"/v1/jobs/{ingest_job['job_id']}").json()["result"]["count"] == 5_000


# At least once delivery, exactly once effect ---------------------------------------------------------------


def running_parts(r: redis.Redis) -> dict[int, str]:
    """{pool child pid: add job id} of the add jobs whose records say running (stale once that child dies)."""
    names = [k for k in r.scan_iter(match="vecq:job:*", count=1000) if k.count(b":") == 2]
    with r.pipeline(transaction=False) as pipe:
        for key in names:
            pipe.hmget(key, "type", "status", "worker", "job_id")
        rows = pipe.execute()
    return {int(worker.rsplit(b"-", 1)[1]): job.decode() for kind, status, worker, job in rows
            if kind == b"add" and status == b"running" and worker}


def test_sigkill_mid_ingest_counts_every_vector_once(new_stack) -> None:  # type: ignore[no-untyped-def]
    n, dim = 200_000, 16
    stack = new_stack(workers=2, env={"VECQ_WAL_CHUNK_BYTES": "65536"})  # 1,024 rows a part: 196 parts
    r = redis.Redis.from_url(stack.redis_url or "")
    data = np.random.default_rng(68).standard_normal((n, dim)).astype(np.float32)
    with httpx.Client(base_url=stack.api_url or "", timeout=60) as api:
        assert api.post("/v1/collections", json={"name": "kill", "dim": dim}).status_code == 201
        queued = api.post("/v1/collections/kill/vectors", params={"id_prefix": "k"}, content=npy_bytes(data),
                          headers=NPY)
        job_id = queued.json()["job_id"]
        deadline = time.monotonic() + 60
        while (api.get(f"/v1/jobs/{job_id}").json().get("progress") or {}).get("done", 0) < n // 10:
            assert time.monotonic() < deadline, "the ingest did not start"
            time.sleep(0.01)
        # SIGKILL a pool child (of a worker this test started) that runs a part, until one dies in a part
        interrupted = None
        while interrupted is None and api.get(f"/v1/jobs/{job_id}").json()["status"] == "running":
            ours = {c for w in stack.workers for c in pool_children(w.pid)}
            busy = [pid for pid in running_parts(r) if pid in ours]
            if busy:
                os.kill(busy[0], 9)
                time.sleep(0.05)
                interrupted = running_parts(r).get(busy[0])  # the part it was in when it died, if any
            else:
                time.sleep(0.01)
        assert interrupted is not None, "the ingest ended before a kill hit a part: nothing was proven"
        job = wait_job(api, job_id, timeout=120)
        assert job["status"] == "succeeded", job
        assert job["progress"] == {"done": n, "total": n}  # a redelivered part is counted once
        assert count(api, "kill") == n
        uid = r.hget("vecq:col:kill", "uid").decode()  # type: ignore[union-attr]
        logged = [vid for _, f in r.xrange(f"vecq:c:kill:{uid}:wal") for vid in json.loads(f[b"ids"])]
        assert sorted(logged) == sorted(f"k{i}" for i in range(n))  # every vector in the log exactly once
        part = wait_job(api, interrupted, timeout=90)  # the killed part is delivered again, and ends well
        assert part["status"] == "succeeded" and part["attempts"] >= 2, part
        sample = [0, 123_456, n - 1]
        for _ in range(4):  # both workers' copies, the replaced child's too
            assert ids_of(search(api, "kill", data[sample], k=1)) == [[f"k{i}"] for i in sample]
    r.close()
