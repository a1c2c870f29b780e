"""The Celery tasks. Each is a job: claimed in its record, run, and finished with a result or an error.

Each task is a plain function `body(st, job_id, **inputs)` of the worker process's state, its job id and its
inputs, callable without Celery; `@task` (worker/runner.py) registers it and does the claim, finish, counts
and log line once for all of them.

Every task takes keyword arguments only, so that any Python producer can submit one by name, e.g.
`celery_app.send_task("vecq.add", kwargs={"collection": "docs", "vectors": [[...]], "ids": ["a"]})`;
the Celery task id is the job id, readable at `GET /v1/jobs/{id}`.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded

from common import blobs, collections, jobs, segments, wal
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
from common.errors import ErrorDict, InvalidInput, NotFound, Poisoned, TimedOut, VecqError
from common.settings import get_settings
from worker import ingest, sealing, segment_files, state
from worker.index import probe, spec_kind
from worker.runner import DEFERRED, OnFail, task
from worker.search import Limits, Member, parse_filter, run_search

IDS_IN_RESULT_MAX = 10_000


def limits(st: state.ProcessState) -> Limits:
    s = st.settings
    return Limits(max_k=s.max_k, max_k_with_offset=s.max_k_with_offset, exact_below=s.filter_exact_below)


def resolve(st: state.ProcessState, name: str, uid: str | None) -> Collection:
    copy = st.registry.held(name, uid) if uid is not None else None
    if copy is not None:
        return copy.col
    col = collections.get(st.r, name)
    if uid is not None and col.uid != uid:
        raise NotFound(f"collection {name!r} was deleted", "name")
    return col


@task(CREATE_COLLECTION, "create_collection", collection_arg="name")
def create_collection(st: state.ProcessState, job_id: str, *, name: str, dim: int, metric: str = "l2",
                      index: str = "Flat") -> dict[str, Any]:
    if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= st.settings.max_dim:
        raise InvalidInput(f"dim must be an integer in 1..{st.settings.max_dim}", "dim")
    col = new_collection(name, dim, metric, index)
    probe(dim, metric, index)  # FAISS is the judge of the description, and only workers import it
    # Owned by this job: its own redelivery (its worker died after the create) finds the record it made.
    col = collections.create(st.r, col, st.settings.max_collections, owner=job_id)
    return {**col.public(), "count": 0, "lsn": "0-0"}


def fail_parent(st: state.ProcessState, job_id: str, error: ErrorDict, inputs: dict[str, Any]) -> None:
    """A failed part of a bulk ingest fails its parent."""
    if inputs.get("parent") is not None:
        ingest.fail_parent(st, inputs["parent"], inputs.get("blob"), error)


# The parts of a bulk ingest stay out of the recent jobs: their parent shows the progress.
def add_batch(st: state.ProcessState, batch_id: str, *, collection: str, vectors_b64: str,
              members: list[dict[str, Any]], uid: str | None = None, chunk_rows: int | None = None,
              **per_request: Any) -> list[dict[str, Any] | VecqError]:
    """Single writes the API coalesced (api/writer.py): `members` ([{job_id, n, ids | id_prefix + id_start,
    metadata}], their rows in order in `vectors_b64`), appended in that order as few log entries as the batch
    needs, in one round trip: one result per member, as `add` gives. A member's own bad input fails it alone.

    The entries are the batch's (`batch:chunk`, so a redelivered batch appends nothing twice): one entry, one
    dedup field and one replay step for many writes, where one per write made the log, its dedup hash and the
    workers' catch-up grow with the write rate. A chunk ends at `chunk_rows` rows and before an id it holds
    already: the later of two upserts of one id is the later entry, and an entry never holds an id twice."""
    col = resolve(st, collection, uid)
    matrix = as_float32(decode_vectors(vectors_b64, col.dim))
    if len(matrix) != sum(int(m["n"]) for m in members):
        raise InvalidInput("members do not add up to the rows sent", "members")
    if col.metric == "cosine":
        matrix = normalized(matrix)
    per_entry = entry_rows(st, col, chunk_rows)
    chunks: list[tuple[list[str], list[int], list[str | None]]] = []  # ids, row numbers, metadata
    in_chunk: set[str] = set()
    planned: list[tuple[int, list[str]] | VecqError] = []  # per member: its last chunk's index and its ids
    start = 0
    for member in members:
        n, job_id = int(member["n"]), str(member["job_id"])
        first, start = start, start + n
        try:
            vids = check_ids(member["ids"] if "ids" in member else ingest.row_ids(
                job_id, member.get("id_prefix"), int(member.get("id_start") or 0), 0, n), n, st.settings.max_id_length)
            metas = (check_metadata(member["metadata"], n, st.settings.max_metadata_bytes)
                     if member.get("metadata") is not None else [None] * n)
        except VecqError as exc:
            planned.append(exc)
            continue
        for offset, (vid, meta) in enumerate(zip(vids, metas, strict=True)):
            if not chunks or len(chunks[-1][0]) >= per_entry or vid in in_chunk:
                chunks.append(([], [], []))
                in_chunk = set()
            chunks[-1][0].append(vid)
            chunks[-1][1].append(first + offset)
            chunks[-1][2].append(meta)
            in_chunk.add(vid)
        planned.append((len(chunks) - 1, vids))
    lsns = wal.append_adds(st.r, col, [
        (f"{batch_id}:{i}", ids, np.ascontiguousarray(matrix[rows], dtype="<f4").tobytes(), metas)
        for i, (ids, rows, metas) in enumerate(chunks)]) if chunks else []
    results: list[dict[str, Any] | VecqError] = []
    for plan in planned:
        if isinstance(plan, VecqError):
            results.append(plan)
            continue
        last, vids = plan
        result: dict[str, Any] = {"count": len(vids), "lsn": lsns[last]}
        if len(vids) <= IDS_IN_RESULT_MAX:
            result["ids"] = vids
        results.append(result)
    maybe_seal(st, col, sum(len(ids) for ids, _, _ in chunks))
    return results


@task(ADD, "add", listed=lambda inputs: inputs.get("parent") is None, on_fail=fail_parent, batch=add_batch,
      batch_once=True)
def add(st: state.ProcessState, job_id: str, *, collection: str, vectors: list[list[float]] | None = None,
        vectors_b64: str | None = None,
        ids: list[str] | None = None, metadata: list[dict[str, Any] | None] | None = None,
        uid: str | None = None, id_prefix: str | None = None, parent: str | None = None,
        blob: str | None = None, rows: list[int] | None = None, id_start: int = 0,
        chunk_rows: int | None = None) -> dict[str, Any]:
    """Upsert vectors given as `vectors` (JSON lists), `vectors_b64` (float32 rows, little-endian) or `blob`
    (an upload in Redis, see common/blobs.py: .npy or Parquet; `rows` [start, end) of it, default all).
    Omitted ids are derived from the job id (or id_prefix + id_start + row number), so a redelivery makes the
    same. With `parent`, this job is one part of a bulk ingest (worker/ingest.py) and reports to it. `chunk_rows`
    (rows per WAL entry) is fixed by the submitter; without it, this worker's VECQ_WAL_CHUNK_BYTES decides."""
    if parent is not None and ingest.parent_over(st, parent):
        return {"skipped": "the ingest job this part belongs to has ended"}
    col = resolve(st, collection, uid)
    if parent is not None and blob is not None and rows is not None and ids is None and metadata is None:
        source = ingest.copyable(st, col, blob, rows)
        if source is not None:
            return add_copied(st, job_id, col, source, parent, id_prefix, id_start, chunk_rows)
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
    per_entry = entry_rows(st, col, chunk_rows)
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


