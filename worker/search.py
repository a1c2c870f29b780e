"""Answering searches: one FAISS call for all the queries of a job, split back per request."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from common import wal
from common.collections import Collection
from common.errors import InvalidInput
from worker.collection_copy import CollectionCopy, Location


@dataclass(frozen=True)
class Member:
    """One request's share of a search job: its rows of the query matrix and what it asked for."""

    job_id: str
    n: int
    k: int
    include_metadata: bool = False
    include_vectors: bool = False

    @classmethod
    def from_message(cls, raw: dict[str, Any]) -> Member:
        return cls(job_id=str(raw["job_id"]), n=int(raw["n"]), k=int(raw["k"]),
                   include_metadata=bool(raw.get("include_metadata")),
                   include_vectors=bool(raw.get("include_vectors")))


def run_search(r: redis.Redis, copy: CollectionCopy, queries: np.ndarray, members: list[Member],
               params: dict[str, Any], max_k: int, worker: str) -> list[dict[str, Any]]:
    """Results per member, in order; the queries of all members are searched in one call."""
    if sum(m.n for m in members) != len(queries):
        raise InvalidInput("members do not add up to the query count", "members")
    k_max = max(m.k for m in members)
    if min(m.k for m in members) < 1 or k_max > max_k:
        raise InvalidInput(f"k must be in 1..{max_k}", "k")
    started = time.perf_counter()
    hits = copy.search(queries, k_max, params)
    took_ms = round((time.perf_counter() - started) * 1000, 3)
    per_member, start = [], 0
    for m in members:
        per_member.append([row[: m.k] for row in hits[start : start + m.n]])
        start += m.n
    meta = _metadata(r, copy.col, members, per_member)
    out = []
    for m, rows in zip(members, per_member, strict=True):
        results = [[_hit(copy, m, vid, score, loc, meta) for vid, score, loc in row] for row in rows]
        out.append({"results": results, "lsn": copy.applied, "took_ms": took_ms, "worker": worker})
    return out


def _metadata(r: redis.Redis, col: Collection, members: list[Member], per_member: list[Any]) -> dict[str, Any]:
    wanted = sorted({vid for m, rows in zip(members, per_member, strict=True) if m.include_metadata
                     for row in rows for vid, _, _ in row})
    return dict(zip(wanted, wal.metadata(r, col, wanted), strict=True)) if wanted else {}


def _hit(copy: CollectionCopy, m: Member, vid: str, score: float, loc: Location,
         meta: dict[str, Any]) -> dict[str, Any]:
    hit: dict[str, Any] = {"id": vid, "score": score}
    if m.include_metadata:
        hit["metadata"] = meta.get(vid)
    if m.include_vectors:
        hit["vector"] = copy.vector(loc)
    return hit
