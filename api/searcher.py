"""Turning validated search requests into search jobs, coalescing concurrent ones.

FAISS answers a batch of queries many times faster per query than one at a time, and every Celery round
trip costs milliseconds. So concurrent searches of one collection with the same consistency and parameters
share a lane, and a lane sends its pending requests as batches (one Celery message, one FAISS call each), at
most `coalesce_max_inflight` at a time (by default the workers' number shared out among the API processes: each
worker can run a batch while an API process answers the clients of another).

How big a batch: the lane's searches are spread evenly over its slots. The lane counts the requests it holds
(pending and in flight) plus the followers it expects: when a batch of n waiting requests comes back, their
clients usually send their next searches right away (an app's worker pool, any closed loop), but the API reads
them one by one. A free slot takes its share, total / slots, as soon as that many are pending; or whatever is
pending when no follower is expected (a lone search leaves at once, at the end of the current event-loop turn)
or `coalesce_max_delay_ms` after the batch came back. So under load the groups of clients stay whole instead of
the first follower of a group going alone and splitting it for good. A batch holds at most `coalesce_max_batch`
query vectors.

Each request keeps its own job id; the batch's `members` say which rows belong to which job, and `reply_to`
names this process's listener. The worker sends all outcomes in one message and keeps them `hold_s` (dropped
sooner once every member has its answer: api/batches.py); a search answered while its client waits costs the API
no Redis write and leaves no record behind, and a member whose id is shown (wait=0, or the wait ran out) gets its
record then (common/jobs.py). A member whose message was missed (the listener was reconnecting) reads its outcome
from the kept ones. Nothing is shared between API processes.

Bounds, so that no client can exhaust the process: a lane is dropped as soon as it holds nothing (no request
pending or in flight, no follower still expected), so one lane per distinct min_lsn costs nothing once answered;
a lane holds at most `coalesce_max_pending` requests waiting for a slot (beyond, 429 with Retry-After); and a
batch gives its slot back once it comes back, once its outcomes are seen in Redis, or once no client here still
needs it (every member's wait has run out, and at least MIN_SLOT_HOLD_S after it left), so a batch lost with its
worker blocks its lane no longer than that.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from api import batches
from api.dispatch import Dispatcher, Pending, RawResult, new_job_id, result_of
from common import codec, jobs
from common.celery_app import SEARCH
from common.collections import Collection
from common.errors import TooManyRequests
from common.schemas import SearchRequest
from common.settings import Settings


def search_kwargs(col: Collection, queries: np.ndarray, body: SearchRequest) -> dict[str, Any]:
    return {"collection": col.name, "uid": col.uid, "vectors_b64": codec.encode_vectors(queries), "k": body.k,
            "params": body.params.as_dict() if body.params else {}, "include_metadata": body.include_metadata,
            "include_vectors": body.include_vectors, "consistency": body.consistency, "min_lsn": body.min_lsn,
            "filter": body.filter_text, "offset": body.offset, "score_threshold": body.score_threshold}


@dataclass
class Entry:
    job_id: str
    queries: np.ndarray
    body: SearchRequest
    scope: str
    # Set once the batch is published, for a client that is shown the job id at once (wait=0). A waiting
    # client learns of a failed publish through its outcome future instead: one suspension less per search.
    sent: asyncio.Future[None] | None = None
    wait: float = 0.0  # seconds the client waits for the hits
    submitted_at: float = field(default_factory=time.time)
    queued_at: float = field(default_factory=time.monotonic)
    batch: batches.Batch | None = None  # set when it leaves

    @property
    def waiting(self) -> bool:
        """The client waits for the hits (and, having them, is likely to search again)."""
        return self.sent is None

    def member(self) -> dict[str, Any]:
        member = {"job_id": self.job_id, "n": len(self.queries), "k": self.body.k,
                  "include_metadata": self.body.include_metadata, "include_vectors": self.body.include_vectors}
        if self.body.offset:
            member["offset"] = self.body.offset
        if self.body.score_threshold is not None:
            member["score_threshold"] = self.body.score_threshold
        return member


@dataclass
class Followers:
    """The next searches expected from the clients of a batch that came back."""

    missing: int
    until: float  # monotonic; no longer expected after this


@dataclass
class Lane:
    col: Collection
    body: SearchRequest  # consistency and params (and a session's min_lsn) are the same for every entry of a lane
    pending: deque[Entry] = field(default_factory=deque)
    batches: int = 0  # in flight
    members: int = 0  # requests in the batches in flight
    followers: deque[Followers] = field(default_factory=deque)  # oldest batch first
    returned_at: float = 0.0  # monotonic: when a batch last came back
    timer: asyncio.TimerHandle | None = None
    launching: bool = False  # a launch is scheduled for the end of this event-loop turn

    def take(self, max_rows: int, max_entries: int) -> list[Entry]:
        batch: list[Entry] = []
        rows = 0
        while self.pending and len(batch) < max_entries and (
                not batch or rows + len(self.pending[0].queries) <= max_rows):
            entry = self.pending.popleft()
            batch.append(entry)
            rows += len(entry.queries)
        return batch

    def rows(self) -> int:
        return sum(len(e.queries) for e in self.pending)

    def arrived(self) -> None:
        """A new request is one of the oldest expected followers (or, if none is, simply new)."""
        if self.followers:
            self.followers[0].missing -= 1
            if self.followers[0].missing <= 0:
                self.followers.popleft()

    def expected(self, now: float) -> int:
        """Followers still expected (a group's stragglers are not expected forever)."""
        while self.followers and self.followers[0].until <= now:
            self.followers.popleft()
        return sum(f.missing for f in self.followers)

    def share(self, slots: int, expected: int) -> int:
        """Requests per batch when the lane's requests (and the `expected` followers) are spread evenly over its
        slots."""
        return max(1, math.ceil((len(self.pending) + self.members + expected) / slots))


def lane_key(col: Collection, body: SearchRequest) -> Hashable:
    params = tuple(sorted(body.params.as_dict().items())) if body.params else ()
    # min_lsn means something only to a session search: strong and eventual ones share a lane whatever they send.
    min_lsn = body.min_lsn if body.consistency == "session" else None
    return (col.name, col.uid, body.consistency, min_lsn, params, body.filter_text)  # one filter per batch


class Searcher:
    def __init__(self, dispatcher: Dispatcher, settings: Settings) -> None:
        self.dispatcher = dispatcher
        self.settings = settings
        self.max_delay_s = settings.coalesce_max_delay_ms / 1000
        self.lanes: dict[Hashable, Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def pending_count(self) -> int:
        """Requests waiting in the lanes for a batch slot (for /metrics)."""
        return sum(len(lane.pending) for lane in self.lanes.values())

    async def search(self, col: Collection, queries: np.ndarray, body: SearchRequest, scope: str,
                     wait: float) -> dict[str, Any] | RawResult | Pending:
        if not self.settings.coalesce:
            return await self.dispatcher.submit("search", SEARCH, col.name, search_kwargs(col, queries, body),
                                                wait=wait, scope=scope)
        waiter = self.dispatcher.waiter
        job_id = new_job_id()
        if wait <= 0:
            sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = Entry(job_id, queries, body, scope, sent)
            self._enqueue(col, entry)
            await sent
            await self._record(col, entry)
            return Pending(job_id)
        wait = min(wait, self.settings.wait_max_s)
        entry = Entry(job_id, queries, body, scope, wait=wait)
        recheck = batches.member_recheck(self.dispatcher.r, entry)
        async with waiter.watch(job_id, recheck) as watch:
            self._enqueue(col, entry)  # a full lane refuses it here
            outcome = await watch.result(wait)
            if outcome is None:  # one last look: a batch that ended as the wait ran out answers with its hits
                outcome = await recheck()
        if outcome is None:
            await self._record(col, entry)
            return await self.dispatcher.pending(job_id)
        if entry.batch is not None:
            entry.batch.done()
        return result_of(outcome)

    async def _record(self, col: Collection, entry: Entry) -> None:
        """The record of a member whose id is about to be shown (see common/jobs.py, members)."""
        await jobs.amember_record(self.dispatcher.r, entry.job_id, entry.batch.id if entry.batch else None, col.name,
                                  ttl=self.settings.job_ttl_s, scope=entry.scope, submitted_at=entry.submitted_at)

    # Scheduling ----------------------------------------------------------------------------------------------
    def _enqueue(self, col: Collection, entry: Entry) -> None:
        key = lane_key(col, entry.body)
        lane = self.lanes.get(key)
        if lane is None:
            lane = self.lanes[key] = Lane(col, entry.body)
        elif len(lane.pending) >= self.settings.coalesce_max_pending:
            # Its slots are taken (by slow or lost batches, or more load than the workers take): queueing more
            # here would only grow this process without bound.
            raise TooManyRequests(f"{len(lane.pending)} searches like this one are waiting for a batch slot in "
                                  "this API process; retry shortly", None)
        lane.pending.append(entry)
        lane.arrived()
        self._kick(key, lane)

    def _kick(self, key: Hashable, lane: Lane) -> None:
        """Send a batch now, or arm the timer for the latest moment the lane must send one."""
        now = time.monotonic()
        slots = self.settings.coalesce_inflight
        expected = lane.expected(now)
        if not lane.pending:
            if lane.batches or lane.launching:
                return  # the batch that comes back kicks the lane again
            if expected:  # kept for its followers, then kicked again to be dropped if they never came
                self._arm(key, lane, lane.followers[0].until)
                return
            self._disarm(lane)
            if self.lanes.get(key) is lane:
                del self.lanes[key]  # an idle lane is dropped: one per distinct key would pile up forever
            return
        if lane.batches >= slots:
            return  # the batch that comes back kicks the lane again
        # Waiting for followers starts when their batch comes back, even for requests that waited for the slot
        # before: those join the group instead of leaving as a small batch of their own, which would stay split.
        deadline = max(lane.pending[0].queued_at, lane.returned_at) + self.max_delay_s
        if (expected and len(lane.pending) < lane.share(slots, expected) and now < deadline
                and lane.rows() < self.settings.coalesce_max_batch):
            self._arm(key, lane, deadline)
            return
        self._disarm(lane)
        if not lane.launching:
            # At the end of this event-loop turn: requests read in the same turn leave together.
            lane.launching = True
            asyncio.get_running_loop().call_soon(self._launch_soon, key, lane)

    def _arm(self, key: Hashable, lane: Lane, at: float) -> None:
        self._disarm(lane)
        lane.timer = asyncio.get_running_loop().call_later(max(0.0, at - time.monotonic()), self._kick, key, lane)

    @staticmethod
    def _disarm(lane: Lane) -> None:
        if lane.timer is not None:
            lane.timer.cancel()
            lane.timer = None

    def _launch_soon(self, key: Hashable, lane: Lane) -> None:
        lane.launching = False
        slots = self.settings.coalesce_inflight
        if lane.pending and lane.batches < slots:
            batch = lane.take(self.settings.coalesce_max_batch, lane.share(slots, lane.expected(time.monotonic())))
            sent = batches.Batch(new_job_id(), batch, self.dispatcher.sweeper)
            lane.batches += 1
            lane.members += len(batch)
            self._spawn(self._run(key, lane, sent, batch))
        self._kick(key, lane)  # another slot may take its share too

    async def _run(self, key: Hashable, lane: Lane, sent: batches.Batch, batch: list[Entry]) -> None:
        waiter = self.dispatcher.waiter
        batch_id = sent.id
        came_back = False
        try:
            # The batch's one message resolves this watch, with its members'; it is no waiting request.
            async with waiter.watch(batch_id, batches.batch_back(self.dispatcher.r, batch_id), counted=False) as back:
                try:
                    kwargs = search_kwargs(lane.col, np.concatenate([e.queries for e in batch]), lane.body)
                    kwargs.update(members=[e.member() for e in batch], reply_to=waiter.listener_id,
                                  hold_s=batches.hold_s(batch))
                    await self.dispatcher.send(SEARCH, batch_id, kwargs)
                except BaseException as exc:
                    for entry in batch:
                        if entry.sent is None:
                            waiter.fail(entry.job_id, exc)
                        elif not entry.sent.done():
                            entry.sent.set_exception(exc)
                else:
                    for entry in batch:
                        if entry.sent is not None and not entry.sent.done():
                            entry.sent.set_result(None)
                    came_back = await batches.until_back(back, batches.slot_until(batch))
        finally:
            lane.batches -= 1
            lane.members -= len(batch)
            waiting = sum(1 for entry in batch if entry.waiting)
            if came_back:
                sent.done()
                lane.returned_at = time.monotonic()
                if waiting:
                    lane.followers.append(Followers(waiting, lane.returned_at + self.max_delay_s))
            self._kick(key, lane)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)  # keep a reference: the loop holds tasks weakly
        task.add_done_callback(self._tasks.discard)
        return task
