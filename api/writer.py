"""Concurrent single writes of one collection as one add job: a group commit.

Each job costs a Celery round trip and, measured, about 6 ms of CPU across the API, the worker and Redis (44
Redis calls per write): on 2 cores that capped JSON writes of one vector at 160-240/s, whatever the vectors. So,
as a database commits a group of transactions with one log flush, JSON adds of one collection whose client waits
for the outcome share a lane: at most `coalesce_inflight` batches of the lane are out at a time, new writes queue
meanwhile, and when a batch comes back the queue leaves as the next one (at most `coalesce_max_write_rows` rows).
A lone write leaves at once, at the end of the current event-loop turn: no timer, no added latency; under load
the batches grow by themselves.

Each write keeps its job id, its own outcome and the ids derived from it; the worker appends the members in order
as few log entries as it can, under the batch's id, so a redelivered batch appends nothing twice and the log, its
dedup hash and the workers' catch-up grow by batches, not by writes (worker/tasks.py, add_batch). The
members' reply and records work as for searches (api/batches.py, common/jobs.py): a write answered while its
client waits leaves no job record; one whose wait runs out gets its record when its id is shown. Within a batch
writes keep their arrival order; requests in flight together had no order to keep.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from api import batches
from api.dispatch import Dispatcher, new_job_id, result_of
from common import codec, jobs
from common.celery_app import ADD
from common.collections import Collection
from common.errors import TooManyRequests
from common.settings import Settings

LaneKey = tuple[str, str]  # a collection's name and uid


@dataclass
class Write:
    job_id: str
    rows: np.ndarray  # float32, (n, dim)
    ids: dict[str, Any]  # {"ids": [...]} or {"id_prefix", "id_start"} or {} (ids derived from the job id)
    metadata: list[dict[str, Any] | None] | None
    scope: str
    wait: float
    submitted_at: float = field(default_factory=time.time)
    queued_at: float = field(default_factory=time.monotonic)
    batch: batches.Batch | None = None  # set when it leaves

    def member(self) -> dict[str, Any]:
        member = {"job_id": self.job_id, "n": len(self.rows), **self.ids}
        if self.metadata is not None:
            member["metadata"] = self.metadata
        return member


@dataclass
class WriteLane:
    col: Collection
    pending: deque[Write] = field(default_factory=deque)
    batches: int = 0  # in flight
    launching: bool = False  # a launch is scheduled for the end of this event-loop turn

    def take(self, max_rows: int, max_writes: int) -> list[Write]:
        batch: list[Write] = []
        rows = 0
        while self.pending and len(batch) < max_writes and (not batch or rows + len(self.pending[0].rows) <= max_rows):
            write = self.pending.popleft()
            batch.append(write)
            rows += len(write.rows)
        return batch


class Writer:
    def __init__(self, dispatcher: Dispatcher, settings: Settings) -> None:
        self.dispatcher = dispatcher
        self.settings = settings
        self.lanes: dict[LaneKey, WriteLane] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def pending_count(self) -> int:
        """Writes waiting in the lanes for a batch slot (for /metrics)."""
        return sum(len(lane.pending) for lane in self.lanes.values())

    async def write(self, col: Collection, rows: np.ndarray, ids: dict[str, Any],
                    metadata: list[dict[str, Any] | None] | None, scope: str, wait: float) -> Any:
        """Upsert `rows` (validated) as a member of the lane's next batch, waiting up to `wait` (> 0) for it."""
        job_id = new_job_id()
        write = Write(job_id, rows, ids, metadata, scope, min(wait, self.settings.wait_max_s))
        r = self.dispatcher.r
        recheck = batches.member_recheck(r, write)
        async with self.dispatcher.waiter.watch(job_id, recheck) as watch:
            self._enqueue(col, write)  # a full lane refuses it here
            outcome = await watch.result(write.wait)
            if outcome is None:  # one last look: a batch that ended as the wait ran out answers with its outcome
                outcome = await recheck()
        if outcome is None:
            await jobs.amember_record(r, job_id, write.batch.id if write.batch else None, col.name, job_type="add",
                                      ttl=self.settings.job_ttl_s, scope=scope, submitted_at=write.submitted_at)
            return await self.dispatcher.pending(job_id)
        if write.batch is not None:
            write.batch.done()
        return result_of(outcome)  # a RawResult, or the result read from the record if the message was missed

    def _enqueue(self, col: Collection, write: Write) -> None:
        key = (col.name, col.uid)
        lane = self.lanes.get(key)
        if lane is None:
            lane = self.lanes[key] = WriteLane(col)
        elif len(lane.pending) >= self.settings.coalesce_max_pending:
            raise TooManyRequests(f"{len(lane.pending)} writes to this collection are waiting for a batch slot in "
                                  "this API process; retry shortly", None)
        lane.pending.append(write)
        self._kick(key, lane)

    def _kick(self, key: LaneKey, lane: WriteLane) -> None:
        if lane.launching:
            return
        if not lane.pending:
            if not lane.batches and self.lanes.get(key) is lane:
                del self.lanes[key]  # an idle lane is dropped
            return
        if lane.batches < self.settings.coalesce_inflight:
            # At the end of this event-loop turn: writes read in the same turn leave together.
            lane.launching = True
            asyncio.get_running_loop().call_soon(self._launch, key, lane)

    def _launch(self, key: LaneKey, lane: WriteLane) -> None:
        lane.launching = False
        slots = self.settings.coalesce_inflight
        while lane.pending and lane.batches < slots:
            share = math.ceil(len(lane.pending) / (slots - lane.batches))  # spread over the free slots
            batch = lane.take(self.settings.coalesce_max_write_rows, share)
            sent = batches.Batch(new_job_id(), batch, self.dispatcher.sweeper)
            lane.batches += 1
            task = asyncio.create_task(self._run(key, lane, sent, batch))
            self._tasks.add(task)  # keep a reference: the loop holds tasks weakly
            task.add_done_callback(self._tasks.discard)

    async def _run(self, key: LaneKey, lane: WriteLane, sent: batches.Batch, batch: list[Write]) -> None:
        waiter = self.dispatcher.waiter
        r = self.dispatcher.r
        batch_id = sent.id
        try:
            async with waiter.watch(batch_id, batches.batch_back(r, batch_id), counted=False) as back:
                try:
                    kwargs = {"collection": lane.col.name, "uid": lane.col.uid,
                              "vectors_b64": codec.encode_vectors(np.concatenate([w.rows for w in batch])),
                              "chunk_rows": codec.rows_per_wal_entry(self.settings.wal_chunk_bytes, lane.col.dim),
                              "members": [w.member() for w in batch], "reply_to": waiter.listener_id,
                              "hold_s": batches.hold_s(batch)}
                    await self.dispatcher.send(ADD, batch_id, kwargs)
                except BaseException as exc:
                    for write in batch:
                        waiter.fail(write.job_id, exc)
                else:
                    if await batches.until_back(back, batches.slot_until(batch)):
                        sent.done()
        finally:
            lane.batches -= 1
            self._kick(key, lane)