def entry_rows(st: state.ProcessState, col: Collection, chunk_rows: int | None) -> int:
    """Rows per WAL entry: fixed by the submitter (`chunk_rows`), so a redelivery on a worker with another
    VECQ_WAL_CHUNK_BYTES cuts the same entries; else this worker's setting."""
    return int(chunk_rows) if chunk_rows else rows_per_wal_entry(st.settings.wal_chunk_bytes, col.dim)


def add_copied(st: state.ProcessState, job_id: str, col: Collection, source: ingest.Source, parent: str,
               id_prefix: str | None, id_start: int, chunk_rows: int | None) -> dict[str, Any]:
    """A part of a bulk ingest whose rows Redis copies from the upload into the log (ingest.copyable): the same
    entries, ids and dedup records as `add` makes, without the rows' round trip through this worker."""
    n = source.end - source.start
    vids = check_ids(ingest.row_ids(parent, id_prefix, id_start, source.start, n), n, st.settings.max_id_length)
    per_entry = entry_rows(st, col, chunk_rows)
    lsn = "0-0"
    for chunk, start in enumerate(range(0, n, per_entry)):
        end = min(n, start + per_entry)
        first, last = source.start + start, source.start + end
        lsn = wal.append_add_copied(st.r, col, f"{job_id}:{chunk}", vids[start:end], source.ranges(first, last),
                                    (last - first) * source.layout.row_bytes, [None] * (end - start))
    rows = [source.start, source.end]
    finished = ingest.part_done(st, col, parent, source.blob.id, rows, n)
    maybe_seal(st, col, n, hold=not finished)  # as add: an upload is sealed once, when its last part lands
    return {"count": n, "lsn": lsn}


