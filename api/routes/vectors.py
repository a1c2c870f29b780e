"""Writes and point reads of vectors. An add is JSON (inline, at most max_vectors_per_request vectors) or a
binary upload (.npy or Parquet) that streams into a Redis blob and becomes one `vecq.ingest` job (api/ingest.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from api import ingest
from api.deps import (
    CatalogDep,
    CollectionName,
    DispatcherDep,
    PrincipalDep,
    RedisDep,
    SettingsDep,
    VectorIdPath,
    WaitWrite,
    WriterDep,
    load_collection,
)
from api.dispatch import Pending, RawResult
from api.ingest import NPY, PARQUET
from api.strict_json import StrictJSONRoute
from common import codec, filters
from common.celery_app import DELETE, GET
from common.errors import InvalidInput
from common.schemas import AddVectors, DeleteVectors, ErrorBody, JobAccepted, VectorOut

router = APIRouter(prefix="/v1/collections/{name}/vectors", tags=["vectors"], route_class=StrictJSONRoute,
                   responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody},
                              422: {"model": ErrorBody}})

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


@router.post("", openapi_extra={"requestBody": ADD_BODY},
             responses={202: {"model": JobAccepted}, 200: {"description": "the finished add job"},
                        413: {"model": ErrorBody}, 415: {"model": ErrorBody}})
async def add_vectors(name: CollectionName, request: Request, r: RedisDep, principal: PrincipalDep,
                      catalog: CatalogDep, dispatcher: DispatcherDep, writer: WriterDep, settings: SettingsDep,
                      wait: WaitWrite = 0.0, id_prefix: IdPrefix = None, id_start: IdStart = 0) -> Any:
    """Upsert vectors (an id that exists is replaced). Without `wait`, 202 with the job at once.

    JSON (`{"vectors", "ids"?, "metadata"?}`, up to max_vectors_per_request vectors) or a binary upload:
    `application/x-npy` or `application/vnd.apache.parquet`. An upload is checked (header, dimension, exact
    length, schema) while it streams into Redis, then a `vecq.ingest` job checks every value and writes it
    in parts; `progress` on the job shows the vectors written. Nothing of a rejected upload is applied."""
    principal.require(name, write=True)
    col = await catalog.get(name)  # its uid goes with the job: a worker refuses a collection deleted since
    outcome = await ingest.add(request, r, col, dispatcher, settings, wait=wait, scope=principal.scope,
                               id_prefix=id_prefix, id_start=id_start, writer=writer)
    return outcome.response() if isinstance(outcome, Pending | RawResult) else outcome


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
async def get_vector(name: CollectionName, vector_id: VectorIdPath,
                     r: RedisDep, principal: PrincipalDep, dispatcher: DispatcherDep,
                     settings: SettingsDep) -> Any:
    col = await load_collection(name, r, principal, write=False)
    outcome = await dispatcher.submit("get", GET, name, {"collection": name, "uid": col.uid, "id": vector_id},
                                      wait=settings.search_wait_default_s, scope=principal.scope)
    return outcome.response() if isinstance(outcome, Pending) else outcome
