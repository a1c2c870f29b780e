"""Turning validated search requests into search jobs, coalescing concurrent ones.

FAISS answers a batch of queries many times faster per query than one at a time, and every Celery round
trip costs milliseconds. So concurrent searches of one collection with the same consistency and parameters
share a lane: a request goes out at once while fewer than `coalesce_max_inflight` batches of its lane are
running (no added latency when idle); otherwise it waits until a batch comes back, or `coalesce_max_delay_ms`
at most, and leaves with everything that queued meanwhile (up to `coalesce_max_batch` query vectors).
Each request keeps its own job id; the batch is one Celery message whose `members` say which rows belong
to which job, and `reply_to` names this process's listener. The worker writes each member's record when it
finishes and sends all outcomes in one message, so a synchronous search costs the API no Redis write; a
member whose id is about to be shown (wait=0, or the wait ran out) gets its record first. Nothing is shared
between API processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from api.dispatch import Dispatcher, Pending, new_job_id, result_of
from common import codec, jobs
from common.celery_app import SEARCH
from common.collections import Collection
from common.schemas import SearchRequest
from common.settings import Settings

BATCH_DONE_TIMEOUT_S = 60.0  # a lane slot is freed after this even if its batch never reports back


def search_kwargs(col: Collection, queries: np.ndarray, body: SearchRequest) -> dict[str, Any]:
    return {"collection": col.name, "uid": col.uid, "vectors_b64": codec.encode_vectors(queries), "k": body.k,
            "params": body.params.as_dict() if body.params else {}, "include_metadata": body.include_metadata,
            "include_vectors": body.include_vectors, "consistency": body.consistency, "min_lsn": body.min_lsn}


@dataclass
class Entry:
    job_id: str
    queries: np.ndarray
    body: SearchRequest
    scope: str
    sent: asyncio.Future[None]
    submitted_at: float = field(default_factory=time.time)

    def member(self, ttl: int) -> dict[str, Any]:
        return {"job_id": self.job_id, "n": len(self.queries), "k": self.body.k,
                "include_metadata": self.body.include_metadata, "include_vectors": self.body.include_vectors,
                "scope": self.scope, "submitted_at": self.submitted_at, "ttl": ttl}


@dataclass
class Lane:
    col: Collection
    body: SearchRequest  # consistency, min_lsn and params are the same for every entry of a lane
    pending: list[Entry] = field(default_factory=list)
    inflight: int = 0
    timer: asyncio.Task[None] | None = None

    def take(self, max_rows: int) -> list[Entry]:
        batch, rows = [], 0
        while self.pending and (not batch or rows + len(self.pending[0].queries) <= max_rows):
            entry = self.pending.pop(0)
            batch.append(entry)
            rows += len(entry.queries)
        return batch


def lane_key(col: Collection, body: SearchRequest) -> Hashable:
    params = tuple(sorted(body.params.as_dict().items())) if body.params else ()
    return (col.name, col.uid, body.consistency, body.min_lsn, params)


class Searcher:
    def __init__(self, dispatcher: Dispatcher, settings: Settings) -> None:
        self.dispatcher = dispatcher
        self.settings = settings
        self.lanes: dict[Hashable, Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def search(self, col: Collection, queries: np.ndarray, body: SearchRequest, scope: str,
                     wait: float) -> dict[str, Any] | Pending:
        if not self.settings.coalesce:
            return await self.dispatcher.submit("search", SEARCH, col.name, search_kwargs(col, queries, body),
                                                wait=wait, scope=scope)
        waiter = self.dispatcher.waiter
        job_id = new_job_id()
        entry = Entry(job_id, queries, body, scope, asyncio.get_running_loop().create_future())
        if wait <= 0:
            self._enqueue(col, entry)
            await entry.sent
            await self._record(col, entry)
            return Pending(job_id)
        with waiter.slot():
            future = waiter.register(job_id)
            try:
                self._enqueue(col, entry)
                await entry.sent
            except BaseException:
                waiter.unregister(job_id, future)
                raise
            outcome = await waiter.wait(job_id, future, min(wait, self.settings.wait_max_s))
        if outcome is None:
            await self._record(col, entry)
            return await self.dispatcher.pending(job_id)
        return result_of(outcome)

    async def _record(self, col: Collection, entry: Entry) -> None:
        await jobs.acreate_if_absent(self.dispatcher.r, entry.job_id, "search", col.name,
                                     ttl=self.settings.job_ttl_s, scope=entry.scope, submitted_at=entry.submitted_at)

    def _enqueue(self, col: Collection, entry: Entry) -> None:
        key = lane_key(col, entry.body)
        lane = self.lanes.get(key)
        if lane is None:
            lane = self.lanes[key] = Lane(col, entry.body)
        lane.pending.append(entry)
        self._kick(key, lane)

    def _kick(self, key: Hashable, lane: Lane) -> None:
        if not lane.pending:
            if lane.inflight == 0 and lane.timer is None:
                self.lanes.pop(key, None)
            return
        if lane.inflight < self.settings.coalesce_max_inflight:
            self._launch(key, lane)
        elif lane.timer is None:
            lane.timer = self._spawn(self._after_delay(key, lane))

    def _launch(self, key: Hashable, lane: Lane) -> None:
        batch = lane.take(self.settings.coalesce_max_batch)
        lane.inflight += 1
        self._spawn(self._run(key, lane, batch))

    async def _after_delay(self, key: Hashable, lane: Lane) -> None:
        await asyncio.sleep(self.settings.coalesce_max_delay_ms / 1000)
        lane.timer = None
        if lane.pending:
            self._launch(key, lane)  # the running batches are slow: do not let these wait longer
        else:
            self._kick(key, lane)

    async def _run(self, key: Hashable, lane: Lane, batch: list[Entry]) -> None:
        waiter = self.dispatcher.waiter
        batch_id = new_job_id()
        done = waiter.register(batch_id)  # the batch's one message resolves it, with its members
        try:
            kwargs = search_kwargs(lane.col, np.concatenate([e.queries for e in batch]), lane.body)
            kwargs.update(members=[e.member(self.settings.job_ttl_s) for e in batch], reply_to=waiter.listener_id)
            await self.dispatcher.send(SEARCH, batch_id, kwargs)
        except BaseException as exc:
            for entry in batch:
                if not entry.sent.done():
                    entry.sent.set_exception(exc)
            done.cancel()
        else:
            for entry in batch:
                if not entry.sent.done():
                    entry.sent.set_result(None)
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(done, BATCH_DONE_TIMEOUT_S)
        finally:
            waiter.unregister(batch_id, done)
            lane.inflight -= 1
            self._kick(key, lane)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)  # keep a reference: the loop holds tasks weakly
        task.add_done_callback(self._tasks.discard)
        return task
