"""What the two coalescers (api/searcher.py, api/writer.py) share about a batch once it has left.

A batch is one Celery message with `members` (each request's own job id), `reply_to` (this process's listener)
and `hold_s`; the worker answers all members in one message and keeps their outcomes readable `hold_s`
(common/jobs.py). These helpers free a lane's slot when the batch comes back (or is lost), find a member's
outcome when the message was missed, and drop a batch's outcomes as soon as nobody here can read them again.

Why drop them early: `hold_s` covers the longest wait of the batch, so outcomes held that long pile up with the
search rate (the soak saw Redis grow 24 MB as the served rate rose from 680 to 1,130 searches a second). Almost
always every member has its answer within milliseconds; then the outcomes go at the sweeper's next round. A
batch with a member whose id is shown (wait=0, or the wait ran out) keeps them `hold_s`: that member's record
may still be made from them (jobs.amember_record).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Protocol

import redis.asyncio as aredis
import redis.exceptions

from api.waiter import Outcome, Recheck, Watch
from common import jobs

BATCH_DONE_TIMEOUT_S = 60.0  # a lane slot is freed after this even if members still wait (waits go up to 300 s)
# The least time a batch holds its slot when nobody here waits for it any more (wait=0 members, waits that ran out
# early). Not zero: the slots are what lets POST-then-poll searches pile into big batches while the workers are
# busy (see the README's Performance). Far above a batch's round trip: only a lost batch gives its slot back so.
MIN_SLOT_HOLD_S = 5.0
# How long a batch's outcomes stay readable after its members' waits run out: the record of a member whose
# id is shown then (a 202) is made from them. Seconds, far more than that takes.
HOLD_MARGIN_S = 30.0
SWEEP_EVERY_S = 1.0  # how long spent outcomes wait to be dropped together (one UNLINK a round)
# Spent batches waiting for a round while Redis is away; beyond, the newest are left to expire on their own.
SWEEP_MAX_PENDING = 100_000

log = logging.getLogger("vecq.api")


class Sweeper:
    """Drops spent batches' outcomes from Redis, all of a round's in one UNLINK each SWEEP_EVERY_S: nothing on a
    request's path waits for it, and under load a batch costs a small share of one command."""

    def __init__(self, r: aredis.Redis) -> None:
        self.r = r
        self.spent: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def drop(self, batch_id: str) -> None:
        if len(self.spent) < SWEEP_MAX_PENDING:
            self.spent.append(batch_id)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="vecq-batch-sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            await self.sweep()

    async def sweep(self) -> None:
        spent, self.spent = self.spent, []
        if spent:
            await jobs.adrop_batch_outcomes(self.r, spent)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            try:
                await self.sweep()
            except (redis.exceptions.RedisError, OSError) as exc:
                # Those outcomes expire `hold_s` after they were made, as they did before they were swept.
                log.warning("could not drop spent batch outcomes (%s); they expire on their own", exc)


class Batch:
    """A batch that has left: its id, and who here may still read its outcomes in Redis: the batch's own watch
    until it came back, and each member until it has its answer. When the last is done, the sweeper drops them.
    A member that never has its answer here (its id was shown) never calls `done`: the outcomes then stay their
    `hold_s`."""

    def __init__(self, batch_id: str, members: Sequence[Member], sweeper: Sweeper) -> None:
        self.id = batch_id
        self.readers = len(members) + 1
        self.sweeper = sweeper
        for member in members:
            member.batch = self

    def done(self) -> None:
        self.readers -= 1
        if self.readers == 0:
            self.sweeper.drop(self.id)


class Member(Protocol):
    job_id: str
    wait: float  # seconds its client waits
    queued_at: float  # monotonic
    batch: Batch | None  # set when it leaves


def hold_s(batch: Sequence[Member]) -> float:
    """How long the worker keeps the batch's outcomes: until the last member's wait has run out, and a margin."""
    waits_end = max(m.queued_at + m.wait for m in batch)
    return round(max(0.0, waits_end - time.monotonic()) + HOLD_MARGIN_S, 3)


def slot_until(batch: Sequence[Member]) -> float:
    """When a batch that has not come back gives its slot back anyway (monotonic): once no client here needs
    it, their waits having all run out (they have their 202s; the worker finishes their records whenever it
    runs the batch), and not before MIN_SLOT_HOLD_S. Without this, a batch lost with its worker would hold the
    slot for BATCH_DONE_TIMEOUT_S while the lane's other requests queue behind it."""
    sent_at = time.monotonic()
    waits_end = max(m.queued_at + m.wait for m in batch)
    return sent_at + min(max(waits_end - sent_at, MIN_SLOT_HOLD_S), BATCH_DONE_TIMEOUT_S)


def batch_back(r: aredis.Redis, batch_id: str) -> Recheck:
    """Whether a batch's outcomes are in Redis: its message may have been missed."""
    async def finished() -> Outcome | None:
        return {"batch": batch_id} if await jobs.abatch_finished(r, batch_id) else None
    return finished


def member_recheck(r: aredis.Redis, member: Member) -> Recheck:
    """A waiting member's outcome from its batch's outcomes in Redis: it has no record to look at."""
    async def check() -> Outcome | None:
        if member.batch is None:  # still in its lane: nothing can have been missed
            return None
        return await jobs.amember_outcome(r, member.batch.id, member.job_id)
    return check


async def until_back(back: Watch, until: float) -> bool:
    """Whether the batch came back before `until`: its message arrived, or its outcomes were seen in Redis."""
    try:
        return await back.result(until - time.monotonic()) is not None
    except redis.exceptions.RedisError:
        return False  # Redis is away: the slot goes back; each member learns of its own outcome on its own
