"""Pure functions for the vector wire format, validation and LSN order. No I/O, no FAISS."""

from __future__ import annotations

import base64
import json
import math
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from common.errors import InvalidInput

Lsn = str
ZERO_LSN: Lsn = "0-0"


def encode_vectors(vectors: np.ndarray) -> str:
    """float32 little-endian, row-major, base64: compact and exact inside a JSON Celery message."""
    return base64.b64encode(np.ascontiguousarray(vectors, dtype="<f4").tobytes()).decode("ascii")


def decode_vectors(data: str | bytes, dim: int) -> np.ndarray:
    raw = base64.b64decode(data) if isinstance(data, str) else data
    if dim <= 0 or len(raw) % (4 * dim):
        raise InvalidInput(f"vector payload of {len(raw)} bytes is not a whole number of {dim}-d rows", "vectors")
    return np.frombuffer(raw, dtype="<f4").reshape(-1, dim)


def vectors_from_json(value: Any, dim: int, field: str = "vectors", max_rows: int | None = None) -> np.ndarray:
    """A JSON list of equal-length lists of finite numbers → float32 (n, dim), or InvalidInput naming `field`."""
    if not isinstance(value, list):
        raise InvalidInput("must be a list of vectors", field)
    if not value:
        raise InvalidInput("must not be empty", field)
    if max_rows is not None and len(value) > max_rows:
        raise InvalidInput(f"at most {max_rows} vectors per request, got {len(value)}", field)
    for i, row in enumerate(value):
        check_vector_row(row, dim, f"{field}[{i}]")
    return as_float32(np.asarray(value, dtype=np.float64), field)


def check_vector_row(row: Any, dim: int, field: str) -> None:
    if not isinstance(row, list):
        raise InvalidInput("must be a list of numbers", field)
    if len(row) != dim:
        raise InvalidInput(f"has dimension {len(row)}, the collection's is {dim}", field)
    for j, x in enumerate(row):
        # bool is an int subclass; true/false in a vector is a client bug, not a 1.0.
        if isinstance(x, bool) or not isinstance(x, int | float):
            raise InvalidInput("must contain only numbers", f"{field}[{j}]")
        if isinstance(x, float) and not math.isfinite(x):
            raise InvalidInput("must be finite (no NaN or Infinity)", f"{field}[{j}]")


def as_float32(array: np.ndarray, field: str = "vectors") -> np.ndarray:
    """Cast to float32, refusing values that overflow it (1e39 is finite as float64, inf as float32)."""
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidInput(f"must be a non-empty 2-D array, got shape {tuple(array.shape)}", field)
    if array.dtype.kind not in "fiu":
        raise InvalidInput(f"must hold numbers, got dtype {array.dtype}", field)
    with np.errstate(over="ignore", invalid="ignore"):
        out = array.astype(np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        row = int(np.argwhere(~finite)[0][0])
        raise InvalidInput("must be finite float32 values (no NaN, Infinity or overflow)", f"{field}[{row}]")
    return out


def normalized(vectors: np.ndarray) -> np.ndarray:
    """Unit-length rows for cosine; a new array, never the caller's. Zero rows stay zero."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms == 0, 1, norms)).astype(np.float32)


def check_ids(ids: Any, n: int, max_length: int, field: str = "ids") -> list[str]:
    if not isinstance(ids, list):
        raise InvalidInput("must be a list of strings", field)
    if len(ids) != n:
        raise InvalidInput(f"has {len(ids)} ids for {n} vectors", field)
    for i, item in enumerate(ids):
        if not isinstance(item, str) or not item:
            raise InvalidInput("must be a non-empty string", f"{field}[{i}]")
        if len(item) > max_length:
            raise InvalidInput(f"longer than {max_length} characters", f"{field}[{i}]")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        for i, item in enumerate(ids):
            if item in seen:
                raise InvalidInput(f"duplicate id {item!r} in one batch", f"{field}[{i}]")
            seen.add(item)
    return ids


def check_metadata(metadata: Any, n: int, max_bytes: int, field: str = "metadata",
                   json_default: Callable[[Any], Any] | None = None) -> list[str | None]:
    """Each entry a JSON object (or null) of at most max_bytes; returned already serialized."""
    if not isinstance(metadata, list):
        raise InvalidInput("must be a list of objects", field)
    if len(metadata) != n:
        raise InvalidInput(f"has {len(metadata)} entries for {n} vectors", field)
    out: list[str | None] = []
    for i, item in enumerate(metadata):
        if item is None:
            out.append(None)
            continue
        if not isinstance(item, dict):
            raise InvalidInput("must be a JSON object or null", f"{field}[{i}]")
        try:
            text = json.dumps(item, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=json_default)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"is not valid JSON: {exc}", f"{field}[{i}]") from None
        if len(text.encode()) > max_bytes:
            raise InvalidInput(f"larger than {max_bytes} bytes", f"{field}[{i}]")
        out.append(text)
    return out


def rows_per_wal_entry(chunk_bytes: int, dim: int) -> int:
    """Rows in one WAL entry. Fixed when a write is submitted and carried in its message, so a redelivery to a
    worker with another VECQ_WAL_CHUNK_BYTES cuts the same chunks (and finds them in the dedup records)."""
    return max(1, chunk_bytes // (4 * dim))


def generated_ids(job_id: str, start: int, count: int) -> list[str]:
    """Ids for vectors sent without one: derived from the job, so a redelivered job makes the same ones."""
    namespace = uuid.UUID(hex=job_id) if len(job_id) == 32 else uuid.uuid5(uuid.NAMESPACE_URL, job_id)
    return [str(uuid.uuid5(namespace, str(row))) for row in range(start, start + count)]


# index_factory allocates some structures before any training check: one request for IVF16777216 or PQ...x16
# at a large dim would have a worker allocate gigabytes (and the OOM killer end it).
INDEX_CAPS = ((r"IVF(\d+)", 1 << 18, "IVF list count"), (r"HNSW(\d+)", 512, "HNSW M"),
              (r"x(\d+)", 12, "bits per code"))


def index_description_problem(description: str) -> str | None:
    """Why an index_factory description is refused before FAISS sees it, or None."""
    for pattern, cap, what in INDEX_CAPS:
        for number in re.findall(pattern, description):
            if int(number) > cap:
                return f"{what} must be at most {cap}, got {number}"
    return None


def lsn_key(lsn: Lsn) -> tuple[int, int]:
    """Stream ids order as (ms, seq) pairs, not as strings ("10-0" > "9-0")."""
    ms, _, seq = lsn.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        raise InvalidInput(f"invalid LSN {lsn!r}", "min_lsn") from None


def lsn_at_least(lsn: Lsn, target: Lsn) -> bool:
    return lsn_key(lsn) >= lsn_key(target)


def max_lsn(lsns: Sequence[Lsn]) -> Lsn:
    return max(lsns, key=lsn_key, default=ZERO_LSN)


def matrix_from_rows(rows: list[list[float]], dim: int, field: str = "vectors") -> np.ndarray:
    """Rows already known to hold finite numbers (schema-checked): check the dimension, cast to float32."""
    for i, row in enumerate(rows):
        if len(row) != dim:
            raise InvalidInput(f"has dimension {len(row)}, the collection's is {dim}", f"{field}[{i}]")
    return as_float32(np.asarray(rows, dtype=np.float64), field)
