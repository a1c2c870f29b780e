"""Per-process state of a worker child, set up in worker_process_init (after the fork)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from common.heartbeat import worker_id
from common.settings import Settings
from worker import segment_files
from worker.registry import Registry


@dataclass
class ProcessState:
    settings: Settings
    r: redis.Redis
    registry: Registry
    worker: str
    send: Callable[[str, dict[str, Any]], None]  # enqueue a job by task name (worker/lifecycle.py send)
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    started_at: float = field(default_factory=time.time)
    jobs_done: int = 0
    last_job: dict[str, object] | None = None
    stopping: bool = False


_state: ProcessState | None = None


def init(settings: Settings, send: Callable[[str, dict[str, Any]], None]) -> ProcessState:
    global _state
    r = redis.Redis.from_url(settings.effective_redis_url, socket_connect_timeout=5, health_check_interval=30)
    registry = Registry(r, segment_files.root(settings), settings.eventual_max_lag_s)
    _state = ProcessState(settings=settings, r=r, registry=registry,
                          worker=worker_id(socket.gethostname(), os.getpid()), send=send)
    return _state


def current() -> ProcessState:
    if _state is None:
        raise RuntimeError("worker state used before worker_process_init")
    return _state