@task(INGEST, "ingest")
def ingest_upload(st: state.ProcessState, job_id: str, *, collection: str, blob: str, uid: str | None = None,
                  id_prefix: str | None = None,
                  id_start: int = 0) -> Any:
    """Bulk ingest of an upload (`blob`, see common/blobs.py): validate it whole, then fan out `vecq.add`
    parts; the last part finishes this job with {"count", "lsn", "ids" (up to 10,000)}."""
    try:
        col = resolve(st, collection, uid)
    except VecqError:
        blobs.delete(st.r, blob)
        raise
    ingest.run_parent(st, job_id, col, blob, id_prefix, int(id_start), IDS_IN_RESULT_MAX)
    return DEFERRED


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
        st.send(SEAL, {"collection": col.name, "uid": col.uid})


DELETE_CHUNK_IDS = 10_000  # ids per WAL entry of a delete by filter


@task(DELETE, "delete")
def delete(st: state.ProcessState, job_id: str, *, collection: str, ids: list[str] | None = None,
           filter: str | None = None,
           uid: str | None = None) -> dict[str, Any]:
    """Delete `ids`, or every vector whose metadata matches `filter` (a filter's JSON text) at the end of the log
    when the job runs: writes after that are not considered."""

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


@task(COUNT, "count")
def count(st: state.ProcessState, job_id: str, *, collection: str, filter: str | None = None, uid: str | None = None,
          consistency: str = "strong", min_lsn: str | None = None) -> dict[str, Any]:
    """How many live vectors match `filter` (all of them without one), at the LSN the copy has applied."""

    col = resolve(st, collection, uid)
    where = parse_filter(filter)
    copy = st.registry.ready(col, consistency, min_lsn)
    return {"count": copy.count_matching(where), "lsn": copy.applied}


def search_batch(st: state.ProcessState, batch_id: str, *, collection: str, vectors_b64: str,
                 members: list[dict[str, Any]], uid: str | None = None, params: dict[str, Any] | None = None,
                 consistency: str = "strong", min_lsn: str | None = None, filter: str | None = None,
                 claim: jobs.DeliveryClaim | None = None, **per_request: Any) -> list[dict[str, Any]]:
    """Searches sent by the API: one or more requests (`members`, each with its own k, offset, ...; the plain
    form's `per_request` values are ignored), answered with one FAISS call: one result per member, in order.
    worker/runner.py run_batch hands it the batch's `claim`, which rides on the catch-up read (one round trip
    for both), and finishes and reports the batch."""
    col = resolve(st, collection, uid)
    where = parse_filter(filter)
    copy = st.registry.ready(col, consistency, min_lsn, claim)
    if claim is not None:
        claim.require(st.r)  # before the search: a batch that keeps killing its worker must be counted
    queries = decode_vectors(vectors_b64, col.dim)
    wanted = [Member.from_message(m) for m in members]
    return run_search(copy, queries, wanted, params or {}, limits(st), st.worker, where)


@task(SEARCH, "search", batch=search_batch, claim_rides=True)
def search(st: state.ProcessState, job_id: str, *, collection: str, vectors_b64: str, k: int = 10,
           uid: str | None = None, params: dict[str, Any] | None = None, include_metadata: bool = False,
           include_vectors: bool = False, consistency: str = "strong", min_lsn: str | None = None,
           filter: str | None = None, offset: int = 0, score_threshold: float | None = None) -> dict[str, Any]:
    """Search. Any producer can send the plain form (the task id is the job id); `filter` is a filter's JSON
    text (docs/filters.md). The API sends `members` ([{job_id, n, k, include_metadata, include_vectors, offset,
    score_threshold}, ...]: the rows of each request, in order), `reply_to` (its listener) and `hold_s` (how long
    the outcomes must stay readable) instead: see search_batch."""
    col = resolve(st, collection, uid)
    where = parse_filter(filter)
    copy = st.registry.ready(col, consistency, min_lsn)
    queries = decode_vectors(vectors_b64, col.dim)
    member = Member(job_id, len(queries), k, include_metadata, include_vectors, int(offset or 0),
                    score_threshold)
    return run_search(copy, queries, [member], params or {}, limits(st), st.worker, where)[0]


@task(GET, "get")
def get_vector(st: state.ProcessState, job_id: str, *, collection: str, id: str, uid: str | None = None,
               consistency: str = "strong") -> dict[str, Any]:
    col = resolve(st, collection, uid)
    copy = st.registry.ready(col, consistency)
    loc = copy.locate(id)
    if loc is None:
        raise NotFound(f"vector {id!r} not found", "id")
    return {"id": id, "vector": copy.vector(loc), "metadata": copy.metadata(loc)}


