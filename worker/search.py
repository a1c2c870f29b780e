"""Answering searches: one FAISS call for all the queries of a job, split back per request."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from common import filters
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
    offset: int = 0
    score_threshold: float | None = None

    @classmethod
    def from_message(cls, raw: dict[str, Any]) -> Member:
        threshold = raw.get("score_threshold")
        return cls(job_id=str(raw["job_id"]), n=int(raw["n"]), k=int(raw["k"]),
                   include_metadata=bool(raw.get("include_metadata")),
                   include_vectors=bool(raw.get("include_vectors")), offset=int(raw.get("offset") or 0),
                   score_threshold=float(threshold) if threshold is not None else None)


@dataclass(frozen=True)
class Limits:
    max_k: int
    max_k_with_offset: int
    exact_below: int


def parse_filter(text: str | None) -> filters.Filter | None:
    """A batch's filter, as the API sent it (canonical JSON); any producer's malformed one is refused the same."""
    if not text:
        return None
    try:
        raw = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        raise InvalidInput("must be a JSON object", "filter") from None
    return filters.parse(raw)


def run_search(copy: CollectionCopy, queries: np.ndarray, members: list[Member], params: dict[str, Any],
               limits: Limits, worker: str, where: filters.Filter | None = None) -> list[dict[str, Any]]:
    """Results per member, in order; the queries of all members are searched in one call. A hit's metadata and
    vector come from the row the search found: the same write, at the LSN searched."""
    if sum(m.n for m in members) != len(queries):
        raise InvalidInput("members do not add up to the query count", "members")
    if min(m.k for m in members) < 1 or max(m.k for m in members) > limits.max_k:
        raise InvalidInput(f"k must be in 1..{limits.max_k}", "k")
    depth = max(m.k + m.offset for m in members)
    if min(m.offset for m in members) < 0 or depth > limits.max_k_with_offset:
        raise InvalidInput(f"k + offset must be at most {limits.max_k_with_offset}", "offset")
    started = time.perf_counter()
    hits, plan = copy.find(queries, depth, params, where, limits.exact_below)
    took_ms = round((time.perf_counter() - started) * 1000, 3)
    closer = (lambda s, t: s <= t) if copy.col.metric == "l2" else (lambda s, t: s >= t)
    out, start = [], 0
    for m in members:
        rows = [row[m.offset: m.offset + m.k] for row in hits[start: start + m.n]]
        start += m.n
        if m.score_threshold is not None:
            rows = [[h for h in row if closer(h[1], m.score_threshold)] for row in rows]
        results = [[_hit(copy, m, vid, score, loc) for vid, score, loc in row] for row in rows]
        out.append({"results": results, "lsn": copy.applied, "took_ms": took_ms, "worker": worker, "plan": plan})
    return out


def _hit(copy: CollectionCopy, m: Member, vid: str, score: float, loc: Location) -> dict[str, Any]:
    hit: dict[str, Any] = {"id": vid, "score": score}
    if m.include_metadata:
        hit["metadata"] = copy.metadata(loc)
    if m.include_vectors:
        hit["vector"] = copy.vector(loc)
    return hit
