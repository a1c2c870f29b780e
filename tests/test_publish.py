"""The API publishes jobs itself (api/publish.py): the message must be what Celery's send_task pushes."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import redis
import redis.asyncio as aredis

from api.publish import Publisher, kwargs_repr
from common.celery_app import ADD, make_celery
from common.settings import Settings

# Differ by design: a fresh tag per message, the sender's name, a result queue the API never reads (ignore_result),
# and the arguments' description (never the vectors).
OWN = {"delivery_tag", "origin", "reply_to", "argsrepr", "kwargsrepr"}


def comparable(raw: bytes) -> dict[str, Any]:
    message = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    for part in ("headers", "properties"):
        message[part] = {k: v for k, v in message[part].items() if k not in OWN}
    return message


def test_the_message_is_the_one_celery_sends(r: redis.Redis) -> None:
    conn = r.connection_pool.connection_kwargs
    url = f"redis://{conn['host']}:{conn['port']}/0"
    queue = f"vecq-publish-test-{uuid.uuid4().hex[:8]}"  # no worker listens here
    celery = make_celery(Settings(redis_url=url))
    kwargs = {"collection": "docs", "uid": "u1", "vectors_b64": "AAAA" * 100, "members": [{"job_id": "m", "n": 1}]}
    celery.send_task(ADD, kwargs=kwargs, task_id="job-1", queue=queue, ignore_result=True)

    async def ours() -> None:
        client = aredis.Redis.from_url(url)
        try:
            await Publisher(client, celery, queue).publish(ADD, "job-1", kwargs)
        finally:
            await client.aclose()

    asyncio.run(ours())
    celerys_raw, ours_raw = r.rpop(queue), r.rpop(queue)  # workers BRPOP: the oldest, Celery's, comes first
    assert r.llen(queue) == 0 and ours_raw is not None and celerys_raw is not None
    assert comparable(celerys_raw) == comparable(ours_raw)
    tags = {json.loads(raw)["properties"]["delivery_tag"] for raw in (celerys_raw, ours_raw)}
    assert len(tags) == 2
    r.delete(queue)


def test_kwargs_repr_never_shows_the_vectors() -> None:
    text = kwargs_repr({"collection": "docs", "vectors_b64": "x" * 10_000, "k": 10, "members": [{}] * 300})
    assert "'collection': 'docs'" in text and "'k': 10" in text
    assert "<str of 10000>" in text and "<list of 300>" in text and len(text) < 200
