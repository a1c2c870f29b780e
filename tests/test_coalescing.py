"""The coalescing scheduler (api/searcher.py) on its own: which requests leave together, and when.

Scheduling driven on an event loop with a dispatcher that records what would be published instead of sending it;
the tests of lost batches and messages give it the test Redis for the records and outcomes they read. The real
path (Celery, workers) is exercised by tests/test_search_jobs.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest
import redis
import redis.asyncio as aredis

from api import batches
from api.dispatch import Dispatcher, Pending, RawResult
from api.searcher import Searcher
from api.waiter import RECHECK, JobWaiter
from common import jobs, scripts
from common.collections import Collection
from common.errors import TooManyRequests
from common.schemas import SearchRequest
from common.settings import Settings

COL = Collection(name="c", uid="u1", dim=4, metric="l2", index="Flat", created_at=0.0)
BODY = SearchRequest(vector=[0.0] * 4)


class RecordingDispatcher:
    """Publishes nothing: remembers each batch (its members' job ids) for the test to answer."""

    def __init__(self, r: aredis.Redis | None = None) -> None:
        self.waiter = JobWaiter(r, max_waiters=10_000)  # type: ignore[arg-type]  # never started: no listener
        self.batches: list[tuple[str, list[str]]] = []
        self.r = r
        self.sweeper = batches.Sweeper(r)  # type: ignore[arg-type]  # never started: the test reads `spent`

    pending = Dispatcher.pending  # the 202 of a member whose wait ran out, from its record (needs Redis)

    async def send(self, task: str, job_id: str, kwargs: dict[str, Any]) -> None:
        self.batches.append((job_id, [m["job_id"] for m in kwargs["members"]]))

    def answer(self, index: int) -> None:
        """The worker's one message for batch `index`: every member succeeded."""
        batch_id, members = self.batches[index]
        self.waiter._resolve(batch_id, {"batch": batch_id})
        for job_id in members:
            self.waiter._resolve(job_id, jobs.MemberOutcome(job_id, "succeeded", "result",
                                                            json.dumps({"job": job_id}).encode()))


def searcher(slots: int, delay_ms: float = 50.0, r: aredis.Redis | None = None,
             **settings: Any) -> tuple[Searcher, RecordingDispatcher]:
    dispatcher = RecordingDispatcher(r)
    config = Settings(coalesce_max_inflight=slots, coalesce_max_delay_ms=delay_ms, **settings)
    return Searcher(dispatcher, config), dispatcher  # type: ignore[arg-type]


def search(s: Searcher, body: SearchRequest = BODY, wait: float = 5.0) -> asyncio.Task[Any]:
    return asyncio.ensure_future(s.search(COL, np.zeros((1, 4), np.float32), body, "", wait=wait))


async def turns(n: int = 10) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def sizes(d: RecordingDispatcher) -> list[int]:
    return [len(members) for _, members in d.batches]


def test_a_lone_search_leaves_at_once_and_gets_its_own_answer() -> None:
    async def main() -> None:
        s, d = searcher(slots=2)
        task = search(s)
        await turns()
        assert sizes(d) == [1]
        d.answer(0)
        result = await task
        assert isinstance(result, RawResult) and json.loads(result.body) == {"job": d.batches[0][1][0]}

    asyncio.run(main())


@pytest.mark.parametrize(("slots", "expected"), [(1, [8]), (2, [4, 4]), (3, [3, 3, 2])])
def test_requests_read_together_are_shared_out_over_the_slots(slots: int, expected: list[int]) -> None:
    async def main() -> None:
        s, d = searcher(slots)
        tasks = [search(s) for _ in range(8)]
        await turns()
        assert sizes(d) == expected
        for i in range(len(d.batches)):
            d.answer(i)
        results = await asyncio.gather(*tasks)
        assert sorted(json.loads(r.body)["job"] for r in results) == sorted(j for _, m in d.batches for j in m)

    asyncio.run(main())


def test_followers_of_a_batch_leave_together_not_one_by_one() -> None:
    async def main() -> None:
        s, d = searcher(slots=1)
        first = [search(s) for _ in range(6)]
        await turns()
        d.answer(0)
        await asyncio.gather(*first)
        # The six clients come back one by one, as the API reads them: the first does not leave alone.
        second = []
        for _ in range(6):
            second.append(search(s))
            await turns()
        assert sizes(d) == [6, 6]
        d.answer(1)
        await asyncio.gather(*second)

    asyncio.run(main())


def test_missing_followers_are_waited_for_at_most_the_max_delay() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        s, d = searcher(slots=1, delay_ms=30)
        first = [search(s) for _ in range(4)]
        await turns()
        d.answer(0)
        await asyncio.gather(*first)
        started = loop.time()
        late = search(s)  # one of four expected followers; the other three never come
        while len(d.batches) < 2:
            await asyncio.sleep(0.002)
        waited = loop.time() - started
        assert sizes(d) == [4, 1]
        assert 0.025 <= waited < 1.0
        d.answer(1)
        await late

    asyncio.run(main())


def test_slots_bound_the_batches_in_flight_and_the_rest_leaves_as_one() -> None:
    async def main() -> None:
        s, d = searcher(slots=1, delay_ms=1)
        first = search(s)
        await turns()
        queued = [search(s) for _ in range(5)]
        await asyncio.sleep(0.05)  # far past the max delay: still one batch in flight
        assert sizes(d) == [1]
        d.answer(0)
        await first
        await asyncio.sleep(0.02)  # past the max delay for the first batch's follower, which never comes
        assert sizes(d) == [1, 5]
        d.answer(1)
        await asyncio.gather(*queued)

    asyncio.run(main())


def test_a_failed_publish_fails_only_that_batch() -> None:
    async def main() -> None:
        s, d = searcher(slots=1)

        async def refuse(task: str, job_id: str, kwargs: dict[str, Any]) -> None:
            raise ConnectionError("broker away")

        d.send = refuse  # type: ignore[method-assign]
        with pytest.raises(ConnectionError):
            await search(s)
        assert not s.lanes  # nothing left behind: the next search starts clean

    asyncio.run(main())


def test_requests_that_waited_for_the_slot_join_the_followers_of_the_batch_that_frees_it() -> None:
    async def main() -> None:
        s, d = searcher(slots=1)
        first = [search(s) for _ in range(4)]
        await turns()
        waiting = [search(s) for _ in range(2)]  # no slot: they wait for the batch of four
        await turns()
        d.answer(0)
        await asyncio.gather(*first)
        followers = []
        for _ in range(4):
            followers.append(search(s))
            await turns()
        assert sizes(d) == [4, 6]  # not [4, 2, 4]: a group split once would stay split
        d.answer(1)
        await asyncio.gather(*waiting, *followers)

    asyncio.run(main())


# Issue 16: bounds, and batches that never come back -------------------------------------------------------------


def session(i: int) -> SearchRequest:
    """A read-your-writes search: each client sends the LSN of its own last write, so each is a lane of its own."""
    return SearchRequest(vector=[0.0] * 4, consistency="session", min_lsn=f"1-{i}")


def test_lanes_of_distinct_min_lsn_are_dropped_once_answered() -> None:
    async def main() -> None:
        s, d = searcher(slots=1, delay_ms=10)
        for round_ in range(5):  # a few hundred read-your-writes clients, 60 of them at a time
            tasks = [search(s, session(round_ * 60 + i)) for i in range(60)]
            await turns()
            assert len(s.lanes) == 60 and sizes(d)[-60:] == [1] * 60  # no two of them can share a batch
            for i in range(len(d.batches) - 60, len(d.batches)):
                d.answer(i)
            await asyncio.gather(*tasks)
            await asyncio.sleep(0.03)  # past the max delay: no follower of theirs is expected any more
            assert s.lanes == {} and s.pending_count() == 0
        assert not d.waiter._futures and not s._tasks  # nothing else is kept either

    asyncio.run(main())


def test_min_lsn_splits_only_session_searches() -> None:
    async def main() -> None:
        s, d = searcher(slots=1)
        bodies = [SearchRequest(vector=[0.0] * 4, consistency=c, min_lsn=f"1-{i}")  # type: ignore[arg-type]
                  for c in ("strong", "eventual") for i in range(3)]
        tasks = [search(s, b) for b in bodies]
        await turns()
        assert sorted(sizes(d)) == [3, 3]  # one lane per consistency, whatever min_lsn they carry
        for i in range(2):
            d.answer(i)
        await asyncio.gather(*tasks)

    asyncio.run(main())


def test_a_full_lane_refuses_with_429_and_keeps_nothing_of_the_refused() -> None:
    async def main() -> None:
        s, d = searcher(slots=1, coalesce_max_pending=3)
        first = search(s)
        await turns()  # in flight: the lane's one slot is taken
        queued = [search(s) for _ in range(3)]
        await turns()
        refused = [search(s) for _ in range(4)] + [search(s, wait=0)]  # waiting clients and wait=0 alike
        await turns()
        for task in refused:
            with pytest.raises(TooManyRequests) as err:
                task.result()
            assert err.value.status == 429
        assert s.pending_count() == 3 and len(d.waiter._futures) == 1 + 1 + 3  # the batch, `first`, the queued
        d.answer(0)
        await first
        while len(d.batches) < 2:
            await asyncio.sleep(0.002)
        d.answer(1)
        assert len(await asyncio.gather(*queued)) == 3
        assert search(s) is not None  # the lane takes requests again

    asyncio.run(main())


@pytest.fixture
def redis_url(r: redis.Redis) -> str:
    conn = r.connection_pool.connection_kwargs
    return f"redis://{conn['host']}:{conn['port']}/{conn.get('db', 0)}"


def test_a_lost_batch_gives_its_slot_back_once_its_waits_have_run_out(redis_url: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch lost with its worker never comes back. Once its member's wait has run out (the client has its 202),
    the lane's next request leaves: it does not wait BATCH_DONE_TIMEOUT_S behind the lost one."""
    monkeypatch.setattr(batches, "MIN_SLOT_HOLD_S", 0.2)  # the floor, 5 s, would only slow the test

    async def main() -> None:
        client = aredis.Redis.from_url(redis_url)
        try:
            s, d = searcher(slots=1, r=client)
            lost = search(s, wait=0.4)
            await turns()
            after = search(s, wait=10)
            await asyncio.sleep(0.2)
            assert sizes(d) == [1]  # the slot is taken
            assert isinstance(await asyncio.wait_for(lost, 2), Pending)
            while len(d.batches) < 2:
                await asyncio.sleep(0.01)
            d.answer(1)
            assert isinstance(await asyncio.wait_for(after, 2), RawResult)
        finally:
            await client.aclose()

    asyncio.run(main())


def test_a_missed_batch_message_is_made_up_for_from_the_outcomes(redis_url: str) -> None:
    """The batch's message was published while the listener was reconnecting: once back, the listener wakes every
    waiter, and the member finds its hits in the batch's outcomes (it has no record), the lane its slot."""
    async def main() -> None:
        client = aredis.Redis.from_url(redis_url)
        sync = redis.Redis.from_url(redis_url)
        try:
            s, d = searcher(slots=1, r=client)
            missed = search(s, wait=30)
            await turns()
            after = search(s, wait=30)
            await turns()
            batch_id, members = d.batches[0]
            with sync.pipeline(transaction=False) as pipe:  # what the worker does, its message going nowhere
                jobs.finish_members(pipe, batch_id, [({"job_id": members[0]}, {"results": [[]], "lsn": "1-0"}, None)],
                                    reply_to=None, started_at=0.0, worker="w", hold_s=60)
                scripts.execute(pipe)
            d.waiter._wake_all(RECHECK)  # what the listener does once it has subscribed again
            result = await asyncio.wait_for(missed, 2)
            assert isinstance(result, RawResult) and json.loads(result.body) == {"results": [[]], "lsn": "1-0"}
            while len(d.batches) < 2:
                await asyncio.sleep(0.01)
            d.answer(1)
            await asyncio.wait_for(after, 2)
        finally:
            await client.aclose()
            sync.close()

    asyncio.run(main())


def test_a_batch_is_swept_once_every_member_has_its_answer_and_it_came_back() -> None:
    """Its outcomes are read by nobody here any more: they go at the sweeper's next round, not `hold_s` later."""
    async def main() -> None:
        s, d = searcher(slots=1)
        tasks = [search(s) for _ in range(3)]
        await turns()
        assert sizes(d) == [3] and d.sweeper.spent == []
        d.answer(0)
        await asyncio.gather(*tasks)
        await turns()
        assert d.sweeper.spent == [d.batches[0][0]]

    asyncio.run(main())


@pytest.mark.parametrize("shown", ["wait=0", "wait ran out"])
def test_a_batch_with_a_member_whose_id_is_shown_keeps_its_outcomes(redis_url: str, shown: str) -> None:
    """That member's record may still be made from the outcomes (jobs.amember_record): they stay their hold_s."""
    async def main() -> None:
        client = aredis.Redis.from_url(redis_url)
        try:
            s, d = searcher(slots=1, r=client)
            tasks = [search(s), search(s, wait=0 if shown == "wait=0" else 0.2)]
            await turns()
            assert sizes(d) == [2]
            if shown == "wait ran out":
                assert isinstance(await asyncio.wait_for(tasks[1], 2), Pending)
            d.answer(0)
            await asyncio.gather(*tasks)
            await turns()
            assert d.sweeper.spent == []
        finally:
            await client.aclose()

    asyncio.run(main())
