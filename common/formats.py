"""Upload formats (.npy, Parquet): header and schema checks, and Parquet rows → vectors, ids, metadata.

Pure functions, no I/O: the API checks what it can from the first and last bytes while the body streams in
(so a bad upload is a 422 before it is queued); the ingest job checks the rest from the whole blob.
"""

from __future__ import annotations

import datetime as dt
import decimal
import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.lib.format as npy_format
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common.codec import check_ids, check_metadata
from common.errors import InvalidInput

NPY_MAGIC = npy_format.MAGIC_PREFIX  # b"\x93NUMPY"
PARQUET_MAGIC = b"PAR1"
NPY_HEAD_MAX = 16 * 1024  # numpy refuses headers over 10,000 characters; this covers magic, length and padding
NPY_DTYPES = (np.dtype("<f4"), np.dtype("<f8"))
ID_COLUMN, VECTOR_COLUMN = "id", "vector"


def sniff(head: bytes) -> str | None:
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    return None


@dataclass(frozen=True)
class NpyLayout:
    offset: int  # where the rows start
    dtype: np.dtype
    rows: int
    cols: int

    @property
    def row_bytes(self) -> int:
        return self.cols * self.dtype.itemsize

    @property
    def size(self) -> int:
        return self.offset + self.rows * self.row_bytes


def npy_layout(head: bytes, *, complete: bool) -> NpyLayout | None:
    """The layout of a .npy body from its first bytes; None if more bytes are needed (and may come).
    Only C-order, 2-D, non-empty, little-endian float32/float64 arrays are accepted."""
    if len(head) < len(NPY_MAGIC) + 2:
        if complete or not NPY_MAGIC.startswith(head[: len(NPY_MAGIC)]):
            raise InvalidInput("is not a .npy file (too short or no \\x93NUMPY magic)", "body")
        return None
    if not head.startswith(NPY_MAGIC):
        raise InvalidInput("is not a .npy file (no \\x93NUMPY magic)", "body")
    major = head[len(NPY_MAGIC)]
    length_size = {1: 2, 2: 4, 3: 4}.get(major)
    if length_size is None:
        raise InvalidInput(f"unsupported .npy format version {major}", "body")
    start = len(NPY_MAGIC) + 2
    if len(head) < start + length_size:
        _need_more(complete)
        return None
    header_len = struct.unpack("<H" if length_size == 2 else "<I", head[start : start + length_size])[0]
    offset = start + length_size + header_len
    if offset > NPY_HEAD_MAX:
        raise InvalidInput(f".npy header of {header_len} bytes is too large", "body")
    if len(head) < offset:
        _need_more(complete)
        return None
    fp = io.BytesIO(bytes(head[:offset]))
    try:
        npy_format.read_magic(fp)
        # Version 3 differs from 2 only in allowing a UTF-8 header, which no float array needs.
        reader = npy_format.read_array_header_1_0 if major == 1 else npy_format.read_array_header_2_0
        shape, fortran_order, dtype = reader(fp)
    except (ValueError, UnicodeDecodeError, TypeError) as exc:
        raise InvalidInput(f"malformed .npy header: {exc}", "body") from None
    dtype = np.dtype(dtype)
    if dtype.byteorder == "=":
        dtype = dtype.newbyteorder("<")
    if dtype not in NPY_DTYPES:
        raise InvalidInput(f".npy dtype must be little-endian float32 or float64, got {dtype.str}", "body")
    if len(shape) != 2:
        raise InvalidInput(f".npy array must be 2-D (rows, dim), got shape {shape}", "body")
    if fortran_order and shape[0] > 1 and shape[1] > 1:
        raise InvalidInput(".npy array must be in C (row-major) order, got Fortran order", "body")
    if shape[0] < 1 or shape[1] < 1:
        raise InvalidInput(f".npy array must not be empty, got shape {shape}", "body")
    return NpyLayout(offset=offset, dtype=dtype, rows=int(shape[0]), cols=int(shape[1]))


def _need_more(complete: bool) -> None:
    if complete:
        raise InvalidInput("truncated .npy header", "body")
    return None


def check_npy(layout: NpyLayout, dim: int, size: int | None = None) -> None:
    """The array's dimension is the collection's, and (once the whole body is in) its length is exact."""
    if layout.cols != dim:
        raise InvalidInput(f".npy rows have dimension {layout.cols}, the collection's is {dim}", "body")
    if size is not None and size != layout.size:
        what = "truncated" if size < layout.size else "has trailing bytes"
        raise InvalidInput(f".npy body {what}: {size} bytes, its header promises {layout.size} "
                           f"({layout.rows} x {layout.cols} {layout.dtype.name})", "body")


