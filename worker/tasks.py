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
from typing import Any, TypeVar

import numpy as np
import redis.exceptions
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from common import blobs, collections, jobs, segments, stats, wal
from common.celery_app import (
    ADD,
    COMPACT,
    COUNT,
    CREATE_COLLECTION,
    DELETE,
    GET,
    INGEST,
    POISON,
    PURGE,
    SEAL,
    SEARCH,
)
from common.codec import (
    as_float32,
    check_ids,
    check_metadata,
    decode_vectors,
    normalized,
    rows_per_wal_entry,
    vectors_from_json,
)
from common.collections import Collection, new_collection
from common.errors import InvalidInput, NotFound, VecqError
from common.settings import get_settings
from worker import app, ingest, sealing, segment_files, state
from worker.index import probe, spec_kind
from worker.search import Limits, Member, parse_filter, run_search

log = logging.getLogger("vecq.jobs")
IDS_IN_RESULT_MAX = 10_000
DEFERRED = object()  # a body's result meaning "another job finishes this record" (a bulk ingest's last part)
REDIS_OUTAGE_S = 120.0  # how long a job waits for Redis to come back (a restart, an AOF load) before giving up
T = TypeVar("T")


def through_outage(step: Callable[[], T], job_id: str, what: str) -> T:
    """Run `step`; while Redis is unreachable, wait for it and run `step` again, for at most REDIS_OUTAGE_S.

    Only for steps that a redelivery would run again anyway: the claim, a job's body (WAL appends are deduplicated
    by job and chunk, so an append that ran but whose reply was lost finds its LSN), the finish. Without this, a
    Redis restart under load left jobs `running` for the job TTL: the error escaped into Celery, which acked the
    message, so nobody ever finished it (found by bench/soak.py)."""
    deadline = time.monotonic() + REDIS_OUTAGE_S
    delay = 0.2
    while True:
        try:
            return step()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:  # BusyLoading included
            if time.monotonic() >= deadline:
                raise
            log.warning("job=%s %s: redis unavailable (%s); again in %.1fs", job_id, what, exc, delay)
            time.sleep(delay)
            delay = min(2.0, delay * 2)


def run_job(task: Task, job_type: str, collection: str | None, body: Callable[[state.ProcessState, str], Any],
            on_fail: Callable[[dict[str, Any]], None] | None = None, listed: bool = True) -> None:
    """Claim, run, finish, log one line. Never lets an exception escape into Celery (or kill the child).
    A body that returns DEFERRED leaves the record running; `on_fail` hears of any error (poisoned too).
    `listed`: a record made at claim time goes into the recent jobs (common/jobs.py)."""
    st = state.current()
    job_id: str = task.request.id
    started = time.perf_counter()
    claim = through_outage(lambda: jobs.claim(st.r, job_id, worker=st.worker, max_attempts=st.settings.max_attempts,
                                              ttl=st.settings.job_ttl_s, job_type=job_type, collection=collection,
                                              listed=listed), job_id, "claim")
    if claim is jobs.Claim.SKIP:
        return
    error: dict[str, Any] | None = None
    result: Any = None
    if claim is jobs.Claim.POISONED:
        error = {"code": "poisoned", "field": None,
                 "message": f"gave up after {st.settings.max_attempts} deliveries: each one lost its worker"}
    else:
        try:
            result = through_outage(lambda: body(st, job_id), job_id, job_type)
        except VecqError as exc:
            error = exc.to_dict()
        except SoftTimeLimitExceeded:
            error = {"code": "timeout", "message": "job exceeded its time limit", "field": None}
        except Exception as exc:
            log.exception("job %s (%s) raised", job_id, job_type)
            error = {"code": "internal", "message": f"{type(exc).__name__}: {exc}", "field": None}
    if error is not None and on_fail is not None:
        try:
            on_fail(error)
        except Exception:
            log.exception("job %s (%s): on_fail raised", job_id, job_type)
    deferred = result is DEFERRED and error is None
    finished = False if deferred else through_outage(lambda: jobs.finish(st.r, job_id, result=result, error=error),
                                                     job_id, "finish")
    duration_ms = (time.perf_counter() - started) * 1000
    status = "deferred" if deferred else "failed" if error else "succeeded"
    if finished:  # counted once, by whoever made the record terminal
        stats.count_jobs(st.r, [(job_type, status, duration_ms / 1000)])
    st.jobs_done += 1
    st.last_job = {"job_id": job_id, "type": job_type, "collection": collection, "status": status,
                   "duration_ms": round(duration_ms, 2), "at": time.time()}
    log.info("job=%s type=%s collection=%s status=%s duration_ms=%.2f worker=%s", job_id, job_type,
             collection, status, duration_ms, st.worker,
             extra={"job": st.last_job, "worker": st.worker})


