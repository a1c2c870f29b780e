"""Giving back the jobs of a worker that died whole.

When a pool child dies, its Celery main process puts the job back at once (acks late + reject on worker lost).
When the main process dies too (OOM killer, `docker kill`, a host gone), nobody does: the message stays in
kombu's `unacked` hash until the visibility timeout (the longest job's time limit + 10 minutes), and the job
with it. So every worker's heartbeat thread, at most one of them every REAP_EVERY_S across the deployment (the
`vecq:reaper` lock), gives back (`give_back`: kombu's `restore_by_tag` under a new tag) the messages no live worker
runs:

- a job whose record is `running` on a worker whose heartbeat has expired, in the delivery that worker took;
- any other unacked message older than ORPHAN_AFTER_S that no live worker claimed (a search batch, which has no
  record, or a job its dead worker had not claimed yet).

A pool child killed alone races this: its Celery main process puts its job back itself (reject on worker lost),
late on a loaded machine, under the same delivery tag. So a message goes back under a new tag (the old one's
reject then finds nothing to restore), and only the delivery the dead worker took is given back for it (one
taken after its claim is Celery's own requeue, held by a live worker that claims it in milliseconds). Either
way twin deliveries ran a job twice at once (seen in loaded test runs as `attempts` 3 for one kill).

A job that runs again is idempotent by its job id (common/jobs.py claim, the WAL's dedup records), so giving
back a message that was in fact still alive costs a redelivery, never a double effect.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import redis
from celery import Celery
from kombu.transport.redis import Channel

from common import jobs, keys
from common.status import JobStatus

log = logging.getLogger("vecq.worker")

REAP_EVERY_S = 5.0
ORPHAN_AFTER_S = 20.0  # a live worker claims what it receives within milliseconds


def _decoded(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def orphans(r: redis.Redis, alive: set[str], now: float) -> list[tuple[str, str]]:
    """(delivery tag, job id) of the unacked messages no live worker runs."""
    out = []
    taken: list[tuple[bytes, float]] = r.zrange(Channel.unacked_index_key, 0, -1, withscores=True)  # type: ignore[assignment]
    for tag, since in taken:
        raw = r.hget(Channel.unacked_key, tag)
        if raw is None:
            continue
        try:
            message = json.loads(raw)[0]
            job_id = str(message["headers"]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            continue
        record = jobs.public(jobs.get(r, job_id) or {})
        running_on = record.get("worker") if record.get("status") == JobStatus.RUNNING else None
        # Both times are the taking worker's clock for its own delivery (kombu stamps the unacked index when the
        # main process takes a message; its child claims after that); a later delivery is someone else's.
        taken_by_claimer = float(since) <= float(record.get("started_at") or 0.0)
        if running_on is not None and taken_by_claimer:
            if running_on not in alive:
                out.append((_decoded(tag), job_id))
        elif now - float(since) > ORPHAN_AFTER_S:
            out.append((_decoded(tag), job_id))
    return out


def give_back(channel: Channel, tag: str) -> None:
    """Put an unacked message back at the head of its queue under a new delivery tag (see the module's doc):
    kombu's restore_by_tag, but the redelivery is not the old tag's any more."""
    def restore(pipe: Any) -> None:
        raw = pipe.hget(channel.unacked_key, tag)
        pipe.multi()
        channel.qos._remove_from_indices(tag, pipe)
        if raw:
            message, exchange, routing_key = json.loads(raw)
            message["properties"]["delivery_tag"] = uuid.uuid4().hex
            channel._do_restore_message(message, exchange, routing_key, pipe, leftmost=True)

    with channel.conn_or_acquire() as client:
        client.transaction(restore, channel.unacked_key)


def reap(r: redis.Redis, app: Celery, alive: set[str], me: str) -> int:
    """Give back the orphaned messages, if this process holds the reaper's turn. Returns how many."""
    if not r.set(keys.REAPER, me, nx=True, px=int(REAP_EVERY_S * 1000)):
        return 0
    found = orphans(r, alive, time.time())
    if not found:
        return 0
    with app.connection_for_write() as conn:
        for tag, job_id in found:
            give_back(conn.default_channel, tag)  # at the head: it has waited long enough
            log.warning("gave back job=%s: its worker is gone", job_id)
    return len(found)
