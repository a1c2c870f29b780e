"""How a task runs as a job, written once: claim, run, finish, count, log.

A task is a plain function of the process state, its job id and its inputs (worker/tasks.py), registered with
`@task(name, job_type)`; the decorator makes the Celery task, whose run is `run_job`. The search batches the API
sends (`members`) go through `run_batch`, the same steps with the batch's own claim and finish (common/jobs.py).
Neither lets an exception escape into Celery (or kill the child).
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.exceptions
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from common import jobs, scripts, stats
from common.errors import ErrorDict, InvalidInput, Poisoned, TimedOut, VecqError
from common.status import JobStatus
from worker import app, state

log = logging.getLogger("vecq.jobs")
DEFERRED = object()  # a body's result meaning "another job finishes this record" (a bulk ingest's last part)
DEFERRED_LABEL = "deferred"  # how the log and the job counters show such a job: its record is not terminal yet
REDIS_OUTAGE_S = 120.0  # how long a job waits for Redis to come back (a restart, an AOF load) before giving up
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
Error = ErrorDict
OnFail = Callable[[state.ProcessState, str, Error, dict[str, Any]], None]  # (st, job_id, error, inputs)


def through_outage(step: Callable[[], T], job_id: str, what: str) -> T:
    """Run `step`; while Redis is unreachable, wait for it and run `step` again, for at most REDIS_OUTAGE_S.

    Only for steps that a redelivery would run again anyway: the claim, a job's body (WAL appends are deduplicated
    by job and chunk, so an append that ran but whose reply was lost finds its LSN), the finish. Without this, a
    Redis restart under load left jobs `running` for the job TTL: the error escaped into Celery, which acked the
    message, so nobody ever finished it (found by bench/soak.py)."""
    deadline = time.monotonic() + REDIS_OUTAGE_S
    delay = 0.2
    while True:
        try:
            return step()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:  # BusyLoading included
            if time.monotonic() >= deadline:
                raise
            log.warning("job=%s %s: redis unavailable (%s); again in %.1fs", job_id, what, exc, delay)
            time.sleep(delay)
            delay = min(2.0, delay * 2)


@dataclass(frozen=True)
class Function:
    """A task body and how its job is recorded (arq's Function)."""

    name: str  # the Celery task name
    job_type: str
    body: Callable[..., Any]  # body(st, job_id, **inputs)
    collection_arg: str = "collection"
    listed: Callable[[dict[str, Any]], bool] = lambda inputs: True  # record made at claim time goes in recent jobs
    on_fail: OnFail | None = None  # hears of any error, a poisoned delivery's included
    # batch(st, batch_id, members=..., **inputs): one result (or VecqError) per member, in order
    batch: Callable[..., list[Any]] | None = None
    batch_once: bool = False  # a finished batch is never run again, even redelivered (writes; searches may)
    # The batch body takes the batch's `claim` (jobs.DeliveryClaim) and makes it on its first round trip.
    claim_rides: bool = False

    def collection(self, inputs: dict[str, Any]) -> str | None:
        value = inputs.get(self.collection_arg)
        return value if isinstance(value, str) else None


FUNCTIONS: dict[str, Function] = {}


def task(name: str, job_type: str, *, collection_arg: str = "collection",
         listed: Callable[[dict[str, Any]], bool] | None = None,
         on_fail: OnFail | None = None,
         batch: Callable[..., list[Any]] | None = None, batch_once: bool = False, claim_rides: bool = False,
         **celery_options: Any) -> Callable[[F], F]:
    """Register `body` as the Celery task `name`; the body itself is returned unchanged, callable without Celery."""

    def register(body: F) -> F:
        fn = Function(name, job_type, body, collection_arg, listed or (lambda inputs: True), on_fail, batch,
                      batch_once, claim_rides)

        def run(self: Task, **inputs: Any) -> None:
            if fn.batch is not None and inputs.get("members") is not None:
                run_batch(fn, self.request.id, inputs)
            else:
                run_job(fn, self.request.id, inputs)

        run.__name__, run.__qualname__, run.__doc__ = body.__name__, body.__qualname__, body.__doc__
        run.__module__ = body.__module__
        app.task(name=name, bind=True, **celery_options)(run)
        FUNCTIONS[name] = fn
        return body

    return register


@functools.cache  # the registered bodies: a fixed set; inspect.signature costs more than a lone search's claim
def signature_of(body: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(body)


def check_inputs(body: Callable[..., Any], inputs: dict[str, Any]) -> None:
    """A producer's unknown or missing argument fails the job, naming it, instead of escaping into Celery."""
    try:
        signature_of(body).bind(None, None, **inputs)
    except TypeError as exc:
        raise InvalidInput(f"bad task arguments: {exc}", None) from None


def attempt(work: Callable[[], T], job_id: str, what: str) -> tuple[T | None, Error | None]:
    """Run a job's work through Redis outages; an exception becomes the job's error."""
    try:
        return through_outage(work, job_id, what), None
    except VecqError as exc:
        return None, exc.to_dict()
    except jobs.Unclaimed:
        return None, None  # the delivery may not run: its claim says why, and the caller reads it
    except SoftTimeLimitExceeded:
        return None, TimedOut("job exceeded its time limit").to_dict()
    except Exception as exc:
        log.exception("job %s (%s) raised", job_id, what)
        return None, VecqError(f"{type(exc).__name__}: {exc}").to_dict()


def poisoned(st: state.ProcessState) -> Error:
    return Poisoned(f"gave up after {st.settings.max_attempts} deliveries: each one lost its worker").to_dict()


def note(st: state.ProcessState, done: int, last_job: dict[str, Any], line: str, *args: Any) -> None:
    """What the heartbeat shows of this process's last job, and the job's log line."""
    st.jobs_done += done
    st.last_job = {**last_job, "at": time.time()}
    log.info(line, *args, extra={"job": st.last_job, "worker": st.worker})


def run_job(fn: Function, job_id: str, inputs: dict[str, Any]) -> None:
    """Claim, run, finish, count, log one job. A body that returns DEFERRED leaves the record running."""
    st = state.current()
    collection = fn.collection(inputs)
    started = time.perf_counter()
    claim = through_outage(lambda: jobs.claim(st.r, job_id, worker=st.worker, max_attempts=st.settings.max_attempts,
                                              ttl=st.settings.job_ttl_s, job_type=fn.job_type, collection=collection,
                                              listed=fn.listed(inputs)), job_id, "claim")
    if claim is jobs.Claim.SKIP:
        return
    result: Any = None
    error: Error | None = None
    if claim is jobs.Claim.POISONED:
        error = poisoned(st)
    else:
        def work() -> Any:
            check_inputs(fn.body, inputs)
            return fn.body(st, job_id, **inputs)

        result, error = attempt(work, job_id, fn.job_type)
    if error is not None and fn.on_fail is not None:
        try:
            fn.on_fail(st, job_id, error, inputs)
        except Exception:
            log.exception("job %s (%s): on_fail raised", job_id, fn.job_type)
    deferred = result is DEFERRED and error is None
    finished = False if deferred else through_outage(lambda: jobs.finish(st.r, job_id, result=result, error=error),
                                                     job_id, "finish")
    duration_ms = (time.perf_counter() - started) * 1000
    status = DEFERRED_LABEL if deferred else JobStatus.FAILED if error else JobStatus.SUCCEEDED
    if finished:  # counted once, by whoever made the record terminal
        stats.count_jobs(st.r, [(fn.job_type, status, duration_ms / 1000)])
    note(st, 1, {"job_id": job_id, "type": fn.job_type, "collection": collection, "status": status,
                 "duration_ms": round(duration_ms, 2)},
         "job=%s type=%s collection=%s status=%s duration_ms=%.2f worker=%s", job_id, fn.job_type, collection,
         status, duration_ms, st.worker)


def run_batch(fn: Function, batch_id: str, inputs: dict[str, Any]) -> None:
    """Requests sent by the API as one job (`members`), answered by one call of the batch body. The outcomes go to
    the waiting API process (`reply_to`) in one message and stay readable `hold_s` (common/jobs.py, members), with
    the counts, all in one round trip. A failure fails this batch's members only; a batch that keeps killing its
    worker is failed as poison."""
    assert fn.batch is not None
    st = state.current()
    inputs = dict(inputs)
    reply_to: str | None = inputs.pop("reply_to", None)
    hold = inputs.pop("hold_s", None)
    hold_s = float(hold) if hold is not None else st.settings.wait_max_s + 60
    members: list[dict[str, Any]] = inputs["members"]
    collection = fn.collection(inputs)
    started_at, started = time.time(), time.perf_counter()
    claim = jobs.DeliveryClaim(batch_id, max_attempts=st.settings.max_attempts, ttl=st.settings.job_ttl_s)
    if not fn.claim_rides:
        through_outage(lambda: claim.run(st.r), batch_id, "claim")
    outcomes: list[tuple[dict[str, Any], Any, Error | None]] = []
    results: list[Any] | None = None
    error: Error | None = None
    if claim.outcome is None or claim.outcome is jobs.Claim.RUN:
        batch, riding = fn.batch, {"claim": claim} if fn.claim_rides else {}
        results, error = attempt(lambda: batch(st, batch_id, **riding, **inputs), batch_id, fn.job_type)
    # The claim's verdict wins, also over an error met before the body made it (then it is made here).
    verdict = through_outage(lambda: claim.run(st.r), batch_id, "claim")
    if verdict is jobs.Claim.SKIP:
        return  # finished before: its members had their outcomes then
    if verdict is jobs.Claim.POISONED:
        outcomes = [(m, None, poisoned(st)) for m in members]
    else:
        if results is None:
            outcomes = [(m, None, error) for m in members]
        else:
            # A body may fail one member alone by giving its error in that member's place.
            outcomes = [(m, None, res.to_dict()) if isinstance(res, VecqError) else (m, res, None)
                        for m, res in zip(members, results, strict=True)]
    duration_ms = (time.perf_counter() - started) * 1000

    def finish() -> None:
        with st.r.pipeline(transaction=False) as pipe:  # scripts.execute: no SCRIPT EXISTS, loads it if lost
            jobs.finish_members(pipe, batch_id, outcomes, reply_to=reply_to, started_at=started_at, worker=st.worker,
                                hold_s=hold_s, keep_done_s=st.settings.redelivery_window_s if fn.batch_once else None)
            stats.add_jobs(pipe, [(fn.job_type, JobStatus.FAILED if e else JobStatus.SUCCEEDED, duration_ms / 1000)
                                  for _, _, e in outcomes])
            scripts.execute(pipe)

    through_outage(finish, batch_id, "finish")
    failed = sum(1 for _, _, e in outcomes if e is not None)
    note(st, len(outcomes), {"job_id": batch_id, "type": fn.job_type, "collection": collection,
                             "members": len(members), "status": JobStatus.FAILED if failed else JobStatus.SUCCEEDED,
                             "duration_ms": round(duration_ms, 2)},
         "job=%s type=%s-batch collection=%s members=%d failed=%d duration_ms=%.2f worker=%s", batch_id,
         fn.job_type, collection, len(members), failed, duration_ms, st.worker)