class NpyValues:
    """Checks a .npy body's values as it streams by (every one finite as float32), so a bad value is a 422
    at upload time and the ingest job need not read the upload twice. Feed it every byte of the body."""

    def __init__(self, layout: NpyLayout) -> None:
        self.layout = layout
        self.position = 0  # body bytes fed so far
        self.values = 0  # values checked so far
        self._carry = b""  # the start of a value split between two pieces

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        start, self.position = self.position, self.position + len(data)
        lo, hi = max(0, self.layout.offset - start), min(len(data), self.layout.size - start)
        if hi <= lo:
            return
        piece = memoryview(data)[lo:hi]
        if self._carry:
            piece = memoryview(self._carry + piece.tobytes())
        size = self.layout.dtype.itemsize
        whole = len(piece) - len(piece) % size
        self._carry = piece[whole:].tobytes()
        if not whole:
            return
        values = np.frombuffer(piece[:whole], dtype=self.layout.dtype)
        if self.layout.dtype != np.float32:
            with np.errstate(over="ignore", invalid="ignore"):
                values = values.astype(np.float32)
        finite = np.isfinite(values)
        if not finite.all():
            row = (self.values + int(np.flatnonzero(~finite)[0])) // self.layout.cols
            raise InvalidInput("must be finite float32 values (no NaN, Infinity or overflow)", f"vectors[{row}]")
        self.values += len(values)


class UploadHead:
    """What the start of an upload says, checked as it streams in whatever its chunk boundaries (a client may
    send one byte at a time): its kind, from the magic bytes when the media type does not say, and for .npy the
    header (dtype, shape, the collection's dimension) as soon as it is complete, then every value after it."""

    def __init__(self, kind: str | None, dim: int) -> None:
        self.kind = kind  # "npy", "parquet", or None until the magic bytes are in
        self.dim = dim
        self.head = bytearray()  # the first NPY_HEAD_MAX bytes
        self.values: NpyValues | None = None  # set once the .npy header is complete and checked
        # Every chunk until then: NpyValues counts positions from the first byte of the body, so it must be fed
        # all of them, the ones that came before the kind was known included. At most NPY_HEAD_MAX + one chunk.
        self._early: list[bytes] = []

    def feed(self, chunk: bytes) -> None:
        if self.values is not None:
            self.values.feed(chunk)
            return
        if len(self.head) >= NPY_HEAD_MAX:
            return  # Parquet: only its first bytes matter here (a .npy has its values checker by now)
        self.head += chunk[: NPY_HEAD_MAX - len(self.head)]
        if self.kind is None and len(self.head) >= 8:
            self.kind = sniff(bytes(self.head[:8]))
            if self.kind is None:  # no need to stream the rest into Redis first
                raise InvalidInput("application/octet-stream upload is neither .npy nor Parquet", "body")
        if self.kind == "parquet":
            self._early.clear()
            return
        self._early.append(chunk)
        if self.kind == "npy":
            layout = npy_layout(bytes(self.head), complete=False)
            if layout is not None:  # refuse a wrong dtype or dimension before the rest arrives
                check_npy(layout, self.dim)
                self.values = NpyValues(layout)
                self.values.feed(b"".join(self._early))
                self._early.clear()

    def finish(self) -> str | None:
        """The kind once the whole body is in (a body of under 8 bytes is sniffed only now)."""
        if self.kind is None:
            self.kind = sniff(bytes(self.head[:8]))
        return self.kind


# Parquet ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParquetShape:
    rows: int
    has_ids: bool
    metadata_columns: tuple[str, ...]


def parquet_footer_length(tail: bytes, size: int) -> int:
    """From the last 8 bytes: the length of the Thrift footer that precedes them."""
    if len(tail) < 8 or size < 12 or tail[-4:] != PARQUET_MAGIC:
        raise InvalidInput("is not a Parquet file, or it is truncated (no PAR1 at the end)", "body")
    length = int(struct.unpack("<I", tail[-8:-4])[0])
    if length + 12 > size:
        raise InvalidInput(f"Parquet footer length {length} exceeds the body; the file is truncated", "body")
    return length


def parquet_shape(footer: bytes, dim: int) -> ParquetShape:
    """Check the schema from the footer alone (no row data): a `vector` list column of numbers, an
    optional `id` column of strings or integers; every other column becomes metadata."""
    # The footer describes itself; wrapped between magics it reads like a file with no row groups in reach.
    fake = PARQUET_MAGIC + footer + struct.pack("<I", len(footer)) + PARQUET_MAGIC
    try:
        meta = pq.read_metadata(pa.BufferReader(fake))
        schema = meta.schema.to_arrow_schema()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InvalidInput(f"not a valid Parquet file: {exc}", "body") from None
    return check_schema(schema, int(meta.num_rows), dim)


