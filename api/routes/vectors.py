"""Writes and point reads of vectors. An add is JSON (inline, at most max_vectors_per_request vectors) or a
binary upload (.npy or Parquet) that streams into a Redis blob and becomes one `vecq.ingest` job."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api import strict_json
from api.deps import CollectionName, DispatcherDep, PrincipalDep, RedisDep, SettingsDep, WaitWrite, load_collection
from api.dispatch import Dispatcher, Pending, new_job_id
from api.strict_json import StrictJSONRoute
from common import blobs, codec, filters, formats, jobs
from common.celery_app import ADD, DELETE, GET, INGEST
from common.collections import Collection
from common.errors import InvalidInput, TooLarge
from common.schemas import AddVectors, DeleteVectors, ErrorBody, JobAccepted, VectorOut
from common.settings import Settings

router = APIRouter(prefix="/v1/collections/{name}/vectors", tags=["vectors"], route_class=StrictJSONRoute,
                   responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody},
                              422: {"model": ErrorBody}})

NPY = "application/x-npy"
PARQUET = "application/vnd.apache.parquet"
UPLOAD_MEDIA = {NPY: "npy", PARQUET: "parquet", "application/x-parquet": "parquet",
                "application/octet-stream": None}  # None: told apart by the magic bytes

_BINARY = {"schema": {"type": "string", "format": "binary"}}
ADD_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": AddVectors.model_json_schema()},
        NPY: {**_BINARY, "description": "A 2-D little-endian float32/float64 C-order array (np.save)."},
        PARQUET: {**_BINARY, "description": "Columns `vector` (list of numbers), optional `id` (string or "
                                            "integer); every other column becomes metadata."},
    },
}

IdPrefix = Annotated[str | None, Query(max_length=200, description="Uploads without ids: id = id_prefix + "
                                                                   "(id_start + row number).")]
IdStart = Annotated[int, Query(ge=0, le=10**15, description="Row number of the upload's first row, for ids.")]


def media_type(request: Request) -> str:
    return (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()


@router.post("", openapi_extra={"requestBody": ADD_BODY},
             responses={202: {"model": JobAccepted}, 200: {"description": "the finished add job"},
                        413: {"model": ErrorBody}, 415: {"model": ErrorBody}})
async def add_vectors(name: CollectionName, request: Request, r: RedisDep, principal: PrincipalDep,
                      dispatcher: DispatcherDep, settings: SettingsDep, wait: WaitWrite = 0.0,
                      id_prefix: IdPrefix = None, id_start: IdStart = 0) -> Any:
    """Upsert vectors (an id that exists is replaced). Without `wait`, 202 with the job at once.

    JSON (`{"vectors", "ids"?, "metadata"?}`, up to max_vectors_per_request vectors) or a binary upload:
    `application/x-npy` or `application/vnd.apache.parquet`. An upload is checked (header, dimension, exact
    length, schema) while it streams into Redis, then a `vecq.ingest` job checks every value and writes it
    in parts; `progress` on the job shows the vectors written. Nothing of a rejected upload is applied."""
    col = await load_collection(name, r, principal, write=True)
    media = media_type(request)
    if media in UPLOAD_MEDIA:
        outcome = await upload(request, r, col, dispatcher, settings, UPLOAD_MEDIA[media], wait=wait,
                               scope=principal.scope, id_prefix=id_prefix, id_start=id_start)
    else:  # JSON; other content types are 415 in api/limits.py before this route runs
        body = await json_body(request, settings)
        outcome = await add_json(body, col, dispatcher, settings, wait=wait, scope=principal.scope,
                                 id_prefix=id_prefix, id_start=id_start)
    return outcome.response() if isinstance(outcome, Pending) else outcome


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
                   scope: str, id_prefix: str | None, id_start: int) -> Any:
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
    return await dispatcher.submit("add", ADD, col.name, kwargs, wait=wait, scope=scope, total=n)


def check_prefix(id_prefix: str, id_start: int, n: int, settings: Settings) -> None:
    if len(id_prefix) + len(str(id_start + n - 1)) > settings.max_id_length:
        raise InvalidInput(f"id_prefix makes ids longer than {settings.max_id_length} characters", "id_prefix")


async def upload(request: Request, r: RedisDep, col: Collection, dispatcher: Dispatcher, settings: Settings,
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


@router.post("/delete", responses={202: {"model": JobAccepted}})
async def delete_vectors(name: CollectionName, body: DeleteVectors, r: RedisDep, principal: PrincipalDep,
                         dispatcher: DispatcherDep, settings: SettingsDep, wait: WaitWrite = 0.0) -> Any:
    """Delete by `ids`, or every vector whose metadata matches `filter` when the job runs."""
    col = await load_collection(name, r, principal, write=True)
    kwargs: dict[str, Any] = {"collection": name, "uid": col.uid}
    if (body.ids is None) == (body.filter is None):
        raise InvalidInput("give exactly one of ids or filter", "ids")
    if body.ids is not None:
        kwargs["ids"] = codec.check_ids(body.ids, len(body.ids), settings.max_id_length)
    else:
        where = filters.parse(body.filter)
        if where is None:
            raise InvalidInput("an empty filter would delete everything: delete the collection instead", "filter")
        kwargs["filter"] = filters.canonical(where)
    outcome = await dispatcher.submit("delete", DELETE, name, kwargs, wait=wait, scope=principal.scope)
    return outcome.response() if isinstance(outcome, Pending) else outcome


@router.get("/{vector_id}", response_model=VectorOut, responses={202: {"model": JobAccepted}})
async def get_vector(name: CollectionName, vector_id: Annotated[str, Path(min_length=1, max_length=256)],
                     r: RedisDep, principal: PrincipalDep, dispatcher: DispatcherDep,
                     settings: SettingsDep) -> Any:
    col = await load_collection(name, r, principal, write=False)
    outcome = await dispatcher.submit("get", GET, name, {"collection": name, "uid": col.uid, "id": vector_id},
                                      wait=settings.search_wait_default_s, scope=principal.scope)
    return outcome.response() if isinstance(outcome, Pending) else outcome
