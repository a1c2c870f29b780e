"""Small HTTP helpers for the integration tests."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from common.status import TERMINAL


def add(api: httpx.Client, name: str, vectors: np.ndarray | list[list[float]], ids: list[str] | None = None,
        metadata: list[Any] | None = None, wait: float = 60) -> dict[str, Any]:
    body: dict[str, Any] = {"vectors": np.asarray(vectors, dtype=np.float64).tolist()}
    if ids is not None:
        body["ids"] = ids
    if metadata is not None:
        body["metadata"] = metadata
    resp = api.post(f"/v1/collections/{name}/vectors", params={"wait": wait}, json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()


def delete(api: httpx.Client, name: str, ids: list[str], wait: float = 60) -> dict[str, Any]:
    resp = api.post(f"/v1/collections/{name}/vectors/delete", params={"wait": wait}, json={"ids": ids})
    assert resp.status_code == 200, resp.text
    return resp.json()


def search(api: httpx.Client, name: str, queries: np.ndarray | list[list[float]], k: int = 10,
           **extra: Any) -> dict[str, Any]:
    resp = api.post(f"/v1/collections/{name}/search",
                    json={"vectors": np.asarray(queries, dtype=np.float64).tolist(), "k": k, **extra})
    assert resp.status_code == 200, resp.text
    return resp.json()


def ids_of(result: dict[str, Any]) -> list[list[str]]:
    return [[hit["id"] for hit in row] for row in result["results"]]


def count(api: httpx.Client, name: str) -> int:
    resp = api.get(f"/v1/collections/{name}")
    assert resp.status_code == 200, resp.text
    return int(resp.json()["count"])


def wait_job(api: httpx.Client, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        resp = api.get(f"/v1/jobs/{job_id}", params={"wait": min(10, max(0.1, deadline - time.monotonic()))})
        assert resp.status_code == 200, resp.text
        job = resp.json()
        if job["status"] in TERMINAL or time.monotonic() > deadline:
            return job


def brute_force(data: np.ndarray, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k with numpy: (indices, scores), scores as vecq reports them."""
    data64, q64 = data.astype(np.float64), queries.astype(np.float64)
    if metric == "cosine":
        data64 = data64 / np.linalg.norm(data64, axis=1, keepdims=True)
        q64 = q64 / np.linalg.norm(q64, axis=1, keepdims=True)
    if metric == "l2":
        scores = ((q64[:, None, :] - data64[None, :, :]) ** 2).sum(-1)
        order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    else:
        scores = q64 @ data64.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def pool_children(pid: int) -> list[int]:
    """Direct children of `pid` (the prefork pool of a Celery main process), from /proc."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out
