"""The Celery tasks. Each is a job: claimed in its record, run, and finished with a result or an error.

Every task takes keyword arguments only, so that any Python producer can submit one by name, e.g.
`celery_app.send_task("vecq.add", kwargs={"collection": "docs", "vectors": [[...]], "ids": ["a"]})`;
the Celery task id is the job id, readable at `GET /v1/jobs/{id}`.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from common import collections, jobs, wal
from common import snapshots as snapshot_state
from common.celery_app import (
    ADD,
    CREATE_COLLECTION,
    DELETE,
    GET,
    POISON,
    PURGE,
    SEARCH,
    SNAPSHOT,
)
from common.codec import (
    as_float32,
    check_ids,
    check_metadata,
    decode_vectors,
    generated_ids,
    normalized,
    vectors_from_json,
)
from common.collections import Collection, new_collection
from common.errors import InvalidInput, NotFound, VecqError
from common.settings import get_settings
from worker import app, snapshot_files, state
from worker.index import build_index

log = logging.getLogger("vecq.jobs")
IDS_IN_RESULT_MAX = 10_000


def run_job(task: Task, job_type: str, collection: str | None, body: Callable[[state.ProcessState, str], Any]) -> None:
    """Claim, run, finish, log one line. Never lets an exception escape into Celery (or kill the child)."""
    st = state.current()
    job_id: str = task.request.id
    started = time.perf_counter()
    claim = jobs.claim(st.r, job_id, worker=st.worker, max_attempts=st.settings.max_attempts,
                       ttl=st.settings.job_ttl_s, job_type=job_type, collection=collection)
    if claim is jobs.Claim.SKIP:
        return
    error: dict[str, Any] | None = None
    result: Any = None
    if claim is jobs.Claim.POISONED:
        error = {"code": "poisoned", "field": None,
                 "message": f"gave up after {st.settings.max_attempts} deliveries: each one lost its worker"}
    else:
        try:
            result = body(st, job_id)
        except VecqError as exc:
            error = exc.to_dict()
        except SoftTimeLimitExceeded:
            error = {"code": "timeout", "message": "job exceeded its time limit", "field": None}
        except Exception as exc:
            log.exception("job %s (%s) raised", job_id, job_type)
            error = {"code": "internal", "message": f"{type(exc).__name__}: {exc}", "field": None}
    jobs.finish(st.r, job_id, result=result, error=error)
    duration_ms = (time.perf_counter() - started) * 1000
    status = "failed" if error else "succeeded"
    st.jobs_done += 1
    st.last_job = {"job_id": job_id, "type": job_type, "collection": collection, "status": status,
                   "duration_ms": round(duration_ms, 2), "at": time.time()}
    log.info("job=%s type=%s collection=%s status=%s duration_ms=%.2f worker=%s", job_id, job_type,
             collection, status, duration_ms, st.worker,
             extra={"job": st.last_job, "worker": st.worker})


def resolve(st: state.ProcessState, name: str, uid: str | None) -> Collection:
    copy = st.registry.copies.get(name)
    if copy is not None and uid is not None and copy.col.uid == uid:
        return copy.col
    col = collections.get(st.r, name)
    if uid is not None and col.uid != uid:
        raise NotFound(f"collection {name!r} was deleted", "name")
    return col


@app.task(name=CREATE_COLLECTION, bind=True)
def create_collection(self: Task, *, name: str, dim: int, metric: str = "l2", index: str = "Flat") -> None:
    def body(st: state.ProcessState, job_id: str) -> dict[str, Any]:
        if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= st.settings.max_dim:
            raise InvalidInput(f"dim must be an integer in 1..{st.settings.max_dim}", "dim")
        col = new_collection(name, dim, metric, index)
        build_index(dim, metric, index)  # FAISS is the judge of the description, and only workers import it
        collections.create(st.r, col, st.settings.max_collections)
        return {**col.public(), "count": 0, "lsn": "0-0"}

    run_job(self, "create_collection", name, body)


@app.task(name=ADD, bind=True)
def add(self: Task, *, collection: str, vectors: list[list[float]] | None = None, vectors_b64: str | None = None,
        ids: list[str] | None = None, metadata: list[dict[str, Any] | None] | None = None,
        uid: str | None = None, id_prefix: str | None = None, parent: str | None = None) -> None:
    """Upsert vectors given as `vectors` (JSON lists) or `vectors_b64` (float32 rows, little-endian).
    Omitted ids are derived from the job id (or id_prefix + row number), so a redelivery makes the same."""

    def body(st: state.ProcessState, job_id: str) -> dict[str, Any]:
        col = resolve(st, collection, uid)
        if vectors_b64 is not None:
            matrix = as_float32(decode_vectors(vectors_b64, col.dim))
        else:
            matrix = vectors_from_json(vectors, col.dim, max_rows=st.settings.max_vectors_per_request)
        vids, metas, first_row = ids, metadata, 0
        n = len(matrix)
        if vids is None:
            vids = ([f"{id_prefix}{first_row + i}" for i in range(n)] if id_prefix is not None
                    else generated_ids(parent or job_id, first_row, n))
        vids = check_ids(vids, n, st.settings.max_id_length)
        meta_json = check_metadata(metas, n, st.settings.max_metadata_bytes) if metas is not None else [None] * n
        if col.metric == "cosine":
            matrix = normalized(matrix)
        lsn = append_chunks(st, col, job_id, vids, matrix, meta_json, parent)
        maybe_snapshot(st, col)
        result: dict[str, Any] = {"count": n, "lsn": lsn}
        if n <= IDS_IN_RESULT_MAX:
            result["ids"] = vids
        return result

    run_job(self, "add", collection, body)


def append_chunks(st: state.ProcessState, col: Collection, job_id: str, ids: list[str], matrix: np.ndarray,
                  metadata: list[str | None], parent: str | None) -> str:
    rows_per_entry = max(1, st.settings.wal_chunk_bytes // (4 * col.dim))
    lsn = "0-0"
    for chunk, start in enumerate(range(0, len(ids), rows_per_entry)):
        end = start + rows_per_entry
        rows = np.ascontiguousarray(matrix[start:end], dtype="<f4")
        lsn = wal.append_add(st.r, col, f"{job_id}:{chunk}", ids[start:end], rows.tobytes(), metadata[start:end])
        if parent is None:
            jobs.add_progress(st.r, job_id, len(rows))
    return lsn


def maybe_snapshot(st: state.ProcessState, col: Collection) -> None:
    if wal.length(st.r, col) >= st.settings.snapshot_every_entries:
        app.send_task(SNAPSHOT, kwargs={"collection": col.name, "uid": col.uid}, queue=st.settings.queue)


@app.task(name=DELETE, bind=True)
def delete(self: Task, *, collection: str, ids: list[str], uid: str | None = None) -> None:
    def body(st: state.ProcessState, job_id: str) -> dict[str, Any]:
        col = resolve(st, collection, uid)
        if not isinstance(ids, list) or not ids:
            raise InvalidInput("must be a non-empty list of ids", "ids")
        vids = check_ids(ids, len(ids), st.settings.max_id_length)
        lsn, found = wal.append_delete(st.r, col, f"{job_id}:0", vids)
        return {"deleted": found, "lsn": lsn}

    run_job(self, "delete", collection, body)


@app.task(name=SEARCH, bind=True)
def search(self: Task, *, collection: str, vectors_b64: str, k: int = 10, uid: str | None = None,
           params: dict[str, Any] | None = None, include_metadata: bool = False, include_vectors: bool = False,
           consistency: str = "strong", min_lsn: str | None = None,
           groups: list[list[Any]] | None = None) -> None:
    """Search. `groups` ([n, k, include_metadata, include_vectors] per request) lets one job carry the
    queries of several coalesced requests; the result then has one entry per group."""

    def body(st: state.ProcessState, job_id: str) -> dict[str, Any]:
        col = resolve(st, collection, uid)
        copy = st.registry.ready(col, consistency, min_lsn)
        queries = decode_vectors(vectors_b64, col.dim)
        spec = groups or [[len(queries), k, include_metadata, include_vectors]]
        if sum(g[0] for g in spec) != len(queries):
            raise InvalidInput("groups do not add up to the query count", "groups")
        k_max = max(int(g[1]) for g in spec)
        if not 1 <= k_max <= st.settings.max_k:
            raise InvalidInput(f"k must be in 1..{st.settings.max_k}", "k")
        started = time.perf_counter()
        hits = copy.search(queries, k_max, params or {})
        took_ms = (time.perf_counter() - started) * 1000
        wanted = {vid for g, rows in _split(spec, hits) if g[2] for row in rows for vid, _, _ in row[: g[1]]}
        meta = dict(zip(wanted, wal.metadata(st.r, col, list(wanted)), strict=True)) if wanted else {}
        out = []
        for g, rows in _split(spec, hits):
            results = []
            for row in rows:
                listing = []
                for vid, score, pos in row[: g[1]]:
                    hit: dict[str, Any] = {"id": vid, "score": score}
                    if g[2]:
                        hit["metadata"] = meta.get(vid)
                    if g[3]:
                        hit["vector"] = copy.vector(pos)
                    listing.append(hit)
                results.append(listing)
            out.append({"results": results, "lsn": copy.applied, "took_ms": round(took_ms, 3),
                        "worker": st.worker})
        return out[0] if groups is None else {"groups": out, "worker": st.worker}

    run_job(self, "search", collection, body)


def _split(spec: list[list[Any]], hits: list[Any]) -> list[tuple[list[Any], list[Any]]]:
    out, start = [], 0
    for g in spec:
        out.append((g, hits[start : start + g[0]]))
        start += g[0]
    return out


@app.task(name=GET, bind=True)
def get_vector(self: Task, *, collection: str, id: str, uid: str | None = None,
               consistency: str = "strong") -> None:
    def body(st: state.ProcessState, job_id: str) -> dict[str, Any]:
        col = resolve(st, collection, uid)
        copy = st.registry.ready(col, consistency)
        pos = copy.position.get(id)
        if pos is None:
            raise NotFound(f"vector {id!r} not found", "id")
        return {"id": id, "vector": copy.vector(pos), "metadata": wal.metadata(st.r, col, [id])[0]}

    run_job(self, "get", collection, body)


@app.task(name=SNAPSHOT, bind=True)
def snapshot(self: Task, *, collection: str, uid: str | None = None) -> None:
    """Write a compacted snapshot of this worker's caught-up copy, then trim the WAL up to what it covers."""

    def body(st: state.ProcessState, job_id: str) -> dict[str, Any]:
        col = resolve(st, collection, uid)
        token = snapshot_state.lock(st.r, col, st.settings.task_time_limit_s)
        if token is None:
            return {"skipped": "another snapshot of this collection is running"}
        try:
            started = time.perf_counter()
            copy = st.registry.ready(col, "strong")
            compact = copy.compacted() if copy.dead else copy
            path = snapshot_files.write(st.settings.data_dir, compact)
            wal.trim(st.r, col, compact.applied)
            compact.trim_mark = compact.applied
            st.registry.copies[col.name] = compact
            seconds = time.perf_counter() - started
            snapshot_state.record(st.r, col, compact.applied, compact.count, seconds)
            return {"lsn": compact.applied, "count": compact.count, "dropped": len(copy.dead),
                    "path": str(path), "seconds": round(seconds, 3)}
        finally:
            snapshot_state.unlock(st.r, col, token)

    run_job(self, "snapshot", collection, body)


@app.task(name=PURGE, bind=True)
def purge(self: Task, *, collection: str, uid: str, dim: int = 1, metric: str = "l2", index: str = "Flat") -> None:
    """Remove a deleted collection's snapshot files (its Redis keys are gone already)."""

    def body(st: state.ProcessState, job_id: str) -> dict[str, Any]:
        col = Collection(name=collection, uid=uid, dim=dim, metric=metric, index=index, created_at=0)
        snapshot_files.remove(st.settings.data_dir, col)
        st.registry.forget(collection) if collection in st.registry.copies and \
            st.registry.copies[collection].col.uid == uid else None
        return {"purged": collection}

    run_job(self, "purge", collection, body)


if get_settings().enable_test_tasks:

    @app.task(name=POISON, bind=True)
    def poison(self: Task, *, collection: str | None = None) -> None:
        """Test-only: a job whose execution kills its own process, to prove redelivery is bounded."""

        def body(st: state.ProcessState, job_id: str) -> None:
            os.kill(os.getpid(), signal.SIGKILL)

        run_job(self, "poison", collection, body)

