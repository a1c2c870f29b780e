"""Issue #15: filtered search, count and delete by filter, metadata versioned in the log. Real redis-server and
Celery worker processes (the shared stack: 3 workers)."""

from __future__ import annotations

import json
import math
import random
import threading
import time
import uuid
from typing import Any

import httpx
import numpy as np
import pytest

from common import filters
from tests.helpers import add, delete, ids_of, search
from tests.test_filters import MALFORMED, random_doc, random_filter


def create(api: httpx.Client, dim: int, index: str = "Flat", metric: str = "l2") -> str:
    name = f"flt-{uuid.uuid4().hex[:10]}"
    resp = api.post("/v1/collections", json={"name": name, "dim": dim, "metric": metric, "index": index})
    assert resp.status_code == 201, resp.text
    return name


def brute(store: dict[str, tuple[np.ndarray, Any]], f: filters.Filter | None, q: np.ndarray, k: int) -> list[str]:
    ids = sorted(vid for vid, (_, meta) in store.items() if filters.matches(f, meta))
    if not ids:
        return []
    vectors = np.array([store[i][0] for i in ids], dtype=np.float64)
    scores = ((vectors - q.astype(np.float64)) ** 2).sum(1)
    return [ids[j] for j in np.argsort(scores, kind="stable")[:k]]


def test_flat_filtered_results_equal_brute_force_after_upserts_deletes_and_a_seal(api: httpx.Client) -> None:
    """Random filters of every operator over random metadata: the ids equal a numpy brute force over the matching
    rows, with rows in a sealed segment and in the growing one, some upserted and some deleted; count and
    count-by-filter agree with the reference semantics."""
    rng, prng, dim = np.random.default_rng(31), random.Random(31), 8
    name = create(api, dim)
    store: dict[str, tuple[np.ndarray, Any]] = {}

    def write(ids: list[str]) -> None:
        vectors = rng.standard_normal((len(ids), dim)).astype(np.float32)
        metas = [random_doc(prng) for _ in ids]
        add(api, name, vectors, ids, metadata=metas)
        store.update({vid: (v, m) for vid, v, m in zip(ids, vectors, metas, strict=True)})

    write([f"d{i}" for i in range(400)])
    assert api.post(f"/v1/collections/{name}/seal", params={"wait": 60}).json()["sealed"]
    write([f"d{i}" for i in range(0, 400, 5)])  # upserts of sealed rows: new vectors, new metadata
    write([f"e{i}" for i in range(100)])
    gone = [f"d{i}" for i in range(1, 400, 7)] + ["e3"]
    delete(api, name, gone)
    for vid in gone:
        store.pop(vid)
    queries = rng.standard_normal((1, dim)).astype(np.float32)
    checked = 0
    for _ in range(120):
        raw = random_filter(prng)
        f = filters.parse(raw)
        res = api.post(f"/v1/collections/{name}/search", json={"vector": queries[0].tolist(), "k": 5, "filter": raw})
        assert res.status_code == 200, (raw, res.text)
        assert ids_of(res.json()) == [brute(store, f, queries[0], 5)], raw
        checked += bool(res.json()["results"][0])
        counted = api.post(f"/v1/collections/{name}/count", json={"filter": raw}).json()
        assert counted["count"] == sum(filters.matches(f, m) for _, m in store.values()), raw
    assert checked > 40


def test_metadata_returned_is_the_searched_version(api: httpx.Client) -> None:
    """One id upserted back and forth between two (vector, metadata) pairs while others search it: every hit's
    vector and metadata come from the same write, under strong and eventual consistency."""
    name = create(api, 2)
    versions = [([1.0, 0.0], {"v": "a"}), ([0.0, 1.0], {"v": "b"})]
    expected = {json.dumps(m): vec for vec, m in versions}
    add(api, name, [versions[0][0]], ["x"], metadata=[versions[0][1]])
    stop = threading.Event()

    def flip() -> None:
        i = 0
        with httpx.Client(base_url=str(api.base_url), timeout=30) as writer:
            while not stop.is_set() and i < 400:
                vec, meta = versions[i % 2]
                writer.post(f"/v1/collections/{name}/vectors", params={"wait": 5},
                            json={"vectors": [vec], "ids": ["x"], "metadata": [meta]})
                i += 1

    thread = threading.Thread(target=flip)
    thread.start()
    torn = hits = 0
    deadline = time.monotonic() + 8
    try:
        while time.monotonic() < deadline:
            for consistency in ("strong", "eventual"):
                res = search(api, name, [[0.5, 0.5]], k=1, include_metadata=True, include_vectors=True,
                             consistency=consistency)
                for hit in res["results"][0]:
                    hits += 1
                    torn += hit["vector"] != expected[json.dumps(hit["metadata"])]
    finally:
        stop.set()
        thread.join(30)
    assert hits > 50 and torn == 0, (hits, torn)


def _sendable(raw: Any) -> bool:
    try:
        json.dumps(raw, allow_nan=True)
    except (TypeError, ValueError):
        return False
    return isinstance(raw, dict) and not any(isinstance(k, int) for k in raw)


