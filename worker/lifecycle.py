"""Worker process lifecycle: load indexes after the fork, beat while alive, say goodbye on shutdown.

The Celery main process never loads or searches an index: libgomp is not fork-safe, and a child forked
after its parent ran an OpenMP search hangs on its first search (faiss#5206). All FAISS work happens in the
children, from worker_process_init on.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from pathlib import Path
from typing import Any

import faiss
import redis
from celery.exceptions import TimeLimitExceeded
from celery.signals import task_failure, worker_process_init, worker_process_shutdown

from common import heartbeat, jobs
from common.errors import TimedOut
from common.logs import setup_logging
from common.settings import get_settings
from worker import app, index, reaper, state

log = logging.getLogger("vecq.worker")


@worker_process_init.connect
def _init(**_: object) -> None:
    settings = get_settings()
    setup_logging(settings.log_json)
    faiss.omp_set_num_threads(settings.omp_threads)
    index.use_blas_from(settings.blas_min_queries)
    st = state.init(settings, send=functools.partial(send, settings.queue))
    _beat(st)  # visible before the possibly long load, and beating through it: a load may outlast the TTL
    threading.Thread(target=_beat_forever, args=(st,), name="vecq-heartbeat", daemon=True).start()
    started = time.perf_counter()
    if settings.enable_test_tasks and settings.test_start_delay_s:
        time.sleep(settings.test_start_delay_s)
    st.registry.load_all()  # sealed segments + log tail of each collection; per-collection times in the log
    _beat(st)  # the load times (heartbeat `collections.*.load_s`) at once
    log.info("worker %s ready: %d collections loaded in %.3fs", st.worker, len(st.registry),
             time.perf_counter() - started)


def send(queue: str, name: str, kwargs: dict[str, Any]) -> None:
    """How a job enqueues another (a seal, a compaction): by name, on vecq's queue, with no Celery result."""
    app.send_task(name, kwargs=kwargs, queue=queue, ignore_result=True)


@task_failure.connect
def _killed_at_time_limit(task_id: str | None = None, exception: BaseException | None = None, **_: object) -> None:
    """A job killed at its hard time limit: Celery's main process reports it here (the child is gone), and its
    record must not stay `running` until it expires. Only this main process knows, so it finishes the record."""
    if not isinstance(exception, TimeLimitExceeded) or not task_id:
        return
    try:
        r = redis.Redis.from_url(get_settings().effective_redis_url, socket_connect_timeout=5)
        error = TimedOut(f"killed at its hard time limit ({exception!r}): see VECQ_TASK_TIME_LIMIT_S").to_dict()
        jobs.finish(r, task_id, error=error)
        r.close()
    except Exception:  # the main process must survive whatever Redis says
        log.warning("could not fail job %s after its time limit", task_id, exc_info=True)


@worker_process_shutdown.connect
def _shutdown(**_: object) -> None:
    try:
        st = state.current()
        st.stopping = True
        heartbeat.stop(st.r, st.worker)
    except Exception:  # shutting down: nothing left to report to
        pass


def memory() -> dict[str, int]:
    """Resident bytes of this process: `anon` is its own, `file` is mapped files (segments), shared by the host."""
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            field, _, value = line.partition(":")
            if field in ("RssAnon", "RssFile"):
                out[field[3:].lower()] = int(value.split()[0]) * 1024
    except OSError:  # not Linux
        pass
    return out


def _info(st: state.ProcessState) -> dict[str, object]:
    return {"host": st.host, "pid": st.pid, "started_at": st.started_at, "jobs_done": st.jobs_done,
            "last_job": st.last_job, "collections": st.registry.summary(), "memory": memory()}


def _beat(st: state.ProcessState) -> None:
    heartbeat.beat(st.r, st.worker, _info(st), st.settings.heartbeat_ttl_s)


def _beat_forever(st: state.ProcessState) -> None:
    # Only reads plain Python values and talks to Redis: never touches FAISS from this thread.
    stop = threading.Event()
    while not st.stopping and not stop.wait(st.settings.heartbeat_interval_s):
        try:
            _beat(st)
            reaper.reap(st.r, app, heartbeat.alive_ids(st.r, st.settings.heartbeat_ttl_s), st.worker)
        except Exception:
            log.warning("heartbeat failed", exc_info=True)