def limits(st: state.ProcessState) -> Limits:
    s = st.settings
    return Limits(max_k=s.max_k, max_k_with_offset=s.max_k_with_offset, exact_below=s.filter_exact_below)


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
        probe(dim, metric, index)  # FAISS is the judge of the description, and only workers import it
        # Owned by this job: its own redelivery (its worker died after the create) finds the record it made.
        col = collections.create(st.r, col, st.settings.max_collections, owner=job_id)
        return {**col.public(), "count": 0, "lsn": "0-0"}

    run_job(self, "create_collection", name, body)


@app.task(name=ADD, bind=True)
def add(self: Task, *, collection: str, vectors: list[list[float]] | None = None, vectors_b64: str | None = None,
        ids: list[str] | None = None, metadata: list[dict[str, Any] | None] | None = None,
        uid: str | None = None, id_prefix: str | None = None, parent: str | None = None,
        blob: str | None = None, rows: list[int] | None = None, id_start: int = 0,
        chunk_rows: int | None = None) -> None:
    """Upsert vectors given as `vectors` (JSON lists), `vectors_b64` (float32 rows, little-endian) or `blob`
    (an upload in Redis, see common/blobs.py: .npy or Parquet; `rows` [start, end) of it, default all).
    Omitted ids are derived from the job id (or id_prefix + id_start + row number), so a redelivery makes the
    same. With `parent`, this job is one part of a bulk ingest (worker/ingest.py) and reports to it. `chunk_rows`
    (rows per WAL entry) is fixed by the submitter; without it, this worker's VECQ_WAL_CHUNK_BYTES decides."""

    def body(st: state.ProcessState, job_id: str) -> dict[str, Any]:
        if parent is not None and ingest.parent_over(st, parent):
            return {"skipped": "the ingest job this part belongs to has ended"}
        col = resolve(st, collection, uid)
        meta_json: list[str | None] | None = None
        vids, metas, first_row = ids, metadata, 0
        if blob is not None:
            loaded = ingest.load(st, col, blob, rows)
            matrix, first_row, meta_json = loaded.matrix, loaded.first_row, loaded.metadata
            if loaded.ids is not None:
                if ids is not None:
                    raise InvalidInput("the upload has ids already", "ids")
                vids = loaded.ids
            if loaded.metadata is not None and metadata is not None:
                raise InvalidInput("the upload has metadata already", "metadata")
        elif vectors_b64 is not None:
            matrix = as_float32(decode_vectors(vectors_b64, col.dim))
        else:
            matrix = vectors_from_json(vectors, col.dim, max_rows=st.settings.max_vectors_per_request)
        n = len(matrix)
        if vids is None:
            vids = ingest.row_ids(parent or job_id, id_prefix, id_start, first_row, n)
        vids = check_ids(vids, n, st.settings.max_id_length)
        if meta_json is None:
            meta_json = check_metadata(metas, n, st.settings.max_metadata_bytes) if metas is not None else [None] * n
        if col.metric == "cosine":
            matrix = normalized(matrix)
        per_entry = int(chunk_rows) if chunk_rows else rows_per_wal_entry(st.settings.wal_chunk_bytes, col.dim)
        lsn = append_chunks(st, col, job_id, vids, matrix, meta_json, parent, per_entry)
        result: dict[str, Any] = {"count": n, "lsn": lsn}
        if parent is not None and blob is not None and rows is not None:
            # An upload is sealed once, when its last part lands, not once per threshold: so its rows are built
            # into one segment (one HNSW build) instead of several that a compaction builds again.
            finished = ingest.part_done(st, col, parent, blob, rows, n)
            maybe_seal(st, col, n, hold=not finished)
            return result
        maybe_seal(st, col, n)
        if blob is not None:
            blobs.delete(st.r, blob)  # consumed
        if n <= IDS_IN_RESULT_MAX:
            result["ids"] = vids
        return result

    def fail_parent(error: dict[str, Any]) -> None:
        if parent is not None:
            ingest.fail_parent(state.current(), parent, blob, error)

    # The parts of a bulk ingest stay out of the recent jobs: their parent shows the progress.
    run_job(self, "add", collection, body, on_fail=fail_parent, listed=parent is None)


