from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from api.deps import (
    CatalogDep,
    CollectionName,
    DispatcherDep,
    PrincipalDep,
    RedisDep,
    SettingsDep,
    WaitWrite,
    load_collection,
)
from api.dispatch import Pending
from api.strict_json import StrictJSONRoute
from common import collections, wal
from common import snapshots as snapshot_state
from common.celery_app import CREATE_COLLECTION, PURGE, SNAPSHOT
from common.collections import Collection
from common.errors import InvalidInput
from common.schemas import (
    BODY_ERRORS,
    V1_ERRORS,
    CollectionCreate,
    CollectionList,
    CollectionOut,
    JobAccepted,
    error_responses,
)

router = APIRouter(prefix="/v1/collections", tags=["collections"], route_class=StrictJSONRoute,
                   responses=error_responses(*V1_ERRORS, *BODY_ERRORS))


async def describe(r: RedisDep, col: Collection) -> dict[str, Any]:
    count, lsn = await wal.astats(r, col)
    return {**col.public(), "count": count, "lsn": lsn, "snapshot_lsn": await snapshot_state.alast_lsn(r, col)}


@router.post("", status_code=201, response_model=CollectionOut,
             responses={202: {"model": JobAccepted}})
async def create_collection(body: CollectionCreate, dispatcher: DispatcherDep, principal: PrincipalDep,
                            settings: SettingsDep, catalog: CatalogDep, wait: WaitWrite = 30.0) -> Any:
    principal.require(body.name, write=True)
    catalog.forget(body.name)
    if body.dim > settings.max_dim:
        raise InvalidInput(f"dim must be at most {settings.max_dim}", "dim")
    # Only a worker imports FAISS, so a worker judges the index description and creates the record.
    outcome = await dispatcher.submit("create_collection", CREATE_COLLECTION, body.name, body.model_dump(),
                                      wait=wait, scope=principal.scope)
    if isinstance(outcome, Pending):
        return outcome.response()
    return JSONResponse(outcome, status_code=201)


@router.get("", response_model=CollectionList)
async def list_collections(r: RedisDep, principal: PrincipalDep) -> dict[str, Any]:
    out = []
    for name in await collections.anames(r):
        if principal.allows(name):
            try:
                out.append(await describe(r, await collections.aget(r, name)))
            except Exception:  # deleted between the listing and the read
                continue
    return {"collections": out}


@router.get("/{name}", response_model=CollectionOut)
async def get_collection(name: CollectionName, r: RedisDep, principal: PrincipalDep) -> dict[str, Any]:
    return await describe(r, await load_collection(name, r, principal, write=False))


@router.delete("/{name}", status_code=204)
async def delete_collection(name: CollectionName, r: RedisDep, principal: PrincipalDep,
                            dispatcher: DispatcherDep, catalog: CatalogDep) -> Response:
    col = await load_collection(name, r, principal, write=True)
    await collections.aremove(r, col, wal.data_keys(col) + snapshot_state.data_keys(col))
    catalog.forget(name)
    # Snapshot files live where workers can reach them, not necessarily here: a worker removes them.
    await dispatcher.submit("purge", PURGE, name, {"collection": name, "uid": col.uid}, wait=0,
                            scope=principal.scope)
    return Response(status_code=204)


@router.post("/{name}/snapshot", status_code=200, responses={202: {"model": JobAccepted}})
async def snapshot(name: CollectionName, r: RedisDep, principal: PrincipalDep, dispatcher: DispatcherDep,
                   wait: WaitWrite = 0.0) -> Any:
    col = await load_collection(name, r, principal, write=True)
    outcome = await dispatcher.submit("snapshot", SNAPSHOT, name, {"collection": name, "uid": col.uid},
                                      wait=wait, scope=principal.scope)
    return outcome.response() if isinstance(outcome, Pending) else outcome
