from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from api.auth import Principal
from api.deps import PrincipalDep, RedisDep, WaitPoll
from common import jobs, keys, stats
from common.errors import Conflict, NotFound
from common.schemas import V1_ERRORS, Job, JobList, error_responses
from common.status import JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"],
                   responses=error_responses(*V1_ERRORS))
JobId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


def visible(raw: dict[Any, Any] | None, principal: Principal) -> dict[Any, Any]:
    """A job of another key's scope is indistinguishable from an unknown one."""
    if raw is None:
        raise NotFound("job not found (unknown or expired)", "job_id")
    record = jobs.public(raw)
    if not principal.may_read_job(jobs.scope_of(raw), record.get("collection")):
        raise NotFound("job not found (unknown or expired)", "job_id")
    return raw


@router.get("", response_model=JobList)
async def list_jobs(
    r: RedisDep, principal: PrincipalDep,
    collection: Annotated[str | None, Query(pattern=keys.COLLECTION_NAME.pattern, max_length=64)] = None,
    job_type: Annotated[str | None, Query(alias="type", pattern=r"^[a-z_]{1,32}$",
                                          description="add, delete, ingest, search, snapshot, ...")] = None,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """Recent jobs, newest first, without their results (`GET /v1/jobs/{id}` has them): the last ~1,000 job
    records created. A search answered while its client waited has no record and is never listed; a search
    with `wait=0` or whose wait ran out is. A key sees the jobs it may read with `GET /v1/jobs/{id}`, of the
    collections its glob allows."""
    principal.require(collection, write=False)

    def may_read(scope: str, name: str | None) -> bool:
        return principal.may_read_job(scope, name) and (name is None or principal.allows(name))

    found = await jobs.arecent(r, limit=limit, may_read=may_read, job_type=job_type, collection=collection,
                               status=status)
    return {"jobs": found}


@router.get("/{job_id}", response_model=Job)
async def get_job(job_id: JobId, request: Request, r: RedisDep, principal: PrincipalDep,
                  wait: WaitPoll = 0) -> Any:
    raw = visible(await jobs.aget(r, job_id), principal)
    record = jobs.public(raw)
    if wait <= 0 or record["status"] in jobs.TERMINAL:
        return record
    waiter = request.app.state.waiter
    async with waiter.watch(job_id) as watch:
        now = await jobs.awatch(r, job_id, waiter.channel)
        if now is None:
            raise NotFound("job not found (unknown or expired)", "job_id")
        if jobs.public(now)["status"] not in jobs.TERMINAL:
            await watch.result(wait)
    return jobs.public(visible(await jobs.aget(r, job_id), principal))


@router.delete("/{job_id}", status_code=202)
async def cancel_job(job_id: JobId, r: RedisDep, principal: PrincipalDep) -> Any:
    raw = visible(await jobs.aget(r, job_id), principal)
    principal.require(jobs.public(raw).get("collection"), write=True)
    status = await jobs.acancel(r, job_id)
    if status is None:
        raise NotFound("job not found (unknown or expired)", "job_id")
    if status != JobStatus.CANCELED:
        raise Conflict(f"job is {status}; only a queued job can be canceled", "job_id")
    record = jobs.public(await jobs.aget(r, job_id) or raw)
    await stats.acount_canceled(r, str(record.get("type")))
    return record
