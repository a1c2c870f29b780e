"""api/fast_search.py answers a valid search as the FastAPI route does, and hands everything else to the route.

A query parameter the fast path does not know (`other=1`, ignored by the route) sends the same request the
long way: both answers must be the same, successes and errors alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from api import fast_search
from api.strict_json import loads as strict_loads

DIM = 8


def vec(x: float = 0.0) -> list[float]:
    return [x] * DIM


@pytest.fixture(scope="module")
def name(api: httpx.Client, make_collection: Callable[..., str]) -> str:
    col = make_collection(dim=DIM)
    resp = api.post(f"/v1/collections/{col}/vectors?wait=30",
                    json={"vectors": [vec(1.0), vec(2.0)], "ids": ["a", "b"], "metadata": [{"n": 1}, {"n": 2}]})
    assert resp.status_code in (200, 201), resp.text
    return col


@pytest.fixture(scope="module")
def make_collection(api: httpx.Client) -> Callable[..., str]:  # module-scoped twin of conftest's
    import uuid

    def make(dim: int = 8) -> str:
        col = f"fast-{uuid.uuid4().hex[:10]}"
        resp = api.post("/v1/collections", json={"name": col, "dim": dim, "metric": "l2", "index": "Flat"})
        assert resp.status_code == 201, resp.text
        return col

    return make


CASES: list[tuple[str, dict[str, Any]]] = [
    ("plain", {"json": {"vector": vec(1.1), "k": 2}}),
    ("metadata", {"json": {"vector": vec(1.9), "k": 1, "include_metadata": True}}),
    ("filter-never", {"json": {"vector": vec(), "k": 1, "filter": {"$and": [{"n": 1}, {"n": 2}]}}}),
    ("k-too-big", {"json": {"vector": vec(), "k": 10**9}}),
    ("wrong-dim", {"json": {"vector": [1.0], "k": 1}}),
    ("both", {"json": {"vector": vec(), "vectors": [vec()]}}),
    ("bad-type", {"json": {"vector": vec(), "k": "3"}}),
    ("duplicate-key", {"content": b'{"k": 1, "k": 2, "vector": [0,0,0,0,0,0,0,0]}',
                       "headers": {"content-type": "application/json"}}),
    ("not-json", {"content": b"{nope", "headers": {"content-type": "application/json"}}),
    ("session-without-lsn", {"json": {"vector": vec(), "consistency": "session"}}),
]


def comparable(resp: httpx.Response) -> tuple[int, Any]:
    body = resp.json()
    if isinstance(body, dict):
        body.pop("took_ms", None)
        body.pop("worker", None)
    return resp.status_code, body


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_the_fast_path_answers_as_the_route_does(api: httpx.Client, name: str, case: tuple[str, Any]) -> None:
    _, kwargs = case
    fast = api.post(f"/v1/collections/{name}/search?wait=30", **kwargs)
    routed = api.post(f"/v1/collections/{name}/search?wait=30&other=1", **kwargs)
    assert comparable(fast) == comparable(routed), (fast.text, routed.text)


@pytest.mark.parametrize("query", ["wait=abc", "wait=-1", "wait=1e9", "wait=nan"])
def test_a_query_it_does_not_accept_is_judged_by_the_route(api: httpx.Client, name: str, query: str) -> None:
    resp = api.post(f"/v1/collections/{name}/search?{query}", json={"vector": vec(), "k": 1})
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "wait", resp.text


def test_unknown_collection_and_metrics_label(api: httpx.Client) -> None:
    resp = api.post("/v1/collections/no-such-thing-here/search", json={"vector": vec(), "k": 1})
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found", resp.text
    metrics = api.get("/metrics").text
    assert 'handler="/v1/collections/{name}/search",method="POST",status="404"' in metrics


def _count(metrics: str, status: int) -> float:
    label = f'handler="/v1/collections/{{name}}/search",method="POST",status="{status}"'
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("vecq_http_requests_total{") and label in line)


def test_the_fast_path_counts_its_answers_in_the_http_series(api: httpx.Client, name: str) -> None:
    """It answers in front of the metrics middleware, so it counts its requests itself, in the same series."""
    before = _count(api.get("/metrics").text, 200)
    for _ in range(3):
        assert api.post(f"/v1/collections/{name}/search?wait=30", json={"vector": vec(1.0), "k": 1}).status_code == 200
    assert _count(api.get("/metrics").text, 200) == before + 3


def test_a_chunked_body_goes_the_long_way_with_the_same_answer(api: httpx.Client, name: str) -> None:
    """No declared length: the fast path cannot bound what it reads, so the body limits and the route judge it."""
    raw = b'{"vector": [1.1,1.1,1.1,1.1,1.1,1.1,1.1,1.1], "k": 2}'
    chunked = api.post(f"/v1/collections/{name}/search?wait=30", content=iter([raw[:10], raw[10:]]),
                       headers={"content-type": "application/json"})
    fast = api.post(f"/v1/collections/{name}/search?wait=30", content=raw, headers={"content-type": "application/json"})
    assert "content-length" not in chunked.request.headers and comparable(chunked) == comparable(fast)


@pytest.mark.parametrize("raw", [
    b'{"vector": [0,0,0,0,0,0,0,0], "k": 1, "k": 2}',  # a duplicate orjson would keep quietly
    b'{"vector": [0,0,0,0,0,0,0,0], "params": {"nprobe": 1, "nprobe": 2}}',
    b'{"vector": [0,0,0,0,0,0,0,NaN]}',
    b'{"vector": [0,0,0,0,0,0,0,Infinity]}',
    b'{"vector": [0,0,0,0,0,0,0,0], "filter": {"tag": "a\\":b"}}',  # a key end inside a string: never fewer
    b'{"vector": [0,0,0,0,0,0,0,0], "filter": ' + b'[' * 5000 + b']' * 5000 + b'}',
])
def test_the_strict_parser_still_judges(api: httpx.Client, name: str, raw: bytes) -> None:
    headers = {"content-type": "application/json"}
    fast = api.post(f"/v1/collections/{name}/search?wait=30", content=raw, headers=headers)
    routed = api.post(f"/v1/collections/{name}/search?wait=30&other=1", content=raw, headers=headers)
    assert comparable(fast) == comparable(routed), (fast.text, routed.text)


@pytest.mark.parametrize("raw", [
    b'{"vector": [0.5, 1, -2e3, 0], "k": 3}',
    b'{"vectors": [[0.5, 1], [2, 3]], "filter": {"$or": [{"a": 1}, {"b": [1, "x", true, null]}]}}',
    b'{"vector": [0, 0], "filter": {"$or": [{"a": 1, "a": 2}]}}',  # a duplicate in a dict inside a list
    b'{"vector": [0, 0], "filter": {"$and": [[{"a": 1}], {"b": {"c": 1, "c": 1}}]}}',
    b'{"vector": [0, {"k": 1, "k": 2}]}',  # a dict among a vector's numbers
])
def test_fast_loads_agrees_with_the_strict_parser(raw: bytes) -> None:
    """The fast parser's result stands only when the body has no duplicate key, however deep."""
    try:
        expected: Any = strict_loads(raw)
    except ValueError as exc:
        expected = type(exc)
    try:
        got: Any = fast_search._loads(raw)
    except ValueError as exc:
        got = type(exc)
    assert got == expected