def under_lock(st: state.ProcessState, job_id: str, col: Collection, kind: segments.LockKind,
               work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run a seal or a compaction holding the collection's lock of that kind (taken back by this job's
    redelivery). A seal that finds its lock held leaves its request to the holder; the holder, once it has let the
    lock go, requests the seal again if one is due that could not run or be requested meanwhile
    (segments.settled)."""
    seal = kind == "seal"
    if not segments.lock(st.r, col, st.settings.seal_time_limit_s, owner=job_id, defer=seal, kind=kind):
        return {"skipped": f"another {kind} of this collection is running"}
    try:
        result = work()
    finally:
        segments.unlock(st.r, col, job_id, kind)
        if seal and segments.settled(st.r, col):
            st.send(SEAL, {"collection": col.name, "uid": col.uid})
    # After a seal, or a compaction that could not merge everything (seals went on while it built): and since a
    # compaction that found its lock held was skipped, whoever held it asks again. Not after a failure, which
    # would only repeat itself.
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
    st.send(COMPACT, {"collection": col.name, "uid": col.uid})
    return True


def release_lock(kind: segments.LockKind) -> OnFail:
    """The on_fail of a seal or a compaction: one that ended without running its own `finally` (poisoned: every
    delivery lost its worker; or killed at the hard time limit) gives back the lock its deliveries held, and a seal
    settles its request. Without this, the lock stayed taken until its TTL (VECQ_SEAL_TIME_LIMIT_S): found by the
    soak, whose chaos kills a worker child every 60 s, more often than a compaction of 300k HNSW rows ends."""

    def release(st: state.ProcessState, job_id: str, error: ErrorDict, inputs: dict[str, Any]) -> None:
        if error.get("code") not in (Poisoned.code, TimedOut.code):
            return  # it ran: under_lock let the lock go itself
        col = collections.find(st.r, str(inputs.get("collection")))
        if col is None or (inputs.get("uid") is not None and col.uid != inputs["uid"]):
            return
        segments.unlock(st.r, col, job_id, kind)
        if kind == "seal" and segments.settled(st.r, col):
            st.send(SEAL, {"collection": col.name, "uid": col.uid})

    return release


LONG: dict[str, Any] = {"time_limit": get_settings().seal_time_limit_s,
                        "soft_time_limit": get_settings().soft_limit(get_settings().seal_time_limit_s)}


@task(SEAL, "seal", on_fail=release_lock("seal"), **LONG)
def seal(st: state.ProcessState, job_id: str, *, collection: str, uid: str | None = None) -> dict[str, Any]:
    """Seal the log written since the newest seal into a segment every worker maps; then trim the log to it.
    Requests a compaction when the segments pass `compact_max_segments` or `compact_dead_fraction`."""

    col = resolve(st, collection, uid)
    store = segment_files.root(st.settings)
    return under_lock(st, job_id, col, "seal", lambda: sealing.seal(st.r, st.settings, st.registry, store, col))


@task(COMPACT, "compact", on_fail=release_lock("compact"), **LONG)
def compact(st: state.ProcessState, job_id: str, *, collection: str, uid: str | None = None) -> dict[str, Any]:
    """Merge the collection's sealed segments into one, dropping dead rows."""

    col = resolve(st, collection, uid)
    store = segment_files.root(st.settings)
    return under_lock(st, job_id, col, "compact",
                      lambda: sealing.compact(st.r, st.settings, st.registry, store, col))


@task(PURGE, "purge")
def purge(st: state.ProcessState, job_id: str, *, collection: str, uid: str, dim: int = 1, metric: str = "l2",
          index: str = "Flat") -> dict[str, Any]:
    """Remove a deleted collection's segment files (its Redis keys are gone already)."""

    col = Collection(name=collection, uid=uid, dim=dim, metric=metric, index=index, created_at=0)
    segment_files.remove(segment_files.root(st.settings), col)
    st.registry.forget(collection, uid=uid)
    return {"purged": collection}


if get_settings().enable_test_tasks:

    @task(POISON, "poison")
    def poison(st: state.ProcessState, job_id: str, *, collection: str | None = None) -> None:
        """Test-only: a job whose execution kills its own process, to prove redelivery is bounded."""

        os.kill(os.getpid(), signal.SIGKILL)

    @task("vecq.test.sleep", "sleep")
    def sleep(st: state.ProcessState, job_id: str, *, seconds: float = 1.0, collection: str | None = None,
              stubborn: bool = False) -> dict[str, Any]:
        """Test-only: a slow job, to prove a worker told to stop finishes what it runs and leaves the rest.
        `stubborn` sleeps through the soft time limit, as a long FAISS call does (signals wait for it)."""

        until = time.monotonic() + min(float(seconds), 60.0)
        while time.monotonic() < until:
            try:
                time.sleep(max(0.0, until - time.monotonic()))
            except SoftTimeLimitExceeded:
                if not stubborn:
                    raise
        return {"slept": seconds}
