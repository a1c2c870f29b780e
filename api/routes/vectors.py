from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from api.deps import CollectionName, DispatcherDep, PrincipalDep, RedisDep, SettingsDep, WaitWrite, load_collection
from api.dispatch import Pending
from api.strict_json import StrictJSONRoute
from common import codec
from common.celery_app import ADD, DELETE, GET
from common.errors import InvalidInput
from common.schemas import AddVectors, DeleteVectors, ErrorBody, JobAccepted, VectorOut

router = APIRouter(prefix="/v1/collections/{name}/vectors", tags=["vectors"], route_class=StrictJSONRoute,
                   responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody},
                              422: {"model": ErrorBody}})


@router.post("", responses={202: {"model": JobAccepted}, 200: {"description": "the finished add job"}})
async def add_vectors(name: CollectionName, body: AddVectors, r: RedisDep, principal: PrincipalDep,
                      dispatcher: DispatcherDep, settings: SettingsDep, wait: WaitWrite = 0.0) -> Any:
    """Upsert vectors (an id that exists is replaced). Without `wait`, 202 with the job at once."""
    col = await load_collection(name, r, principal, write=True)
    n = len(body.vectors)
    if n > settings.max_vectors_per_request:
        raise InvalidInput(f"at most {settings.max_vectors_per_request} vectors per request; upload larger "
                           "batches as .npy or Parquet", "vectors")
    matrix = codec.matrix_from_rows(body.vectors, col.dim)
    kwargs: dict[str, Any] = {"collection": name, "uid": col.uid, "vectors_b64": codec.encode_vectors(matrix)}
    if body.ids is not None:
        kwargs["ids"] = codec.check_ids(body.ids, n, settings.max_id_length)
    if body.metadata is not None:
        codec.check_metadata(body.metadata, n, settings.max_metadata_bytes)
        kwargs["metadata"] = body.metadata
    outcome = await dispatcher.submit("add", ADD, name, kwargs, wait=wait, scope=principal.scope, total=n)
    return outcome.response() if isinstance(outcome, Pending) else outcome


@router.post("/delete", responses={202: {"model": JobAccepted}})
async def delete_vectors(name: CollectionName, body: DeleteVectors, r: RedisDep, principal: PrincipalDep,
                         dispatcher: DispatcherDep, settings: SettingsDep, wait: WaitWrite = 0.0) -> Any:
    col = await load_collection(name, r, principal, write=True)
    ids = codec.check_ids(body.ids, len(body.ids), settings.max_id_length)
    outcome = await dispatcher.submit("delete", DELETE, name, {"collection": name, "uid": col.uid, "ids": ids},
                                      wait=wait, scope=principal.scope)
    return outcome.response() if isinstance(outcome, Pending) else outcome


@router.get("/{vector_id}", response_model=VectorOut, responses={202: {"model": JobAccepted}})
async def get_vector(name: CollectionName, vector_id: Annotated[str, Path(min_length=1, max_length=256)],
                     r: RedisDep, principal: PrincipalDep, dispatcher: DispatcherDep,
                     settings: SettingsDep) -> Any:
    col = await load_collection(name, r, principal, write=False)
    outcome = await dispatcher.submit("get", GET, name, {"collection": name, "uid": col.uid, "id": vector_id},
                                      wait=settings.search_wait_default_s, scope=principal.scope)
    return outcome.response() if isinstance(outcome, Pending) else outcome
