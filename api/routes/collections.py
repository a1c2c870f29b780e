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
from common import collections, filters, segments, wal
from common.celery_app import COMPACT, COUNT, CREATE_COLLECTION, PURGE, SEAL
from common.collections import Collection
from common.errors import InvalidInput
from common.schemas import (
    BODY_ERRORS,
    V1_ERRORS,
    CollectionCreate,
    CollectionList,
    CollectionOut,
    CountOut,
    CountRequest,
    JobAccepted,
    error_responses,
)

router = APIRouter(prefix="/v1/collections", tags=["collections"], route_class=StrictJSONRoute,
                   responses=error_responses(*V1_ERRORS, *BODY_ERRORS))


async def describe(r: RedisDep, col: Collection) -> dict[str, Any]:
    count, lsn = await wal.astats(r, col)
    manifest, seal = await segments.aread(r, col), await segments.astate(r, col)
    return {**col.public(), "count": count, "lsn": lsn, "sealed_lsn": manifest.sealed_lsn,
            "sealed_rows": manifest.rows, "growing_rows": seal.growing_rows, "segments": manifest.public()}


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
    await collections.aremove(r, col, wal.data_keys(col) + segments.data_keys(col))
    catalog.forget(name)
    # Segment files live where workers can reach them, not necessarily here: a worker removes them.
    await dispatcher.submit("purge", PURGE, name, {"collection": name, "uid": col.uid}, wait=0,
                            scope=principal.scope)
    return Response(status_code=204)


async def run_on_segments(job_type: str, task: str, name: str, r: RedisDep, principal: PrincipalDep,
                          dispatcher: DispatcherDep, wait: float) -> Any:
    col = await load_collection(name, r, principal, write=True)
    outcome = await dispatcher.submit(job_type, task, name, {"collection": name, "uid": col.uid}, wait=wait,
                                      scope=principal.scope)
    return outcome.response() if isinstance(outcome, Pending) else outcome


@router.post("/{name}/count", response_model=CountOut, responses={202: {"model": JobAccepted}})
async def count(name: CollectionName, body: CountRequest, r: RedisDep, principal: PrincipalDep,
                dispatcher: DispatcherDep, settings: SettingsDep, wait: WaitWrite = 30.0) -> Any:
    """How many vectors match `filter` (docs/filters.md), at the consistency asked for."""
    col = await load_collection(name, r, principal, write=False)
    where = filters.parse(body.filter)
    if body.consistency == "session" and body.min_lsn is None:
        raise InvalidInput("consistency 'session' needs min_lsn", "min_lsn")
    if where is not None and filters.never_matches(where):
        return {"count": 0, "lsn": "0-0"}
    kwargs = {"collection": name, "uid": col.uid, "filter": filters.canonical(where) if where else None,
              "consistency": body.consistency, "min_lsn": body.min_lsn}
    outcome = await dispatcher.submit("count", COUNT, name, kwargs, wait=wait, scope=principal.scope)
    return outcome.response() if isinstance(outcome, Pending) else outcome


@router.post("/{name}/seal", status_code=200, responses={202: {"model": JobAccepted}})
async def seal(name: CollectionName, r: RedisDep, principal: PrincipalDep, dispatcher: DispatcherDep,
               wait: WaitWrite = 0.0) -> Any:
    """Seal what was written since the newest seal into a segment every worker maps, and trim the log to it.
    Runs on its own past `VECQ_SEAL_EVERY_ROWS`; a trained index waits until it has the rows to train on."""
    return await run_on_segments("seal", SEAL, name, r, principal, dispatcher, wait)


@router.post("/{name}/snapshot", status_code=200, responses={202: {"model": JobAccepted}}, deprecated=True)
async def snapshot(name: CollectionName, r: RedisDep, principal: PrincipalDep, dispatcher: DispatcherDep,
                   wait: WaitWrite = 0.0) -> Any:
    """The former name of `seal`: snapshots are sealed segments now."""
    return await run_on_segments("seal", SEAL, name, r, principal, dispatcher, wait)


@router.post("/{name}/compact", status_code=200, responses={202: {"model": JobAccepted}})
async def compact(name: CollectionName, r: RedisDep, principal: PrincipalDep, dispatcher: DispatcherDep,
                  wait: WaitWrite = 0.0) -> Any:
    """Merge the sealed segments into one without dead rows. Runs on its own past `VECQ_COMPACT_MAX_SEGMENTS`
    segments or `VECQ_COMPACT_DEAD_FRACTION` dead rows."""
    return await run_on_segments("compact", COMPACT, name, r, principal, dispatcher, wait)
