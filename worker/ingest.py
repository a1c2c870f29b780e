"""Bulk ingest: one `vecq.ingest` parent job per upload, fanned out into chunked `vecq.add` child jobs.

The parent checks the WHOLE upload first (every value finite as float32, ids unique and valid, metadata
within limits), so a bad upload changes nothing; values of an .npy upload were checked by the API as they
streamed in. Then it splits the rows into parts of about one WAL entry (`wal_chunk_bytes` of float32
vectors) and sends one `vecq.add` per part, carrying only the blob id and the row range. A .npy part is read
straight from the blob; a Parquet upload is converted once by the parent into parts (Arrow IPC: ids, float32
vectors, metadata JSON), since Parquet cannot be sliced by row cheaply.

Children report to the parent: each adds its rows to the parent's progress (once, even if redelivered) and
marks its part done; the child that completes the last part finishes the parent with {"count", "lsn",
"ids" (≤ 10,000)} and deletes the blob. A failed child fails the parent. Child job ids are derived from
the parent's, so a redelivered parent re-sends the same jobs and finished ones are skipped.

Parts do not catch their worker's copy up with the WAL: measured here (2 cores shared by Redis, the API and
the workers), every worker replaying every part during the upload cost more than one worker replaying once,
at the first search after it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from common import blobs, formats, jobs, stats, wal
from common.celery_app import ADD
from common.codec import generated_ids, rows_per_wal_entry
from common.collections import Collection
from common.errors import ErrorDict, InvalidInput
from common.status import JobStatus
from worker import app, state

log = logging.getLogger("vecq.jobs")
CHILD_NAMESPACE = uuid.UUID("5b1f1b0e-7d55-4c53-a3c4-3f0f5b7f4e21")


@dataclass
class Rows:
    """Rows loaded for one add: ids/metadata are None when the upload has none (ids are then generated)."""

    matrix: np.ndarray
    first_row: int
    ids: list[str] | None = None
    metadata: list[str | None] | None = None


def rows_per_part(st: state.ProcessState, dim: int) -> int:
    """One WAL entry's worth: parts small enough to spread over the workers, large enough to be worth a job."""
    return max(1, st.settings.wal_chunk_bytes // (4 * dim))


def child_id(parent: str, row: int) -> str:
    return uuid.uuid5(CHILD_NAMESPACE, f"{parent}:{row}").hex


def row_ids(job_id: str, id_prefix: str | None, id_start: int, first_row: int, n: int) -> list[str]:
    """Ids for rows sent without any: `id_prefix` + row number, else derived from the (parent) job."""
    if id_prefix is not None:
        return [f"{id_prefix}{id_start + first_row + i}" for i in range(n)]
    return generated_ids(job_id, id_start + first_row, n)


def _format(st: state.ProcessState, blob: blobs.Blob) -> str:
    fmt = blob.attrs.get("format") or formats.sniff(blobs.read(st.r, blob, 0, 8)) or ""
    if fmt not in ("npy", "parquet"):
        raise InvalidInput("upload is neither .npy nor Parquet", "body")
    return fmt


def _npy_layout(st: state.ProcessState, blob: blobs.Blob, dim: int) -> formats.NpyLayout:
    head = blobs.read(st.r, blob, 0, min(blob.size, formats.NPY_HEAD_MAX))
    layout = formats.npy_layout(head, complete=True)
    assert layout is not None
    formats.check_npy(layout, dim, blob.size)
    return layout


def _npy_matrix(data: bytes, layout: formats.NpyLayout, first_row: int) -> np.ndarray:
    """float32 rows from raw .npy bytes; 422 naming the first row that is not finite as float32."""
    raw = np.frombuffer(data, dtype=layout.dtype).reshape(-1, layout.cols)
    if layout.dtype == np.float32:
        matrix = raw
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            matrix = raw.astype(np.float32)
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        row = first_row + int(np.flatnonzero(bad)[0])
        raise InvalidInput("must be finite float32 values (no NaN, Infinity or overflow)", f"vectors[{row}]")
    return matrix


def _check_prefix(id_prefix: str | None, id_start: int, n: int, max_length: int, has_ids: bool) -> None:
    if id_prefix is None:
        return
    if has_ids:
        raise InvalidInput("the upload has an id column; id_prefix applies only to uploads without ids",
                           "id_prefix")
    if len(id_prefix) + len(str(id_start + n - 1)) > max_length:
        raise InvalidInput(f"id_prefix makes ids longer than {max_length} characters", "id_prefix")


# The parent ------------------------------------------------------------------------------------------------


def run_parent(st: state.ProcessState, job_id: str, col: Collection, blob_id: str, id_prefix: str | None,
               id_start: int, ids_max: int) -> int:
    """Validate the whole upload, then send its parts as child add jobs. Returns the row count; the
    caller must NOT finish the job (the last child does). On any error the blob is deleted."""
    ttl = st.settings.blob_ttl_s
    blobs.check_id(blob_id)
    try:
        blob = blobs.info(st.r, blob_id)
        blobs.touch(st.r, blob, ttl)  # however long it waited in the queue, the children get a full TTL
        per_part = rows_per_part(st, col.dim)
        if _format(st, blob) == "npy":
            layout = _npy_layout(st, blob, col.dim)
            n = layout.rows
            _check_prefix(id_prefix, id_start, n, st.settings.max_id_length, has_ids=False)
            if blob.attrs.get("values_checked") != "1":  # the API checks values while they stream in
                step = max(1, blobs.READ_BYTES // layout.row_bytes) * layout.row_bytes
                for offset in range(layout.offset, layout.size, step):
                    data = blobs.read(st.r, blob, offset, min(layout.size, offset + step))
                    _npy_matrix(data, layout, (offset - layout.offset) // layout.row_bytes)
            ids = row_ids(job_id, id_prefix, id_start, 0, n) if n <= ids_max else None
            blobs.set_attrs(st.r, blob_id, format="npy", offset=layout.offset, dtype=layout.dtype.str,
                            rows=n, cols=layout.cols)
            part_rows: list[int] = []
        else:
            # Decoded and checked one part at a time (a small compressed file can expand to gigabytes); no child
            # is sent before every part is in, so a bad row anywhere still fails the whole upload.
            shape, tables = formats.parquet_parts(blobs.read(st.r, blob), col.dim, per_part)
            n = shape.rows
            _check_prefix(id_prefix, id_start, n, st.settings.max_id_length, has_ids=shape.has_ids)
            part_rows, kept_ids, seen, start = [], [], set(), 0
            for table in tables:
                rows_here = table.num_rows
                matrix = formats.table_vectors(table, col.dim, first_row=start)
                part_ids = formats.table_ids(table, st.settings.max_id_length) or \
                    row_ids(job_id, id_prefix, id_start, start, rows_here)
                for i, vid in enumerate(part_ids):
                    if vid in seen:
                        raise InvalidInput(f"duplicate id {vid!r} in one upload", f"ids[{start + i}]")
                    seen.add(vid)
                metadata = formats.table_metadata(table, st.settings.max_metadata_bytes)
                blobs.put_part(st.r, blob_id, start, _part_bytes(matrix, part_ids, metadata), ttl)
                part_rows.append(start)
                if n <= ids_max:
                    kept_ids.extend(part_ids)
                start += rows_here
            ids = kept_ids if n <= ids_max else None
        parts = -(-n // per_part)
        attrs: dict[str, str | int] = {"rows": n, "parts": parts, "part_rows": ",".join(map(str, part_rows))}
        if ids is not None:
            attrs["ids"] = json.dumps(ids, separators=(",", ":"))
        blobs.set_attrs(st.r, blob_id, **attrs)
        record = jobs.get(st.r, job_id) or {}
        if not jobs.public(record).get("progress"):  # submitted without the API: no total yet
            jobs.set_total(st.r, job_id, n)
        with app.producer_or_acquire() as producer:  # one connection for the whole fan-out
            for start in range(0, n, per_part):
                kwargs: dict[str, Any] = {"collection": col.name, "uid": col.uid, "blob": blob_id,
                                          "rows": [start, min(n, start + per_part)], "parent": job_id,
                                          "id_start": id_start,
                                          "chunk_rows": rows_per_wal_entry(st.settings.wal_chunk_bytes, col.dim)}
                if id_prefix is not None:
                    kwargs["id_prefix"] = id_prefix
                app.send_task(ADD, kwargs=kwargs, task_id=child_id(job_id, start), queue=st.settings.queue,
                              ignore_result=True, producer=producer)
        log.info("ingest=%s collection=%s rows=%d parts=%d", job_id, col.name, n, parts)
        return n
    except BaseException:
        blobs.delete(st.r, blob_id)
        raise


def _part_bytes(matrix: np.ndarray, ids: list[str], metadata: list[str | None] | None) -> bytes:
    dim = matrix.shape[1]
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(matrix, dtype=np.float32).ravel()),
                                                dim)
    columns = {"id": pa.array(ids, pa.string()), "vector": vectors}
    if metadata is not None:
        columns["meta"] = pa.array(metadata, pa.string())
    table = pa.table(columns)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


# Children --------------------------------------------------------------------------------------------------


def load(st: state.ProcessState, col: Collection, blob_id: str, rows: list[int] | None) -> Rows:
    """The rows [start, end) of a blob (all of it when `rows` is None), validated."""
    blob = blobs.info(st.r, blob_id)
    fmt = _format(st, blob)
    if rows is not None and (len(rows) != 2 or not 0 <= rows[0] < rows[1]):
        raise InvalidInput("rows must be [start, end) with 0 <= start < end", "rows")
    if fmt == "npy":
        if "offset" in blob.attrs:  # the parent checked the header already
            layout = formats.NpyLayout(offset=int(blob.attrs["offset"]), dtype=np.dtype(blob.attrs["dtype"]),
                                       rows=int(blob.attrs["rows"]), cols=int(blob.attrs["cols"]))
            formats.check_npy(layout, col.dim)
        else:
            layout = _npy_layout(st, blob, col.dim)
        start, end = (0, layout.rows) if rows is None else (rows[0], min(rows[1], layout.rows))
        data = blobs.read(st.r, blob, layout.offset + start * layout.row_bytes, layout.offset + end * layout.row_bytes)
        return Rows(matrix=_npy_matrix(data, layout, start), first_row=start)
    if rows is not None:
        table = pa.ipc.open_stream(blobs.get_part(st.r, blob_id, rows[0])).read_all()
        vectors = table.column("vector").combine_chunks()
        matrix = vectors.values.to_numpy(zero_copy_only=False).reshape(-1, col.dim)
        meta = table.column("meta").to_pylist() if "meta" in table.column_names else None
        return Rows(matrix=matrix, first_row=rows[0], ids=table.column("id").to_pylist(), metadata=meta)
    table = formats.read_parquet(blobs.read(st.r, blob))
    formats.check_schema(table.schema, table.num_rows, col.dim)
    return Rows(matrix=formats.table_vectors(table, col.dim), first_row=0,
                ids=formats.table_ids(table, st.settings.max_id_length),
                metadata=formats.table_metadata(table, st.settings.max_metadata_bytes))


@dataclass(frozen=True)
class Source:
    """Rows [start, end) of a checked .npy upload whose bytes go into the log as they are: where they are."""

    blob: blobs.Blob
    layout: formats.NpyLayout
    start: int
    end: int

    def ranges(self, start: int, end: int) -> list[tuple[str, int, int]]:
        """The blob's byte ranges of rows [start, end) (numbered in the upload)."""
        at = self.layout.offset
        return list(self.blob.ranges(at + start * self.layout.row_bytes, at + end * self.layout.row_bytes))


def copyable(st: state.ProcessState, col: Collection, blob_id: str, rows: list[int]) -> Source | None:
    """The rows of a part whose bytes are already what the log stores, so Redis can copy them itself: a .npy of
    little-endian float32 whose values were checked (the API checks them as they stream in, else the parent did,
    before any part was sent) into a collection that stores vectors as given (cosine normalizes them). None for
    anything else: the part then loads its rows (load)."""
    if col.metric == "cosine" or len(rows) != 2 or not 0 <= rows[0] < rows[1]:
        return None
    blob = blobs.info(st.r, blob_id)
    if blob.attrs.get("format") != "npy" or blob.attrs.get("dtype") != "<f4" or "offset" not in blob.attrs:
        return None
    layout = formats.NpyLayout(offset=int(blob.attrs["offset"]), dtype=np.dtype("<f4"),
                               rows=int(blob.attrs["rows"]), cols=int(blob.attrs["cols"]))
    formats.check_npy(layout, col.dim)
    return Source(blob, layout, rows[0], min(rows[1], layout.rows))


def parent_over(st: state.ProcessState, parent: str) -> bool:
    """The parent already ended (failed, canceled, or finished by a duplicate): nothing left to do."""
    raw = jobs.get(st.r, parent)
    return raw is None or jobs.public(raw)["status"] in jobs.TERMINAL


def part_done(st: state.ProcessState, col: Collection, parent: str, blob_id: str, rows: list[int], n: int) -> bool:
    """Count this part's rows into the parent's progress (once), mark it done, and finish the parent if it
    was the last part. Returns True when this call finished the parent."""
    ttl = st.settings.blob_ttl_s
    if blobs.claim_count(st.r, blob_id, rows[0], ttl):
        jobs.add_progress(st.r, parent, n)
    _, parts_done = blobs.mark_done(st.r, blob_id, rows[0], ttl)
    try:
        blob = blobs.info(st.r, blob_id)
    except Exception:  # deleted: a duplicate of this child finished the parent already
        return False
    if parts_done < int(blob.attrs.get("parts", "0") or 0):
        return False
    # Every part's count ran before its mark, so a shortfall here is a count lost to a crashed child.
    record = jobs.public(jobs.get(st.r, parent) or {})
    progress = record.get("progress") or {"done": 0, "total": 0}
    if progress["done"] < progress["total"]:
        jobs.add_progress(st.r, parent, progress["total"] - progress["done"])
    result: dict[str, Any] = {"count": int(blob.attrs["rows"]), "lsn": wal.last_lsn(st.r, col)}
    if "ids" in blob.attrs:
        result["ids"] = json.loads(blob.attrs["ids"])
    finished = jobs.finish(st.r, parent, result=result)
    blobs.delete(st.r, blob_id)
    if finished:
        _count(st, record, JobStatus.SUCCEEDED)
        log.info("ingest=%s collection=%s status=succeeded count=%d lsn=%s", parent, col.name, result["count"],
                 result["lsn"])
    return finished


def fail_parent(st: state.ProcessState, parent: str, blob_id: str | None, error: ErrorDict) -> None:
    """A child failed: the upload as a whole failed (its parts already in the WAL stay)."""
    message = f"a part of the upload failed: {error.get('message')}"
    if jobs.finish(st.r, parent, error={**error, "message": message}):
        _count(st, jobs.public(jobs.get(st.r, parent) or {}), JobStatus.FAILED)
        log.warning("ingest=%s failed: %s", parent, message)
    if blob_id is not None:
        blobs.delete(st.r, blob_id)


def _count(st: state.ProcessState, record: dict[str, Any], status: str) -> None:
    """The upload's job ends here, not in run_job: count it in the job statistics (from its start)."""
    started = record.get("started_at") or record.get("submitted_at") or time.time()
    stats.count_jobs(st.r, [("ingest", status, max(0.0, time.time() - started))])