@app.task(name=INGEST, bind=True)
def ingest_upload(self: Task, *, collection: str, blob: str, uid: str | None = None, id_prefix: str | None = None,
                  id_start: int = 0) -> None:
    """Bulk ingest of an upload (`blob`, see common/blobs.py): validate it whole, then fan out `vecq.add`
    parts; the last part finishes this job with {"count", "lsn", "ids" (up to 10,000)}."""

    def body(st: state.ProcessState, job_id: str) -> Any:
        try:
            col = resolve(st, collection, uid)
        except VecqError:
            blobs.delete(st.r, blob)
            raise
        ingest.run_parent(st, job_id, col, blob, id_prefix, int(id_start), IDS_IN_RESULT_MAX)
        return DEFERRED

    run_job(self, "ingest", collection, body)


def append_chunks(st: state.ProcessState, col: Collection, job_id: str, ids: list[str], matrix: np.ndarray,
                  metadata: list[str | None], parent: str | None, rows_per_entry: int) -> str:
    lsn = "0-0"
    for chunk, start in enumerate(range(0, len(ids), rows_per_entry)):
        end = start + rows_per_entry
        rows = np.ascontiguousarray(matrix[start:end], dtype="<f4")
        lsn = wal.append_add(st.r, col, f"{job_id}:{chunk}", ids[start:end], rows.tobytes(), metadata[start:end])
        if parent is None:
            jobs.set_progress(st.r, job_id, start + len(rows))
    return lsn