def check_schema(schema: pa.Schema, rows: int, dim: int) -> ParquetShape:
    names = list(schema.names)
    if len(set(names)) != len(names):
        raise InvalidInput("Parquet columns must have distinct names", "body")
    if VECTOR_COLUMN not in names:
        raise InvalidInput(f"Parquet file needs a {VECTOR_COLUMN!r} column (a list of numbers per row)", "vector")
    vtype = schema.field(VECTOR_COLUMN).type
    if not (pa.types.is_list(vtype) or pa.types.is_large_list(vtype) or pa.types.is_fixed_size_list(vtype)) or \
            not _numeric(vtype.value_type):
        raise InvalidInput(f"column {VECTOR_COLUMN!r} must be a list of numbers, got {vtype}", "vector")
    if pa.types.is_fixed_size_list(vtype) and vtype.list_size != dim:
        raise InvalidInput(f"column {VECTOR_COLUMN!r} has dimension {vtype.list_size}, the collection's is {dim}",
                           "vector")
    has_ids = ID_COLUMN in names
    if has_ids:
        itype = schema.field(ID_COLUMN).type
        if not (pa.types.is_string(itype) or pa.types.is_large_string(itype) or pa.types.is_integer(itype)):
            raise InvalidInput(f"column {ID_COLUMN!r} must hold strings or integers, got {itype}", "id")
    meta_cols = tuple(n for n in names if n not in (ID_COLUMN, VECTOR_COLUMN))
    for n in meta_cols:
        t = schema.field(n).type
        if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
            raise InvalidInput(f"metadata column {n!r} is binary, which JSON cannot hold", f"metadata.{n}")
    if rows < 1:
        raise InvalidInput("Parquet file has no rows", "body")
    return ParquetShape(rows=rows, has_ids=has_ids, metadata_columns=meta_cols)


def _numeric(t: pa.DataType) -> bool:
    return bool(pa.types.is_floating(t) or pa.types.is_integer(t))


def parquet_parts(data: bytes | memoryview, dim: int, rows_per_part: int) -> tuple[ParquetShape, Iterator[pa.Table]]:
    """The file's shape (from its footer) and its rows in tables of exactly `rows_per_part` (the last one fewer),
    decoded a batch at a time: a small compressed file that expands to gigabytes never sits in memory whole."""
    try:
        pf = pq.ParquetFile(pa.BufferReader(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InvalidInput(f"not a valid Parquet file: {exc}", "body") from None
    shape = check_schema(pf.schema_arrow, int(pf.metadata.num_rows), dim)

    def parts() -> Iterator[pa.Table]:
        pending: list[pa.RecordBatch] = []
        have = 0
        try:
            for batch in pf.iter_batches(batch_size=rows_per_part):
                pending.append(batch)
                have += batch.num_rows
                while have >= rows_per_part:
                    table = pa.Table.from_batches(pending)
                    yield table.slice(0, rows_per_part)
                    rest = table.slice(rows_per_part)
                    pending, have = rest.to_batches(), rest.num_rows
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise InvalidInput(f"not a valid Parquet file: {exc}", "body") from None
        if have:
            yield pa.Table.from_batches(pending)

    return shape, parts()


def read_parquet(data: bytes | memoryview) -> pa.Table:
    try:
        return pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InvalidInput(f"not a valid Parquet file: {exc}", "body") from None


def table_vectors(table: pa.Table, dim: int, first_row: int = 0) -> np.ndarray:
    """The `vector` column as float32 (n, dim); 422 naming the first row of the wrong length, null or
    non-finite value (row numbers count from `first_row`)."""
    column = table.column(VECTOR_COLUMN).combine_chunks()
    n = len(column)
    if column.null_count:
        row = int(pc.index(pc.is_null(column), True).as_py())
        raise InvalidInput("vector is null", f"vectors[{first_row + row}]")
    if not pa.types.is_fixed_size_list(column.type):
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        wrong = np.flatnonzero(lengths != dim)
        if len(wrong):
            row = int(wrong[0])
            raise InvalidInput(f"has dimension {int(lengths[row])}, the collection's is {dim}",
                               f"vectors[{first_row + row}]")
    flat = pc.list_flatten(column)
    # Nulls inside a list come out as NaN and are refused with the other non-finite values below.
    values = flat.to_numpy(zero_copy_only=False)
    with np.errstate(over="ignore", invalid="ignore"):
        matrix = values.astype(np.float32, copy=False).reshape(n, dim)
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InvalidInput("must be finite float32 values (no NaN, null, Infinity or overflow)",
                           f"vectors[{first_row + row}]")
    return np.asarray(matrix)  # pyarrow is untyped: the Any it gave becomes the array it is


def table_ids(table: pa.Table, max_length: int) -> list[str] | None:
    if ID_COLUMN not in table.column_names:
        return None
    column = table.column(ID_COLUMN)
    if column.null_count:
        row = int(pc.index(pc.is_null(column.combine_chunks()), True).as_py())
        raise InvalidInput("must be a non-empty string", f"ids[{row}]")
    ids = [str(v) for v in column.to_pylist()]
    return check_ids(ids, len(ids), max_length)


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def table_metadata(table: pa.Table, max_bytes: int) -> list[str | None] | None:
    """Every column but `id` and `vector` as a JSON object per row (nulls left out), serialized."""
    names = [n for n in table.column_names if n not in (ID_COLUMN, VECTOR_COLUMN)]
    if not names:
        return None
    rows = [{k: v for k, v in row.items() if v is not None} or None for row in table.select(names).to_pylist()]
    return check_metadata(rows, len(rows), max_bytes, json_default=_json_default)
