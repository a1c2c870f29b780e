"""Submitting jobs and, for synchronous calls, waiting for them."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aredis
from celery import Celery
from fastapi.responses import JSONResponse, Response

from api import batches
from api.publish import Publisher
from api.waiter import JobWaiter, Outcome
from common import errors, jobs
from common.settings import Settings
from common.status import JobStatus


@dataclass(frozen=True)
class Pending:
    job_id: str
    status: str = JobStatus.QUEUED

    def response(self) -> JSONResponse:
        return JSONResponse({"job_id": self.job_id, "status": self.status,
                             "status_url": f"/v1/jobs/{self.job_id}"}, status_code=202)


@dataclass(frozen=True)
class RawResult:
    """A finished job's result as the worker encoded it: sent as the response body without parsing it."""

    body: bytes

    def response(self) -> Response:
        return Response(self.body, media_type="application/json")


def new_job_id() -> str:
    return os.urandom(16).hex()  # 128 random bits, as uuid4's 122, a fifth of its cost (one per search)


class Dispatcher:
    def __init__(self, r: aredis.Redis, celery: Celery, waiter: JobWaiter, settings: Settings) -> None:
        self.r = r
        self.publisher = Publisher(r, celery, settings.queue)
        self.waiter = waiter
        self.sweeper = batches.Sweeper(r)  # the searcher's and the writer's spent batches
        self.settings = settings

    async def send(self, task: str, job_id: str, kwargs: dict[str, Any]) -> None:
        """Publish a job (api/publish.py). Its outcome comes from its job record, never from Celery's results:
        a result subscription per task is the shared pub/sub that breaks under concurrency (celery#4480)."""
        await self.publisher.publish(task, job_id, kwargs)

    async def submit(self, job_type: str, task: str, collection: str | None, kwargs: dict[str, Any], *,
                     wait: float, scope: str = "", total: int | None = None,
                     job_id: str | None = None) -> Any | Pending:
        """Enqueue a job. With wait > 0, return its result (or raise its error) if it finishes in time;
        otherwise, or with wait == 0, a Pending pointing at the job record."""
        job_id = job_id or new_job_id()
        wait = min(wait, self.settings.wait_max_s)
        if wait <= 0:
            await jobs.acreate(self.r, job_id, job_type, collection, ttl=self.settings.job_ttl_s, scope=scope,
                               total=total)
            await self.send(task, job_id, kwargs)
            return Pending(job_id)
        async with self.waiter.watch(job_id) as watch:
            await jobs.acreate(self.r, job_id, job_type, collection, ttl=self.settings.job_ttl_s,
                               scope=scope, watcher=self.waiter.channel, total=total)
            await self.send(task, job_id, kwargs)
            outcome = await watch.result(wait)
        if outcome is None:
            return await self.pending(job_id)
        return result_of(outcome)

    async def pending(self, job_id: str) -> Pending:
        """The 202 for a job whose wait ran out, with the status its record has now."""
        raw = await jobs.aget(self.r, job_id)
        return Pending(job_id, jobs.public(raw)["status"] if raw else JobStatus.QUEUED)


def result_of(outcome: Outcome) -> Any:
    """A finished job's result (a RawResult for a search member), or its error raised with the status that
    matches its cause."""
    if isinstance(outcome, jobs.MemberOutcome):
        if outcome.status == JobStatus.SUCCEEDED:
            return RawResult(outcome.raw)
        outcome = {"status": outcome.status, "error": json.loads(outcome.raw)}
    if outcome.get("status") == JobStatus.SUCCEEDED:
        return outcome.get("result")
    raise errors.from_dict(outcome.get("error") or errors.VecqError("job failed").to_dict())