def maybe_seal(st: state.ProcessState, col: Collection, rows: int, hold: bool = False) -> None:
    """Count the rows written since the newest seal and enqueue a seal once they pass `seal_every_rows` (or
    `seal_every_bytes` of vectors; a trained spec waits for the rows to train on); one request at a time per
    collection (a request is forgotten after the job time limit, in case its job was lost). `hold` counts
    without requesting."""
    s = st.settings
    due_at = max(1, min(s.seal_every_rows, s.seal_every_bytes // (4 * col.dim)))
    kind = spec_kind(col.dim, col.metric, col.index)
    if kind.trains:
        due_at = max(due_at, kind.train_rows)
    if hold:
        due_at = 1 << 62
    if segments.note_writes(st.r, col, rows, due_at, stale_s=s.task_time_limit_s):
        app.send_task(SEAL, kwargs={"collection": col.name, "uid": col.uid}, queue=s.queue, ignore_result=True)


DELETE_CHUNK_IDS = 10_000  # ids per WAL entry of a delete by filter


@app.task(name=DELETE, bind=True)
def delete(self: Task, *, collection: str, ids: list[str] | None = None, filter: str | None = None,
           uid: str | None = None) -> None:
    """Delete `ids`, or every vector whose metadata matches `filter` (a filter's JSON text) at the end of the log
    when the job runs: writes after that are not considered."""

    def body(st: state.ProcessState, job_id: str) -> dict[str, Any]:
        col = resolve(st, collection, uid)
        if (ids is None) == (filter is None):
            raise InvalidInput("give exactly one of ids or filter", "ids")
        if filter is not None:
            where = parse_filter(filter)
            vids = st.registry.ready(col, "strong").matching_ids(where) if where is not None else []
        else:
            if not isinstance(ids, list) or not ids:
                raise InvalidInput("must be a non-empty list of ids", "ids")
            vids = check_ids(ids, len(ids), st.settings.max_id_length)
        lsn, found = wal.last_lsn(st.r, col), 0
        for chunk, start in enumerate(range(0, len(vids), DELETE_CHUNK_IDS)):
            lsn, n = wal.append_delete(st.r, col, f"{job_id}:{chunk}", vids[start:start + DELETE_CHUNK_IDS])
            found += n
        maybe_seal(st, col, found)
        return {"deleted": found, "lsn": lsn}

    run_job(self, "delete", collection, body)


@app.task(name=COUNT, bind=True)
def count(self: Task, *, collection: str, filter: str | None = None, uid: str | None = None,
          consistency: str = "strong", min_lsn: str | None = None) -> None:
    """How many live vectors match `filter` (all of them without one), at the LSN the copy has applied."""

    def body(st: state.ProcessState, job_id: str) -> dict[str, Any]:
        col = resolve(st, collection, uid)
        where = parse_filter(filter)
        copy = st.registry.ready(col, consistency, min_lsn)
        return {"count": copy.count_matching(where), "lsn": copy.applied}

    run_job(self, "count", collection, body)


@app.task(name=SEARCH, bind=True)
def search(self: Task, *, collection: str, vectors_b64: str, k: int = 10, uid: str | None = None,
           params: dict[str, Any] | None = None, include_metadata: bool = False, include_vectors: bool = False,
           consistency: str = "strong", min_lsn: str | None = None, filter: str | None = None, offset: int = 0,
           score_threshold: float | None = None, members: list[dict[str, Any]] | None = None,
           reply_to: str | None = None, hold_s: float | None = None) -> None:
    """Search. Any producer can send the plain form (the task id is the job id); `filter` is a filter's JSON
    text (docs/filters.md). The API sends `members` ([{job_id, n, k, include_metadata, include_vectors, offset,
    score_threshold}, ...]: the rows of each request, in order), `reply_to` (its listener) and `hold_s` (how long
    the outcomes must stay readable) instead: see search_batch."""
    if members is not None:
        hold = hold_s if hold_s is not None else state.current().settings.wait_max_s + 60
        search_batch(self, collection, uid, vectors_b64, params or {}, consistency, min_lsn, members, reply_to, hold,
                     filter)
        return

    def body(st: state.ProcessState, job_id: str) -> dict[str, Any]:
        col = resolve(st, collection, uid)
        where = parse_filter(filter)
        copy = st.registry.ready(col, consistency, min_lsn)
        queries = decode_vectors(vectors_b64, col.dim)
        member = Member(job_id, len(queries), k, include_metadata, include_vectors, int(offset or 0),
                        score_threshold)
        return run_search(copy, queries, [member], params or {}, limits(st), st.worker, where)[0]

    run_job(self, "search", collection, body)


def search_batch(task: Task, collection: str, uid: str | None, vectors_b64: str, params: dict[str, Any],
                 consistency: str, min_lsn: str | None, members: list[dict[str, Any]], reply_to: str | None,
                 hold_s: float, filter_text: str | None = None) -> None:
    """Searches sent by the API: one or more requests (members), answered with one FAISS call. The outcomes go
    to the waiting API process in one message and stay readable `hold_s` (common/jobs.py, members), all in one
    round trip. A failure fails this batch's members only; a batch that keeps killing its worker is failed as
    poison."""
    st = state.current()
    started_at, started = time.time(), time.perf_counter()
    batch_id: str = task.request.id
    claim = through_outage(lambda: jobs.claim_delivery(st.r, batch_id, max_attempts=st.settings.max_attempts,
                                                       ttl=st.settings.job_ttl_s), batch_id, "claim")
    outcomes: list[tuple[dict[str, Any], Any, dict[str, Any] | None]] = []
    if claim is jobs.Claim.POISONED:
        error = {"code": "poisoned", "field": None, "message": "gave up: each delivery lost its worker"}
        outcomes = [(m, None, error) for m in members]
    else:
        def search() -> list[Any]:
            col = resolve(st, collection, uid)
            where = parse_filter(filter_text)
            copy = st.registry.ready(col, consistency, min_lsn)
            queries = decode_vectors(vectors_b64, col.dim)
            wanted = [Member.from_message(m) for m in members]
            return run_search(copy, queries, wanted, params, limits(st), st.worker, where)

        try:
            results = through_outage(search, batch_id, "search")
            outcomes = [(m, res, None) for m, res in zip(members, results, strict=True)]
        except VecqError as exc:
            outcomes = [(m, None, exc.to_dict()) for m in members]
        except Exception as exc:
            log.exception("search batch %s raised", batch_id)
            error = {"code": "internal", "message": f"{type(exc).__name__}: {exc}", "field": None}
            outcomes = [(m, None, error) for m in members]
    duration_ms = (time.perf_counter() - started) * 1000

    def finish() -> None:
        with st.r.pipeline(transaction=False) as pipe:  # the pipeline loads its script if Redis lost it
            jobs.finish_members(pipe, batch_id, outcomes, reply_to=reply_to, started_at=started_at, worker=st.worker,
                                hold_s=hold_s)
            stats.add_jobs(pipe, [("search", "failed" if e else "succeeded", duration_ms / 1000)
                                  for _, _, e in outcomes])
            pipe.execute()

    through_outage(finish, batch_id, "finish")
    failed = sum(1 for _, _, e in outcomes if e is not None)
    st.jobs_done += len(outcomes)
    st.last_job = {"job_id": batch_id, "type": "search", "collection": collection, "members": len(members),
                   "status": "failed" if failed else "succeeded", "duration_ms": round(duration_ms, 2),
                   "at": time.time()}
    log.info("job=%s type=search-batch collection=%s members=%d failed=%d duration_ms=%.2f worker=%s",
             batch_id, collection, len(members), failed, duration_ms, st.worker,
             extra={"job": st.last_job, "worker": st.worker})


@app.task(name=GET, bind=True)
def get_vector(self: Task, *, collection: str, id: str, uid: str | None = None,
               consistency: str = "strong") -> None:
    def body(st: state.ProcessState, job_id: str) -> dict[str, Any]:
        col = resolve(st, collection, uid)
        copy = st.registry.ready(col, consistency)
        loc = copy.locate(id)
        if loc is None:
            raise NotFound(f"vector {id!r} not found", "id")
        return {"id": id, "vector": copy.vector(loc), "metadata": copy.metadata(loc)}

    run_job(self, "get", collection, body)


def under_seal_lock(st: state.ProcessState, job_id: str, col: Collection,
                    work: Callable[[], dict[str, Any]], defer: bool = False) -> dict[str, Any]:
    """Run a seal or a compaction holding the collection's seal lock (taken back by this job's redelivery). A seal
    (`defer`) that finds the lock held leaves its request to the holder; the holder, once it has let the lock go,
    requests the seal again if one is due that could not run or be requested meanwhile (segments.settled)."""
    if not segments.lock(st.r, col, st.settings.seal_time_limit_s, owner=job_id, defer=defer):
        return {"skipped": "another seal or compaction of this collection is running"}
    try:
        result = work()
    finally:
        segments.unlock(st.r, col, job_id)
        if segments.settled(st.r, col):
            app.send_task(SEAL, kwargs={"collection": col.name, "uid": col.uid}, queue=st.settings.queue,
                          ignore_result=True)
    # After a seal, or a compaction that could not merge everything: and since a compaction that found the lock
    # held was skipped, whoever held it asks again. Not after a failure, which would only repeat itself.
    if maybe_compact(st, col):
        result["compaction"] = "requested"
    return result


def maybe_compact(st: state.ProcessState, col: Collection) -> bool:
    """Request a compaction when the segments pass `compact_max_segments` or `compact_dead_fraction`."""
    try:
        copy = st.registry.ready(col, "strong")
    except NotFound:
        return False
    if not sealing.compaction_due(copy, st.settings.compact_max_segments, st.settings.compact_dead_fraction):
        return False
    app.send_task(COMPACT, kwargs={"collection": col.name, "uid": col.uid}, queue=st.settings.queue,
                  ignore_result=True)
    return True


LONG = {"time_limit": get_settings().seal_time_limit_s,
        "soft_time_limit": get_settings().soft_limit(get_settings().seal_time_limit_s)}


@app.task(name=SEAL, bind=True, **LONG)
def seal(self: Task, *, collection: str, uid: str | None = None) -> None:
    """Seal the log written since the newest seal into a segment every worker maps; then trim the log to it.
    Requests a compaction when the segments pass `compact_max_segments` or `compact_dead_fraction`."""

    def body(st: state.ProcessState, job_id: str) -> dict[str, Any]:
        col = resolve(st, collection, uid)
        store = segment_files.root(st.settings)
        return under_seal_lock(st, job_id, col, lambda: sealing.seal(st.r, st.settings, st.registry, store, col),
                               defer=True)

    run_job(self, "seal", collection, body)


@app.task(name=COMPACT, bind=True, **LONG)
def compact(self: Task, *, collection: str, uid: str | None = None) -> None:
    """Merge the collection's sealed segments into one, dropping dead rows."""

    def body(st: state.ProcessState, job_id: str) -> dict[str, Any]:
        col = resolve(st, collection, uid)
        store = segment_files.root(st.settings)
        return under_seal_lock(st, job_id, col, lambda: sealing.compact(st.r, st.settings, st.registry, store, col))

    run_job(self, "compact", collection, body)


@app.task(name=PURGE, bind=True)
def purge(self: Task, *, collection: str, uid: str, dim: int = 1, metric: str = "l2", index: str = "Flat") -> None:
    """Remove a deleted collection's segment files (its Redis keys are gone already)."""

    def body(st: state.ProcessState, job_id: str) -> dict[str, Any]:
        col = Collection(name=collection, uid=uid, dim=dim, metric=metric, index=index, created_at=0)
        segment_files.remove(segment_files.root(st.settings), col)
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

    @app.task(name="vecq.test.sleep", bind=True)
    def sleep(self: Task, *, seconds: float = 1.0, collection: str | None = None, stubborn: bool = False) -> None:
        """Test-only: a slow job, to prove a worker told to stop finishes what it runs and leaves the rest.
        `stubborn` sleeps through the soft time limit, as a long FAISS call does (signals wait for it)."""

        def body(st: state.ProcessState, job_id: str) -> dict[str, Any]:
            until = time.monotonic() + min(float(seconds), 60.0)
            while time.monotonic() < until:
                try:
                    time.sleep(max(0.0, until - time.monotonic()))
                except SoftTimeLimitExceeded:
                    if not stubborn:
                        raise
            return {"slept": seconds}

        run_job(self, "sleep", collection, body)