@pytest.mark.parametrize(("raw", "field"), [case for case in MALFORMED if _sendable(case[0])])
def test_malformed_filters_answer_422_naming_the_path(api: httpx.Client, raw: Any, field: str) -> None:
    body = json.dumps({"vector": [0.0, 1.0], "filter": raw}, allow_nan=True)
    resp = api.post("/v1/collections/flt-malformed/search", content=body.encode("utf-8", "surrogatepass"),
                    headers={"content-type": "application/json"})
    if resp.status_code == 404:  # the collection is made once, by the first case
        assert api.post("/v1/collections", json={"name": "flt-malformed", "dim": 2}).status_code == 201
        resp = api.post("/v1/collections/flt-malformed/search", content=body.encode("utf-8", "surrogatepass"),
                        headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text
    if "NaN" in body or "Infinity" in body or "\\ud" in body:  # refused by the JSON layer, before the filter
        return
    assert resp.json()["error"]["field"] == field, resp.text


def test_hnsw_filtered_search_never_returns_fewer_than_k_and_reports_its_plan(api: httpx.Client) -> None:
    rng, dim = np.random.default_rng(32), 16
    name = create(api, dim, "HNSW32")
    n = 3000
    data = rng.standard_normal((n, dim)).astype(np.float32)
    metas = [{"group": i % 100, "rare": i % 1000 == 0} for i in range(n)]
    add(api, name, data, [f"h{i}" for i in range(n)], metadata=metas)
    assert api.post(f"/v1/collections/{name}/seal", params={"wait": 60}).json()["sealed"]
    q = rng.standard_normal(dim).tolist()
    for raw, matching in (({"group": 7}, 30), ({"rare": True}, 3), ({"group": {"$lt": 50}}, 1500)):
        res = api.post(f"/v1/collections/{name}/search", json={"vector": q, "k": 10, "filter": raw,
                                                                 "include_metadata": True}).json()
        row = res["results"][0]
        assert len(row) == min(10, matching), (raw, len(row))
        assert all(filters.matches(filters.parse(raw), h["metadata"]) for h in row)
        assert res["plan"] in ("index", "exact")
    few = api.post(f"/v1/collections/{name}/search", json={"vector": q, "k": 10, "filter": {"group": 7}}).json()
    assert few["plan"] == "exact"  # 30 matching rows: scored one by one
    empty = api.post(f"/v1/collections/{name}/search", json={"vector": q, "filter": {"group": {"$in": []}}}).json()
    assert empty["results"] == [[]] and empty["plan"] == "empty"


def test_score_threshold_offset_and_delete_by_filter(api: httpx.Client) -> None:
    name = create(api, 1)
    add(api, name, [[float(i)] for i in range(20)], [f"p{i}" for i in range(20)],
        metadata=[{"even": i % 2 == 0} for i in range(20)])
    page = lambda **extra: ids_of(search(api, name, [[0.0]], **extra))[0]  # noqa: E731
    assert page(k=5) == ["p0", "p1", "p2", "p3", "p4"]
    assert page(k=5, offset=5) == ["p5", "p6", "p7", "p8", "p9"]
    assert page(k=10, score_threshold=9.0) == ["p0", "p1", "p2", "p3"]  # squared L2 <= 9
    too_deep = api.post(f"/v1/collections/{name}/search", json={"vector": [0.0], "k": 1000, "offset": 9001})
    assert too_deep.status_code == 422 and too_deep.json()["error"]["field"] == "offset"
    resp = api.post(f"/v1/collections/{name}/vectors/delete", params={"wait": 30}, json={"filter": {"even": True}})
    assert resp.status_code == 200 and resp.json()["deleted"] == 10, resp.text
    assert page(k=3) == ["p1", "p3", "p5"]
    assert api.post(f"/v1/collections/{name}/count", json={}).json()["count"] == 10
    nothing = api.post(f"/v1/collections/{name}/vectors/delete", json={"filter": {}})
    assert nothing.status_code == 422 and nothing.json()["error"]["field"] == "filter"
    assert not math.isnan(search(api, name, [[0.0]], k=1)["results"][0][0]["score"])


def test_client_filters_count_and_delete_where(stack, api: httpx.Client) -> None:  # type: ignore[no-untyped-def]
    from vecq.client import Client

    name = create(api, 2)
    add(api, name, [[1, 0], [0, 1], [1, 1]], ["a", "b", "c"], metadata=[{"lang": "en"}, {"lang": "fr"}, None])
    with Client(stack.api_url) as vq:
        res = vq.search(name, [1.0, 0.0], k=3, filter={"lang": {"$in": ["en", "fr"]}}, include_metadata=True)
        assert [h.id for h in res.results[0]] == ["a", "b"] and res.plan == "index"
        assert vq.count(name, {"lang": "en"}) == 1 and vq.count(name) == 3
        assert vq.delete_where(name, {"lang": {"$exists": False}}) == 1
        assert vq.count(name) == 2


def test_cli_search_with_a_filter(stack, api: httpx.Client) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    from vecq.stack import ROOT

    name = create(api, 2)
    add(api, name, [[1, 0], [0.9, 0.1], [0, 1]], ["a", "b", "c"], metadata=[{"lang": "en"}, {"lang": "fr"}, None])
    out = subprocess.run([sys.executable, "-m", "vecq.cli", "search", name, "--vector", "[1, 0]", "-k", "3",
                          "--metadata", "--filter", '{"lang": {"$ne": "en"}}', "--url", stack.api_url],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    res = json.loads(out.stdout)
    assert [h["id"] for h in res["results"][0]] == ["b", "c"] and res["results"][0][0]["metadata"] == {"lang": "fr"}
    bad = subprocess.run([sys.executable, "-m", "vecq.cli", "search", name, "--vector", "[1, 0]", "--filter",
                          '{"lang": {"$regex": "e"}}', "--url", stack.api_url], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1 and "filter.lang.$regex" in bad.stderr
