"""`vecq ingest FILE --collection C`: bulk-load .npy, .fvecs, .parquet or .jsonl through the HTTP API.

The file is read in chunks (memory-mapped where the format allows) and each chunk is uploaded as its own
.npy or Parquet request, without waiting: the workers write one chunk while the next one uploads. Then it
waits for every job and prints a summary. Rows without ids get `--id-prefix` + their row number in the file,
so running the same file again replaces the same vectors (an idempotent upsert).

pyarrow is imported only for .parquet files (and tried for .jsonl, which go as JSON adds without it): the
client-only install (`pip install vecq`) ingests .npy, .fvecs and .jsonl.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from common.schemas import Job
from common.status import TERMINAL, JobStatus
from vecq.client import Client, VecqHTTPError

if TYPE_CHECKING:
    import pyarrow as pa

NEEDS_PYARROW = "reading .parquet files needs pyarrow: pip install pyarrow (or pip install 'vecq[server]')"

SUFFIXES = (".npy", ".fvecs", ".parquet", ".jsonl")
JSON_BATCH = 1000  # rows per JSON add when a .jsonl chunk cannot become a Parquet table


@dataclass(frozen=True)
class IngestArgs:
    """What `vecq ingest` was asked (vecq/cli.py reads it from the command line)."""

    file: str
    collection: str
    url: str | None = None
    api_key: str | None = None
    create: bool = False
    dim: int | None = None
    metric: str = "l2"
    index: str = "Flat"
    id_prefix: str = ""
    batch: int = 50_000
    timeout: float = 3600
    http_timeout: float = 300
    no_progress: bool = False


@dataclass
class Chunk:
    first_row: int
    rows: int
    payload: Any  # a 2-D array (sent as .npy), a pyarrow Table (sent as Parquet) or a list of JSON records
    has_ids: bool = False


class VectorsPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} vec/s" if speed else "- vec/s", style="progress.data.speed")


# Readers: (dim, total rows or None, chunks) ------------------------------------------------------------------


def read_npy(path: Path, batch: int) -> tuple[int, int, Iterator[Chunk]]:
    array = np.load(path, mmap_mode="r")
    if array.ndim != 2:
        raise ValueError(f"{path.name}: a 2-D array is needed, got shape {array.shape}")
    return array.shape[1], array.shape[0], (Chunk(i, len(array[i : i + batch]), array[i : i + batch])
                                            for i in range(0, array.shape[0], batch))


def read_fvecs(path: Path, batch: int) -> tuple[int, int, Iterator[Chunk]]:
    """.fvecs: each vector is an int32 dimension followed by that many float32 values."""
    raw = np.memmap(path, dtype="<i4", mode="r")
    if raw.size == 0:
        raise ValueError(f"{path.name} is empty")
    dim = int(raw[0])
    if dim <= 0 or raw.size % (dim + 1):
        raise ValueError(f"{path.name}: not an .fvecs file of {dim}-d vectors ({raw.size * 4} bytes)")
    rows = raw.reshape(-1, dim + 1)
    if not (rows[:, 0] == dim).all():
        raise ValueError(f"{path.name}: vectors of different dimensions")
    vectors = rows[:, 1:].view("<f4")
    return dim, len(rows), (Chunk(i, len(vectors[i : i + batch]), np.ascontiguousarray(vectors[i : i + batch]))
                            for i in range(0, len(rows), batch))


def read_parquet(path: Path, batch: int) -> tuple[int | None, int, Iterator[Chunk]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(NEEDS_PYARROW) from None
    file = pq.ParquetFile(path)
    if "vector" not in file.schema_arrow.names:
        raise ValueError(f"{path.name}: no 'vector' column")
    has_ids = "id" in file.schema_arrow.names

    def chunks() -> Iterator[Chunk]:
        row = 0
        for b in file.iter_batches(batch_size=batch):
            yield Chunk(row, b.num_rows, pa.Table.from_batches([b]), has_ids)
            row += b.num_rows

    first = next(file.iter_batches(batch_size=1, columns=["vector"]), None)
    dim = len(first.column(0)[0].as_py()) if first is not None and first.num_rows else None
    return dim, file.metadata.num_rows, chunks()


def read_jsonl(path: Path, batch: int) -> tuple[int | None, int, Iterator[Chunk]]:
    """One JSON object per line: {"id"?, "vector": [...], any other keys: metadata}."""
    with open(path, "rb") as f:
        total = sum(1 for line in f if line.strip())
    dim = None
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                dim = len(json.loads(line)["vector"])
                break

    def chunks() -> Iterator[Chunk]:
        records: list[dict[str, Any]] = []
        row = 0
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise ValueError(f"{path.name}:{number}: not JSON ({exc})") from None
                if not isinstance(record, dict) or "vector" not in record:
                    raise ValueError(f"{path.name}:{number}: each line must be an object with a 'vector'")
                records.append(record)
                if len(records) == batch:
                    yield Chunk(row, len(records), records, any("id" in r for r in records))
                    row, records = row + len(records), []
        if records:
            yield Chunk(row, len(records), records, any("id" in r for r in records))

    return dim, total, chunks()


READERS = {".npy": read_npy, ".fvecs": read_fvecs, ".parquet": read_parquet, ".jsonl": read_jsonl}


# Sending ---------------------------------------------------------------------------------------------------


def send(client: Client, collection: str, chunk: Chunk, id_prefix: str) -> list[Job]:
    """Queue one chunk; returns its jobs (one, or several when a .jsonl chunk goes as JSON adds)."""
    prefix = None if chunk.has_ids else id_prefix
    payload = chunk.payload
    if isinstance(payload, list):  # .jsonl records
        table = jsonl_table(payload)
        if table is None:
            return json_adds(client, collection, chunk, prefix)
        payload = table
    return [client.upload(collection, payload, id_prefix=prefix, id_start=chunk.first_row, wait=False)]


def jsonl_table(records: list[dict[str, Any]]) -> pa.Table | None:
    """Records as a Parquet-ready table; None when a key's values do not share one type, or without pyarrow."""
    try:
        import pyarrow as pa
    except ImportError:
        return None
    try:
        return pa.Table.from_pylist(records)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return None


