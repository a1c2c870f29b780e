"""Publishing a job to the workers' queue with the API's own async Redis client.

Celery's `send_task` publishes through kombu synchronously: on the API's event loop that was a blocking round
trip per job and, profiled with py-spy under load, about a fifth of the API's CPU (kombu builds a Redis client
object per publish, and Celery saferepr()s the arguments, vectors included). The message itself is plain: Celery's
protocol 2 (headers from `app.amqp.as_task_v2`, the JSON body `[args, kwargs, embed]`) in kombu's Redis envelope,
LPUSHed on the queue's list, which the workers BRPOP. `message` builds what kombu would push for
`send_task(name, kwargs=..., task_id=..., queue=..., ignore_result=True)` (tests/test_publish.py compares the two).
"""

from __future__ import annotations

import base64
import os
import socket
import uuid
from typing import Any

import orjson
import redis.asyncio as aredis
from celery import Celery

SHOWN_LEN = 64  # arguments longer than this are shown by their length in a message's kwargsrepr (Flower, logs)


def kwargs_repr(kwargs: dict[str, Any]) -> str:
    """A short description of a job's arguments for the message headers: never the vectors themselves."""
    def shown(value: Any) -> str:
        sized = hasattr(value, "__len__")
        # More than SHOWN_LEN characters or items: its repr is longer still, so it is not made (the vectors are
        # megabytes, a batch's members one dict each).
        text = "" if sized and len(value) > SHOWN_LEN else repr(value)
        if text and len(text) <= SHOWN_LEN:
            return text
        return f"<{type(value).__name__} of {len(value)}>" if sized else text[:SHOWN_LEN] + "..."
    return "{" + ", ".join(f"{key!r}: {shown(value)}" for key, value in kwargs.items()) + "}"


class Publisher:
    def __init__(self, r: aredis.Redis, celery: Celery, queue: str) -> None:
        self.r = r
        self.amqp = celery.amqp
        self.queue = queue
        self.origin = f"vecq-api-{os.getpid()}@{socket.gethostname()}"

    def message(self, task: str, job_id: str, kwargs: dict[str, Any]) -> bytes:
        task_message = self.amqp.as_task_v2(job_id, task, kwargs=kwargs, ignore_result=True, argsrepr="()",
                                            kwargsrepr=kwargs_repr(kwargs), origin=self.origin)
        body = orjson.dumps(task_message.body)
        return orjson.dumps({
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": task_message.headers,
            "properties": {**task_message.properties, "delivery_mode": 2,
                           "delivery_info": {"exchange": "", "routing_key": self.queue}, "priority": 0,
                           "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())},
        })

    async def publish(self, task: str, job_id: str, kwargs: dict[str, Any]) -> None:
        await self.r.lpush(self.queue, self.message(task, job_id, kwargs))
