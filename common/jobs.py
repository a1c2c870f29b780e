"""Job records: `vecq:job:{id}` hashes and their watcher sets. Only this module writes them.

A record outlives Celery's message: it is what `GET /v1/jobs/{id}` shows, it expires after the job TTL
(then the id is a 404, never an eternal PENDING), and it is where a finished job is announced. Waiters add
their API process's channel to the job's watchers; `finish` sets the final state and publishes it to every
watcher in one Lua script, so a waiter either finds the job finished or is told when it finishes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis
import redis.asyncio as aredis
import redis.exceptions

from common import keys
from common.errors import Canceled, ErrorDict
from common.scripts import Lua
from common.status import TERMINAL as TERMINAL
from common.status import JobStatus

# The scripts learn the terminal statuses from their last argument (common/status.py stays their one spelling):
# `terminal[status]` is true for those. Each script that needs it starts with _TERMINAL_PRELUDE and is called
# with `*args, TERMINAL_ARG`.
_TERMINAL_PRELUDE = """
local terminal = {}
for s in string.gmatch(ARGV[#ARGV], '[^ ]+') do terminal[s] = true end
"""
TERMINAL_ARG = " ".join(sorted(TERMINAL))


class Claim(StrEnum):
    RUN = "run"
    SKIP = "skip"  # finished or canceled already: a redelivery or a canceled job
    POISONED = "poisoned"  # delivered too many times: marked failed, never run again


def _now() -> str:
    return f"{time.time():.6f}"


def _decode(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()}


def public(raw: dict[Any, Any]) -> dict[str, Any]:
    """The record as the API shows it."""
    d = _decode(raw)
    out: dict[str, Any] = {
        "job_id": d.get("job_id"),
        "type": d.get("type"),
        "collection": d.get("collection") or None,
        "status": d.get("status"),
        "submitted_at": _float(d.get("submitted_at")),
        "started_at": _float(d.get("started_at")),
        "finished_at": _float(d.get("finished_at")),
        "attempts": int(d.get("attempts") or 0),
        "worker": d.get("worker") or None,
    }
    if d.get("progress_total"):
        out["progress"] = {"done": int(d.get("progress_done") or 0), "total": int(d["progress_total"])}
    if d.get("result"):
        out["result"] = json.loads(d["result"])
    if d.get("error"):
        out["error"] = json.loads(d["error"])
    return out


def scope_of(raw: dict[Any, Any]) -> str:
    return _decode(raw).get("scope", "")


def _float(value: str | None) -> float | None:
    return float(value) if value else None


def _initial(job_id: str, job_type: str, collection: str | None, scope: str, total: int | None) -> dict[str, str]:
    fields = {"job_id": job_id, "type": job_type, "collection": collection or "", "status": JobStatus.QUEUED,
              "submitted_at": _now(), "scope": scope, "attempts": "0"}
    if total is not None:
        fields.update(progress_total=str(total), progress_done="0")
    return fields


async def acreate(r: aredis.Redis, job_id: str, job_type: str, collection: str | None, *, ttl: int,
                  scope: str = "", watcher: str | None = None, total: int | None = None) -> None:
    async with r.pipeline(transaction=True) as pipe:
        pipe.hset(keys.job(job_id), mapping=_initial(job_id, job_type, collection, scope, total))  # type: ignore[arg-type]  # redis-py's Mapping[EncodableT, EncodableT] is invariant in its key type
        pipe.expire(keys.job(job_id), ttl)
        _list(pipe, job_id, job_type, collection)
        if watcher:
            pipe.sadd(keys.job_watchers(job_id), watcher)
            pipe.expire(keys.job_watchers(job_id), ttl)
        await pipe.execute()


def create(r: redis.Redis, job_id: str, job_type: str, collection: str | None, *, ttl: int,
           scope: str = "", total: int | None = None) -> None:
    with r.pipeline(transaction=True) as pipe:
        pipe.hset(keys.job(job_id), mapping=_initial(job_id, job_type, collection, scope, total))  # type: ignore[arg-type]  # redis-py's Mapping[EncodableT, EncodableT] is invariant in its key type
        pipe.expire(keys.job(job_id), ttl)
        _list(pipe, job_id, job_type, collection)
        pipe.execute()


async def aget(r: aredis.Redis, job_id: str) -> dict[Any, Any] | None:
    raw = await r.hgetall(keys.job(job_id))
    return raw or None


def get(r: redis.Redis, job_id: str) -> dict[Any, Any] | None:
    return r.hgetall(keys.job(job_id)) or None


# Recent jobs: `vecq:jobs:recent`, a Redis Stream with one entry {job, type, collection} per job record created
# (by the API, by a worker for a job sent straight to Celery, for a search whose id was shown), newest last. The
# XADD that appends an entry also caps the stream at about RECENT_MAX entries (MAXLEN ~ trims whole stream
# nodes: no extra command, no scan), in the pipeline or script that creates the record. A search answered while
# its client waited has no record and so no entry, by design; the parts of a bulk ingest have none either (their
# parent carries the progress). An entry outlives an expired record: readers skip it.
RECENT_MAX = 1000
RECENT_PAGE = 200
SUMMARY_FIELDS = ("job_id", "type", "collection", "status", "submitted_at", "started_at", "finished_at", "attempts",
                  "worker", "progress_total", "progress_done", "error", "scope")  # a record without its result


def _list(pipe: redis.client.Pipeline | aredis.client.Pipeline, job_id: str, job_type: str,
          collection: str | None) -> None:
    pipe.xadd(keys.RECENT_JOBS, {"job": job_id, "type": job_type, "collection": collection or ""},
              maxlen=RECENT_MAX, approximate=True)


async def arecent(r: aredis.Redis, *, limit: int, may_read: Callable[[str, str | None], bool],
                  job_type: str | None = None, collection: str | None = None,
                  status: str | None = None) -> list[dict[str, Any]]:
    """Recent jobs, newest first: public records without `result` that match the filters and that
    `may_read(scope, collection)` allows, at most `limit`. Reads the index RECENT_PAGE entries at a time and
    each page's records with one pipelined HMGET of their small fields: two round trips a page, and it stops
    as soon as it has `limit` jobs."""
    out: list[dict[str, Any]] = []
    newest = "+"
    while len(out) < limit:
        entries = await r.xrevrange(keys.RECENT_JOBS, max=newest, min="-", count=RECENT_PAGE)
        if not entries:
            break
        wanted = []
        for _, fields in entries:
            entry = _decode(fields or {})
            if (job_type is None or entry.get("type") == job_type) and \
                    (collection is None or entry.get("collection") == collection):
                wanted.append(entry["job"])
        if wanted:
            async with r.pipeline(transaction=False) as pipe:
                for job_id in wanted:
                    pipe.hmget(keys.job(job_id), SUMMARY_FIELDS)
                rows = await pipe.execute()
            for values in rows:
                raw = {k: v for k, v in zip(SUMMARY_FIELDS, values, strict=True) if v is not None}
                if not raw.get("status"):
                    continue  # expired since it was listed
                record = public(raw)
                if (status is None or record["status"] == status) and may_read(scope_of(raw), record["collection"]):
                    out.append(record)
                    if len(out) == limit:
                        break
        if len(entries) < RECENT_PAGE:
            break
        last = entries[-1][0]
        newest = "(" + (last.decode() if isinstance(last, bytes) else str(last))
    return out


# A job's watchers set lives while the job runs: the script that ends the job publishes to it and deletes it, and a
# job that has ended gets no new watcher (its waiter reads the record). Kept as long as the record, it was 41 % of
# what a write left in Redis for VECQ_JOB_TTL_S, read by nobody (found by bench/soak.py's census).
_WATCH = Lua(_TERMINAL_PRELUDE + """
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
local status = redis.call('HGET', KEYS[1], 'status')
if not terminal[status] then
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('EXPIRE', KEYS[2], redis.call('TTL', KEYS[1]))
end
return redis.call('HGETALL', KEYS[1])
""")


async def awatch(r: aredis.Redis, job_id: str, channel: str) -> dict[str, str] | None:
    """Register a waiter and read the record in one step (no lost wake-up between the two)."""
    flat = await _WATCH(r, keys=[keys.job(job_id), keys.job_watchers(job_id)],
                        args=[channel, TERMINAL_ARG])
    return None if flat is None else _decode(dict(zip(flat[::2], flat[1::2], strict=True)))


# A record missing at claim time was submitted straight to Celery (no API): create it so it can be read.
_CLAIM = Lua(_TERMINAL_PRELUDE + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  redis.call('HSET', KEYS[1], 'job_id', ARGV[5], 'type', ARGV[6], 'collection', ARGV[7],
             'submitted_at', ARGV[2], 'attempts', '0')
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
  if tonumber(ARGV[8]) > 0 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[8], '*', 'job', ARGV[5], 'type', ARGV[6], 'collection', ARGV[7])
  end
elseif terminal[status] then
  return 'skip'
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if attempts > tonumber(ARGV[3]) then return 'poisoned' end
redis.call('HSET', KEYS[1], 'status', ARGV[9], 'started_at', ARGV[2], 'worker', ARGV[1])
return 'run'
""")


def finished(r: redis.Redis, job_ids: list[str]) -> list[bool]:
    """Whether each job (or batch) has ended for good: a terminal record, or a batch kept `done` (finish_members
    with keep_done). Neither is ever run again (claim and claim_delivery skip them)."""
    with r.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(keys.job(job_id), "status")
            pipe.hget(keys.delivery(job_id), "done")
        replies = pipe.execute()
    return [(status.decode() if isinstance(status, bytes) else status) in TERMINAL or done is not None
            for status, done in zip(replies[::2], replies[1::2], strict=True)]


def claim(r: redis.Redis, job_id: str, *, worker: str, max_attempts: int, ttl: int, job_type: str,
          collection: str | None, listed: bool = True) -> Claim:
    """Start a delivery of a job. A job sent straight to Celery gets its record here (and, if `listed`, its
    entry in the recent jobs)."""
    outcome = _CLAIM(r, keys=[keys.job(job_id), keys.RECENT_JOBS], args=[
        worker, _now(), max_attempts, ttl, job_id, job_type, collection or "", RECENT_MAX if listed else 0,
        JobStatus.RUNNING, TERMINAL_ARG])
    return Claim(outcome.decode() if isinstance(outcome, bytes) else outcome)


_FINISH = Lua(_TERMINAL_PRELUDE + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if terminal[redis.call('HGET', KEYS[1], 'status')] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished_at', ARGV[2], ARGV[3], ARGV[4])
for _, channel in ipairs(redis.call('SMEMBERS', KEYS[2])) do redis.call('PUBLISH', channel, ARGV[5]) end
redis.call('DEL', KEYS[2])
return 1
""")


def finish(r: redis.Redis, job_id: str, *, result: Any = None, error: ErrorDict | None = None) -> bool:
    """Set the terminal state once and tell the watchers. False if it was already terminal."""
    status = JobStatus.FAILED if error is not None else JobStatus.SUCCEEDED
    field, value = ("error", error) if error is not None else ("result", result)
    payload = json.dumps(value, separators=(",", ":"))
    message = json.dumps({"job_id": job_id, "status": status, field: value}, separators=(",", ":"))
    done = _FINISH(r, keys=[keys.job(job_id), keys.job_watchers(job_id)],
                   args=[status, _now(), field, payload, message, TERMINAL_ARG])
    return bool(done)


_CANCEL = Lua("""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return nil end
if status ~= ARGV[3] then return status end
redis.call('HSET', KEYS[1], 'status', ARGV[4], 'finished_at', ARGV[1])
for _, channel in ipairs(redis.call('SMEMBERS', KEYS[2])) do redis.call('PUBLISH', channel, ARGV[2]) end
redis.call('DEL', KEYS[2])
return ARGV[4]
""")


async def acancel(r: aredis.Redis, job_id: str) -> str | None:
    """Cancel a job still queued. Returns the status it had if it was no longer queued, None if unknown."""
    message = json.dumps({"job_id": job_id, "status": JobStatus.CANCELED, "error": Canceled("job canceled").to_dict()})
    out = await _CANCEL(r, keys=[keys.job(job_id), keys.job_watchers(job_id)],
                        args=[_now(), message, JobStatus.QUEUED, JobStatus.CANCELED])
    return None if out is None else (out.decode() if isinstance(out, bytes) else out)


_PROGRESS = Lua("""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HINCRBY', KEYS[1], 'progress_done', ARGV[1])
""")


def add_progress(r: redis.Redis, job_id: str, done: int) -> int:
    return int(_PROGRESS(r, keys=[keys.job(job_id)], args=[done]))


_SET_PROGRESS = Lua("""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'progress_done', ARGV[1])
return 1
""")


def set_progress(r: redis.Redis, job_id: str, done: int) -> None:
    """Progress as a position, not an increment: a redelivered job that walks its chunks again (finding them
    appended already) reports the same numbers instead of counting them twice."""
    _SET_PROGRESS(r, keys=[keys.job(job_id)], args=[done])


def set_total(r: redis.Redis, job_id: str, total: int) -> None:
    r.hset(keys.job(job_id), mapping={"progress_total": str(total), "progress_done": "0"})


# Searches sent by the API are "members" of a batch message. A member that is answered while its client waits
# never gets a record: its id is never shown, and a day of records at a thousand searches a second would fill
# Redis. The worker keeps a batch's outcomes for `hold_s` (`batch` key, one hash; the API that sent the batch drops
# them sooner once nobody can read them: adrop_batch_outcomes) and finishes the records that
# exist; the API creates a member's record only when it shows the id (wait=0, or the wait ran out), from the
# batch's outcomes if they are in (amember_record). Either script may run first: the record ends up right. A
# waiter that missed the batch's message (its listener was reconnecting) reads its outcome there too
# (amember_outcome), and the API's lane frees the batch's slot once it sees them (abatch_finished).

_DELIVERY = Lua("""
if redis.call('HEXISTS', KEYS[1], 'done') == 1 then return 'skip' end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
if attempts > tonumber(ARGV[1]) then return 'poisoned' end
return 'run'
""")


class Unclaimed(Exception):
    """Raised by DeliveryClaim.require: this delivery must not run (skipped or poisoned); its runner knows why."""


class DeliveryClaim:
    """The claim of one delivery of a batch message (see claim_delivery), made alone (`run`) or queued on the
    batch's first round trip of its own (`queue`, then `settle` with its reply): a lone search's catch-up read
    carries it, one round trip instead of two (worker/registry.py). Either way it is made before anything of
    the batch runs that could kill its worker."""

    def __init__(self, batch_id: str, *, max_attempts: int, ttl: int) -> None:
        self.batch_id = batch_id
        self.max_attempts = max_attempts
        self.ttl = ttl
        self.outcome: Claim | None = None  # None until made

    def queue(self, pipe: redis.client.Pipeline) -> None:
        """Queue the claim (one reply, for `settle`); the pipeline must run through scripts.execute."""
        _DELIVERY.queue(pipe, keys=[keys.delivery(self.batch_id)], args=[self.max_attempts, self.ttl])

    def settle(self, reply: Any) -> Claim:
        self.outcome = Claim(_text(reply))
        return self.outcome

    def run(self, r: redis.Redis) -> Claim:
        """The claim's outcome, made now in a round trip of its own unless it rode on one already."""
        if self.outcome is None:
            self.settle(_DELIVERY(r, keys=[keys.delivery(self.batch_id)], args=[self.max_attempts, self.ttl]))
        assert self.outcome is not None
        return self.outcome

    def require(self, r: redis.Redis) -> None:
        """Go on only if this delivery may run (Unclaimed otherwise)."""
        if self.run(r) is not Claim.RUN:
            raise Unclaimed(self.outcome)


def claim_delivery(r: redis.Redis, batch_id: str, *, max_attempts: int, ttl: int) -> Claim:
    """Count a delivery of a batch message: past max_attempts (each delivery killed its worker) it is poison; a
    batch kept `done` (finish_members with keep_done) is skipped."""
    return DeliveryClaim(batch_id, max_attempts=max_attempts, ttl=ttl).run(r)


# KEYS: the batch's outcomes hash, then each member's record and watchers keys. ARGV: started_at, finished_at,
# worker, hold_s, then per member: job_id, status, field, encoded value.
_FINISH_MEMBERS = Lua(_TERMINAL_PRELUDE + """
local started_at, finished_at, worker = ARGV[1], ARGV[2], ARGV[3]
local outcomes = {}
for i = 1, (#KEYS - 1) / 2 do
  local a = 4 + (i - 1) * 4
  local job_id = ARGV[a + 1]
  table.insert(outcomes, job_id .. ':status'); table.insert(outcomes, ARGV[a + 2])
  table.insert(outcomes, job_id .. ':field'); table.insert(outcomes, ARGV[a + 3])
  table.insert(outcomes, job_id .. ':value'); table.insert(outcomes, ARGV[a + 4])
end
for first = 1, #outcomes, 600 do  -- in slices: Lua's unpack stops at a few thousand values
  redis.call('HSET', KEYS[1], unpack(outcomes, first, math.min(first + 599, #outcomes)))
end
if #outcomes > 0 then redis.call('EXPIRE', KEYS[1], math.max(1, math.ceil(tonumber(ARGV[4])))) end
local finished = 0
for i = 1, (#KEYS - 1) / 2 do
  local record, watchers, a = KEYS[2 * i], KEYS[2 * i + 1], 4 + (i - 1) * 4
  local job_id, status, field, encoded = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local was = redis.call('HGET', record, 'status')
  if was and not terminal[was] then
    redis.call('HSET', record, 'status', status, 'started_at', started_at, 'finished_at', finished_at,
               field, encoded, 'worker', worker, 'attempts', '1')
    local channels = redis.call('SMEMBERS', watchers)
    if #channels > 0 then
      local message = '{"job_id":' .. cjson.encode(job_id) .. ',"status":' .. cjson.encode(status) .. ','
                      .. cjson.encode(field) .. ':' .. encoded .. '}'
      for _, channel in ipairs(channels) do redis.call('PUBLISH', channel, message) end
      redis.call('DEL', watchers)
    end
    finished = finished + 1
  end
end
return finished
""")


def finish_members(pipe: redis.client.Pipeline, batch_id: str, outcomes: list[tuple[dict[str, Any], Any,
                   ErrorDict | None]], *, reply_to: str | None, started_at: float, worker: str,
                   hold_s: float, keep_done_s: float | None = None) -> None:
    """Queue, on `pipe`: the batch's outcomes ((member, result, error) each), kept `hold_s` for members whose id
    the API shows later, the members' records that exist, one message with every outcome to the submitting API
    process, and the end of the batch's delivery count. With `keep_done_s` (a batch that must never run twice:
    writes), its delivery key says `done` that long instead, so a redelivery (its ack lost with its worker) is
    skipped, and the log's dedup records of the batch can go at the next seal (wal.prune_dedup)."""
    record_keys: list[str] = []
    args: list[str | float] = [f"{started_at:.6f}", _now(), worker, hold_s]
    encoded_outcomes = []
    for member, result, error in outcomes:
        job_id = str(member["job_id"])
        status = JobStatus.FAILED if error is not None else JobStatus.SUCCEEDED
        field, value = ("error", error) if error is not None else ("result", result)
        # Encoded once: the same bytes go into the outcomes, a record, the watchers' message and the batch's,
        # and from there, untouched, into the HTTP response.
        encoded = _dumps(value)
        encoded_outcomes.append((job_id, status, field, encoded))
        record_keys += [keys.job(job_id), keys.job_watchers(job_id)]
        args += [job_id, status, field, encoded]
    if record_keys:
        # By digest alone: the caller runs the pipeline with scripts.execute, which loads it if Redis lost it.
        _FINISH_MEMBERS.queue(pipe, keys=[keys.batch_outcomes(batch_id), *record_keys], args=[*args, TERMINAL_ARG])
    if reply_to:
        pipe.publish(keys.job_channel(reply_to), batch_message(batch_id, encoded_outcomes))
    if keep_done_s is None:
        pipe.delete(keys.delivery(batch_id))
    else:
        pipe.hset(keys.delivery(batch_id), "done", "1")
        pipe.expire(keys.delivery(batch_id), max(1, math.ceil(keep_done_s)))


BATCH_PREFIX = b'{"batch":'


@dataclass(frozen=True)
class MemberOutcome:
    """One member's outcome from a batch message; `raw` is its result or error as JSON bytes."""

    job_id: str
    status: str
    field: str  # "result" | "error"
    raw: bytes


def batch_message(batch_id: str, outcomes: Sequence[tuple[str, str, str, str]]) -> bytes:
    """A search batch's one message to its API process: a JSON header line naming each member's job id,
    status, field and length, then the members' encoded values back to back. The API hands each value to
    its HTTP response as it is, without parsing it."""
    payloads = [encoded.encode() for *_, encoded in outcomes]
    header = {"batch": batch_id, "outcomes": [[job_id, status, field, len(payload)] for (job_id, status, field, _),
                                              payload in zip(outcomes, payloads, strict=True)]}
    return _dumps(header).encode() + b"\n" + b"".join(payloads)


def parse_batch_message(data: bytes) -> tuple[str, list[MemberOutcome]]:
    """(batch id, member outcomes) of a batch_message; ValueError if it is not one."""
    head, sep, body = data.partition(b"\n")
    if not sep or not head.startswith(BATCH_PREFIX):
        raise ValueError("not a batch message")
    header = json.loads(head)
    members, offset = [], 0
    for job_id, status, field, length in header["outcomes"]:
        members.append(MemberOutcome(str(job_id), str(status), str(field), body[offset : offset + int(length)]))
        offset += int(length)
    if offset != len(body):
        raise ValueError("batch message lengths do not add up")
    return str(header["batch"]), members


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# KEYS: the member's record, its batch's outcomes (or "" before the batch left), the recent jobs. ARGV: ttl,
# RECENT_MAX, then the record's initial fields. Finished already (the batch's outcomes are in): the record is
# created finished.
_MEMBER_RECORD = Lua("""
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
local job_id = redis.call('HGET', KEYS[1], 'job_id')
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'job', job_id, 'type', 'search',
           'collection', redis.call('HGET', KEYS[1], 'collection'))
if KEYS[2] ~= '' then
  local done = redis.call('HMGET', KEYS[2], job_id .. ':status', job_id .. ':field', job_id .. ':value')
  if done[1] then
    redis.call('HSET', KEYS[1], 'status', done[1], done[2], done[3], 'attempts', '1')
  end
end
return 1
""")


async def amember_record(r: aredis.Redis, job_id: str, batch_id: str | None, collection: str, *, ttl: int,
                         scope: str, submitted_at: float, job_type: str = "search") -> None:
    """The record of a member whose id is about to be shown (202): finished if its batch's outcomes are in,
    queued otherwise (the worker finishes it then)."""
    fields = _initial(job_id, job_type, collection, scope, None)
    fields["submitted_at"] = f"{submitted_at:.6f}"
    outcomes = keys.batch_outcomes(batch_id) if batch_id else ""
    await _MEMBER_RECORD(r, keys=[keys.job(job_id), outcomes, keys.RECENT_JOBS],
                         args=[ttl, RECENT_MAX, *[x for kv in fields.items() for x in kv]])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def amember_outcome(r: aredis.Redis, batch_id: str, job_id: str) -> MemberOutcome | None:
    """A member's outcome from its batch's outcomes, if the batch has finished (and they are still kept): how a
    waiter gets its result when the batch's message did not reach it (the listener was reconnecting)."""
    status, field, value = await r.hmget(keys.batch_outcomes(batch_id), f"{job_id}:status", f"{job_id}:field",
                                         f"{job_id}:value")
    if status is None or field is None or value is None:
        return None
    return MemberOutcome(job_id, _text(status), _text(field), value.encode() if isinstance(value, str) else value)


async def adrop_batch_outcomes(r: aredis.Redis, batch_ids: Sequence[str]) -> None:
    """Drop batches' outcomes before their `hold_s`: the API that sent them knows nobody will read them again."""
    await r.unlink(*(keys.batch_outcomes(batch_id) for batch_id in batch_ids))


async def abatch_finished(r: aredis.Redis, batch_id: str) -> bool:
    """Whether a batch's outcomes are in (and still kept): it came back even if its message was missed."""
    return bool(await r.exists(keys.batch_outcomes(batch_id)))