def json_adds(client: Client, collection: str, chunk: Chunk, prefix: str | None) -> list[Job]:
    out = []
    records = chunk.payload
    for i in range(0, len(records), JSON_BATCH):
        part = records[i : i + JSON_BATCH]
        ids = [str(r["id"]) if "id" in r else f"{prefix or ''}{chunk.first_row + i + j}" for j, r in enumerate(part)]
        meta = [{k: v for k, v in r.items() if k not in ("id", "vector")} or None for r in part]
        out.append(client.add(collection, [r["vector"] for r in part], ids=ids, metadata=meta, wait=False))
    return out


def to_npy_array(array: np.ndarray) -> np.ndarray:
    return array if array.dtype in (np.dtype("<f4"), np.dtype("<f8")) else array.astype("<f4")


def run(args: IngestArgs) -> int:
    console = Console(stderr=True)
    path = Path(args.file)
    suffix = path.suffix.lower()
    if suffix not in READERS:
        console.print(f"[red]vecq ingest: {path.name}: expected one of {', '.join(SUFFIXES)}[/red]")
        return 2
    try:
        dim, total, chunks = READERS[suffix](path, args.batch)
    except (OSError, ValueError) as exc:
        console.print(f"[red]vecq ingest: {escape(str(exc))}[/red]")
        return 2
    with Client(args.url, args.api_key, timeout=args.http_timeout) as client:
        try:
            if args.create:
                size = args.dim or dim
                if size is None:
                    console.print("[red]vecq ingest: --dim is needed (the file has no rows)[/red]")
                    return 2
                client.create_collection(args.collection, size, args.metric, args.index, exist_ok=True)
            col = client.get_collection(args.collection)
            if dim is not None and dim != col.dim:
                console.print(f"[red]vecq ingest: {path.name} has {dim}-d vectors, {args.collection} is "
                              f"{col.dim}-d[/red]")
                return 2
            return upload_all(client, console, args, path, total, chunks, col.count)
        except (VecqHTTPError, OSError, ValueError) as exc:
            console.print(f"[red]vecq ingest: {escape(str(exc))}[/red]")
            return 1
        except Exception as exc:  # httpx transport errors and the like: one line, not a traceback
            console.print(f"[red]vecq ingest: {type(exc).__name__}: {escape(str(exc))}[/red]")
            return 1


def upload_all(client: Client, console: Console, args: IngestArgs, path: Path, total: int,
               chunks: Iterator[Chunk], count_before: int) -> int:
    started = time.perf_counter()
    pending: list[tuple[Job, int]] = []  # (job, rows) not yet seen finished
    written: dict[str, int] = {}
    failed: list[Job] = []
    columns = (TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(), VectorsPerSecond(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, disable=args.no_progress) as bar:
        sent_task = bar.add_task("uploaded", total=total)
        done_task = bar.add_task("written", total=total)

        def poll(wait: float) -> None:
            for job, rows in list(pending):
                current = client.get_job(job.job_id, wait=wait)
                progress = current.progress.done if current.progress else 0
                if current.status in TERMINAL:
                    pending.remove((job, rows))
                    progress = rows if current.status == JobStatus.SUCCEEDED else progress
                    if current.status != JobStatus.SUCCEEDED:
                        failed.append(current)
                written[job.job_id] = progress
                wait = 0  # long-poll the oldest only; the rest are a quick look
            bar.update(done_task, completed=sum(written.values()))

        for chunk in chunks:
            if isinstance(chunk.payload, np.ndarray):
                chunk.payload = to_npy_array(chunk.payload)
            jobs = send(client, args.collection, chunk, args.id_prefix)
            share = [chunk.rows // len(jobs)] * len(jobs)
            share[-1] += chunk.rows - sum(share)
            pending.extend(zip(jobs, share, strict=True))
            bar.advance(sent_task, chunk.rows)
            poll(0)
        while pending:
            poll(min(2.0, args.timeout))
            if time.perf_counter() - started > args.timeout:
                console.print(f"[red]vecq ingest: {len(pending)} jobs still running after {args.timeout}s[/red]")
                return 1
    seconds = time.perf_counter() - started
    written_rows = sum(written.values())
    count = client.get_collection(args.collection).count
    for job in failed[:5]:
        error = job.error
        detail = (error.message + (f" (field {error.field})" if error.field else "")) if error else ""
        console.print(f"[red]job {job.job_id} {job.status}: {escape(detail)}[/red]")
    rate = written_rows / seconds if seconds > 0 else 0.0
    print(f"{path.name}: {written_rows} vectors in {seconds:.2f}s ({rate:,.0f} vectors/s) into {args.collection}; "
          f"count {count_before} -> {count}" + (f"; {len(failed)} jobs failed" if failed else ""), flush=True)
    return 1 if failed else 0
