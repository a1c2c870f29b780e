"""Waiting for jobs without a thread per waiter: one pub/sub listener per API process.

Each API process subscribes to its own channel. A waiter registers a future here, then adds the channel to
the job's watchers (common/jobs.py); the worker's `finish` publishes the outcome to every watcher. The
listener resolves futures by job id. If the subscription drops, every waiter checks again once the listener
is back, and waits also check again every few seconds: a lost message costs a delay, never a hang. A check
reads the job's record, or, for a search answered in a batch (which has no record while its client waits),
the batch's outcomes (api/searcher.py passes that check in).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis.asyncio as aredis

from common import jobs, keys
from common.errors import Unavailable

log = logging.getLogger("vecq.api")
Outcome = dict[str, Any] | jobs.MemberOutcome  # what a waiter's future resolves to
Recheck = Callable[[], Awaitable[Outcome | None]]  # the outcome found in Redis, or None if not finished yet
RECHECK: dict[str, Any] = {"recheck": True}
RECHECK_EVERY_S = 5.0


class JobWaiter:
    def __init__(self, r: aredis.Redis, max_waiters: int, listener: aredis.Redis | None = None) -> None:
        self.r = r
        # The subscription's own client, without retries: a connection that breaks must reach _listen (which then
        # has every waiter check again), not be re-made quietly by redis-py with the messages in between lost.
        self.listener = listener or r
        self.listener_id = uuid.uuid4().hex
        self.channel = keys.job_channel(self.listener_id)
        self.max_waiters = max_waiters
        self._futures: dict[str, set[asyncio.Future[Outcome]]] = {}
        self._waiting = 0
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    async def start(self, timeout: float = 2.0) -> None:
        self._task = asyncio.create_task(self._listen(), name="vecq-job-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.subscribed.wait(), timeout)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self.listener.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.subscribed.set()
                self._wake_all(RECHECK)  # anything published while we were away was missed
                backoff = 0.1
                while True:
                    message = await pubsub.get_message(timeout=RECHECK_EVERY_S)
                    if message is not None and message.get("type") == "message":
                        self._dispatch(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.subscribed.clear()
                log.warning("job listener lost its subscription (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _dispatch(self, data: bytes | str) -> None:
        """A message is one job's outcome (JSON), or a search batch's (jobs.batch_message): the batch's own
        future gets {"batch": id}, each member's a jobs.MemberOutcome whose result stays unparsed bytes."""
        raw = data.encode() if isinstance(data, str) else data
        if raw.startswith(jobs.BATCH_PREFIX):
            try:
                batch_id, members = jobs.parse_batch_message(raw)
            except (ValueError, KeyError, TypeError):
                log.warning("job listener dropped a malformed batch message")
                return
            self._resolve(batch_id, {"batch": batch_id})
            for member in members:
                self._resolve(member.job_id, member)
            return
        try:
            message = json.loads(raw)
        except ValueError:
            return
        self._resolve(str(message.get("job_id", "")), message)

    def _resolve(self, job_id: str, outcome: Outcome) -> None:
        for future in self._futures.get(job_id, ()):
            if not future.done():
                future.set_result(outcome)

    def fail(self, job_id: str, exc: BaseException) -> None:
        """The job never got going (its message could not be published): its waiters raise `exc`."""
        for future in self._futures.get(job_id, ()):
            if not future.done():
                future.set_exception(exc)

    def _wake_all(self, value: Outcome) -> None:
        for futures in self._futures.values():
            for future in futures:
                if not future.done():
                    future.set_result(value)

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str, recheck: Recheck | None = None, *,
                    counted: bool = True) -> AsyncIterator[Watch]:
        """Wait for one job: `async with waiter.watch(job_id) as w: ...submit...; await w.result(timeout)`.

        The watch listens from the moment it is entered, so a job submitted inside the block cannot finish
        unheard. A `counted` watch is a waiting request: 503 beyond max_waiters, so one process cannot be
        drowned. Leaving the block stops listening, whatever happened inside it."""
        if counted and self._waiting >= self.max_waiters:
            raise Unavailable(f"more than {self.max_waiters} requests waiting in this API process", None)
        self._waiting += int(counted)
        w = Watch(self, job_id, recheck or (lambda: self._finished_record(job_id)))
        try:
            yield w
        finally:
            w.close()
            self._waiting -= int(counted)

    def _register(self, job_id: str) -> asyncio.Future[Outcome]:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._futures.setdefault(job_id, set()).add(future)
        return future

    def _unregister(self, job_id: str, future: asyncio.Future[Outcome]) -> None:
        futures = self._futures.get(job_id)
        if futures is not None:
            futures.discard(future)
            if not futures:
                del self._futures[job_id]

    async def _finished_record(self, job_id: str) -> Outcome | None:
        raw = await jobs.aget(self.r, job_id)
        if raw is not None and jobs.public(raw)["status"] in jobs.TERMINAL:
            return jobs.public(raw)
        return None


class Watch:
    """One job listened for by one caller (JobWaiter.watch makes it and ends it)."""

    def __init__(self, waiter: JobWaiter, job_id: str, recheck: Recheck) -> None:
        self.waiter = waiter
        self.job_id = job_id
        self.recheck = recheck
        self._future = waiter._register(job_id)

    async def result(self, timeout: float) -> Outcome | None:
        """The finished job's outcome ({job_id, status, result|error} or a MemberOutcome), or None when `timeout`
        runs out. Whenever a message may have been missed (the listener reconnected; and every RECHECK_EVERY_S),
        `recheck` looks in Redis (by default: the job's record)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                async with asyncio.timeout(min(remaining, RECHECK_EVERY_S)):
                    outcome = await self._future  # a timeout cancels it: a fresh one is registered below
            except TimeoutError:
                outcome = RECHECK
            if outcome is not RECHECK:
                return outcome
            # Listen again before reading: a message published during the read is not missed.
            self.close()
            self._future = self.waiter._register(self.job_id)
            found = await self.recheck()
            if found is not None:
                return found

    def close(self) -> None:
        self.waiter._unregister(self.job_id, self._future)
