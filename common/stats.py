"""Cluster-wide job counters: `vecq:stats:*` hashes. Only this module writes them.

Jobs finish in many worker processes and are scraped through any API process, so the counts live in Redis,
not in one process's memory: `jobs` maps "type:status" to a count, `job_seconds` "type:status" to the summed
run time. Workers add to them once per job, right after the job record turned terminal (common/jobs.py), so
a redelivered job that is skipped is never counted twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import redis
import redis.asyncio as aredis

from common import keys

log = logging.getLogger("vecq.stats")

JOBS = keys.STATS_JOBS
JOB_SECONDS = keys.STATS_JOB_SECONDS


@dataclass(frozen=True)
class JobCount:
    type: str
    status: str
    count: int
    seconds: float


def add_jobs(pipe: redis.client.Pipeline, finished: Iterable[tuple[str, str, float]]) -> None:
    """Queue the counts of finished jobs, given as (type, status, seconds), on a caller's pipeline."""
    counts: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for job_type, status, secs in finished:
        field = f"{job_type}:{status}"
        counts[field] = counts.get(field, 0) + 1
        seconds[field] = seconds.get(field, 0.0) + secs
    for field, n in counts.items():
        pipe.hincrby(JOBS, field, n)
        pipe.hincrbyfloat(JOB_SECONDS, field, round(seconds[field], 6))


def count_jobs(r: redis.Redis, finished: Iterable[tuple[str, str, float]]) -> None:
    """Add finished jobs, given as (type, status, seconds). Best effort: losing a count must never fail the
    jobs it counts."""
    finished = list(finished)
    if not finished:
        return
    try:
        with r.pipeline(transaction=False) as pipe:
            add_jobs(pipe, finished)
            pipe.execute()
    except redis.RedisError:
        log.warning("could not count jobs %s", sorted({f"{t}:{s}" for t, s, _ in finished}), exc_info=True)


async def acount_canceled(r: aredis.Redis, job_type: str) -> None:
    """A job canceled while queued never reaches a worker: the API counts it."""
    try:
        async with r.pipeline(transaction=False) as pipe:
            pipe.hincrby(JOBS, f"{job_type}:canceled", 1)
            pipe.hincrbyfloat(JOB_SECONDS, f"{job_type}:canceled", 0.0)
            await pipe.execute()
    except redis.RedisError:
        log.warning("could not count a canceled %s job", job_type, exc_info=True)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def ajob_counts(r: aredis.Redis) -> list[JobCount]:
    async with r.pipeline(transaction=False) as pipe:
        pipe.hgetall(JOBS)
        pipe.hgetall(JOB_SECONDS)
        counts, seconds = await pipe.execute()
    secs = {_s(k): float(v) for k, v in seconds.items()}
    out = []
    for raw_field, value in counts.items():
        field = _s(raw_field)
        job_type, _, status = field.rpartition(":")
        out.append(JobCount(job_type, status, int(value), secs.get(field, 0.0)))
    return sorted(out, key=lambda c: (c.type, c.status))
