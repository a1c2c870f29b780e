"""The two ways vectors come in through the API: a JSON add (at most max_vectors_per_request vectors, one `vecq.add`
job) and a binary upload (.npy or Parquet), told apart by its content type or magic bytes, checked while it
streams into a Redis blob (common/blobs.py owns those keys), then handed to one `vecq.ingest` job
(worker/ingest.py)."""

from __future__ import annotations

import contextlib
from typing import Any

import redis.asyncio as aredis
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api import limits, strict_json
from api.dispatch import Dispatcher, new_job_id
from api.writer import Writer
from common import blobs, codec, formats, jobs
from common.celery_app import ADD, INGEST
from common.collections import Collection
from common.errors import InvalidInput, TooLarge
from common.schemas import AddVectors
from common.settings import Settings

NPY = "application/x-npy"
PARQUET = "application/vnd.apache.parquet"
UPLOAD_MEDIA = {NPY: "npy", PARQUET: "parquet", "application/x-parquet": "parquet",
                "application/octet-stream": None}  # None: told apart by the magic bytes


async def json_body(request: Request, settings: Settings) -> AddVectors:
    """The body as FastAPI would have parsed it (strict JSON, then the schema), with the same 422s."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > settings.max_body_bytes:
            raise TooLarge(f"request body larger than {settings.max_body_bytes} bytes", "body")
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
    try:
        data = strict_json.loads(bytes(raw))
    except ValueError as exc:  # JSONDecodeError included
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", 0), "msg": "JSON decode error",
                                       "ctx": {"error": getattr(exc, "msg", str(exc))}}]) from None
    try:
        return AddVectors.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


async def add_json(body: AddVectors, col: Collection, dispatcher: Dispatcher, settings: Settings, *, wait: float,
                   scope: str, id_prefix: str | None, id_start: int, writer: Writer | None = None) -> Any:
    n = len(body.vectors)
    if n > settings.max_vectors_per_request:
        raise InvalidInput(f"at most {settings.max_vectors_per_request} vectors per request; upload larger "
                           "batches as .npy or Parquet", "vectors")
    matrix = codec.matrix_from_rows(body.vectors, col.dim)
    kwargs: dict[str, Any] = {"collection": col.name, "uid": col.uid, "vectors_b64": codec.encode_vectors(matrix),
                              "chunk_rows": codec.rows_per_wal_entry(settings.wal_chunk_bytes, col.dim)}
    if body.ids is not None:
        kwargs["ids"] = codec.check_ids(body.ids, n, settings.max_id_length)
    elif id_prefix is not None:
        check_prefix(id_prefix, id_start, n, settings)
        kwargs.update(id_prefix=id_prefix, id_start=id_start)
    if body.metadata is not None:
        codec.check_metadata(body.metadata, n, settings.max_metadata_bytes)
        kwargs["metadata"] = body.metadata
    if writer is not None and wait > 0:
        ids: dict[str, Any] = {k: kwargs[k] for k in ("ids", "id_prefix", "id_start") if k in kwargs}
        return await writer.write(col, matrix, ids, body.metadata, scope, wait)
    return await dispatcher.submit("add", ADD, col.name, kwargs, wait=wait, scope=scope, total=n)


def check_prefix(id_prefix: str, id_start: int, n: int, settings: Settings) -> None:
    if len(id_prefix) + len(str(id_start + n - 1)) > settings.max_id_length:
        raise InvalidInput(f"id_prefix makes ids longer than {settings.max_id_length} characters", "id_prefix")


async def upload(request: Request, r: aredis.Redis, col: Collection, dispatcher: Dispatcher, settings: Settings,
                 kind: str | None, *, wait: float, scope: str, id_prefix: str | None, id_start: int) -> Any:
    """Stream the body into a blob, checking what can be checked on the way; then one ingest job."""
    declared = request.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > settings.max_upload_bytes:
        raise TooLarge(f"upload of {declared} bytes is larger than {settings.max_upload_bytes}", "body")
    writer = blobs.AsyncWriter(r, ttl=settings.blob_ttl_s)
    head = formats.UploadHead(kind, col.dim)  # the kind, and a .npy's header and values, checked as they pass
    tail = b""  # the last 8 bytes: Parquet's footer length and magic
    try:
        async for chunk in request.stream():
            if not chunk:
                continue
            if writer.size + len(chunk) > settings.max_upload_bytes:
                raise TooLarge(f"upload larger than {settings.max_upload_bytes} bytes", "body")
            head.feed(chunk)
            tail = (tail + chunk[-8:])[-8:]
            await writer.write(chunk)
        kind = head.finish()
        if writer.size == 0:
            raise InvalidInput("upload is empty", "body")
        if kind == "npy":
            values = head.values
            layout = values.layout if values is not None else formats.npy_layout(bytes(head.head), complete=True)
            assert layout is not None
            formats.check_npy(layout, col.dim, writer.size)
            rows = layout.rows
            attrs: dict[str, str | int] = {"format": "npy", "offset": layout.offset, "dtype": layout.dtype.str,
                                           "rows": rows, "cols": layout.cols, "values_checked": int(values is not None)}
        elif kind == "parquet":
            if not head.head.startswith(formats.PARQUET_MAGIC):
                raise InvalidInput("is not a Parquet file (no PAR1 magic at the start)", "body")
            length = formats.parquet_footer_length(tail, writer.size)
            await writer.finish()
            footer = await writer.read(writer.size - 8 - length, writer.size - 8)
            shape = formats.parquet_shape(footer, col.dim)
            rows = shape.rows
            if rows * col.dim * 4 > settings.max_upload_bytes:  # compressed, it may be far smaller than it decodes
                raise TooLarge(f"the file's {rows:,} rows of dimension {col.dim} decode to {rows * col.dim * 4:,} "
                               f"bytes of vectors, over VECQ_MAX_UPLOAD_BYTES", "body")
            if id_prefix is not None and shape.has_ids:
                raise InvalidInput("the file has an id column; id_prefix applies only to uploads without ids",
                                   "id_prefix")
            attrs = {"format": "parquet"}
        else:
            raise InvalidInput("application/octet-stream upload is neither .npy nor Parquet", "body")
        if id_prefix is not None:
            check_prefix(id_prefix, id_start, rows, settings)
        blob = await writer.commit(**attrs)
    except BaseException:
        await writer.abort()
        raise
    kwargs: dict[str, Any] = {"collection": col.name, "uid": col.uid, "blob": blob.id, "id_start": id_start}
    if id_prefix is not None:
        kwargs["id_prefix"] = id_prefix
    job_id = new_job_id()  # also the seed of generated ids: a redelivered ingest makes the same ones
    try:
        return await dispatcher.submit("ingest", INGEST, col.name, kwargs, wait=wait, scope=scope, total=rows,
                                       job_id=job_id)
    except Exception:
        # Once its record exists the job owns the blob (and deletes it when it ends); before that, nothing
        # will ever read it.
        with contextlib.suppress(Exception):
            if await jobs.aget(r, job_id) is None:
                await blobs.adelete(r, blob.id)
        raise


async def add(request: Request, r: aredis.Redis, col: Collection, dispatcher: Dispatcher, settings: Settings, *,
              wait: float, scope: str, id_prefix: str | None, id_start: int, writer: Writer | None = None) -> Any:
    """An add request's body, whichever its kind, as one job (its outcome, or its Pending)."""
    media = limits.media_type(request.headers.get("content-type"))
    if media in UPLOAD_MEDIA:
        return await upload(request, r, col, dispatcher, settings, UPLOAD_MEDIA[media], wait=wait, scope=scope,
                            id_prefix=id_prefix, id_start=id_start)
    # JSON; other content types are 415 in api/limits.py before the route runs
    body = await json_body(request, settings)
    return await add_json(body, col, dispatcher, settings, wait=wait, scope=scope, id_prefix=id_prefix,
                          id_start=id_start, writer=writer)
