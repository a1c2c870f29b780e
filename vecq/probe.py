"""Container health checks: `python -m vecq.probe api` and `python -m vecq.probe worker`; exit 0 = healthy.

- api: `GET /healthz` on this container answers 200 (VECQ_PROBE_URL, default http://127.0.0.1:8000).
- worker: a worker process on this host (container) has a fresh heartbeat in Redis. The heartbeat comes
  from the pool child once its indexes are loaded and keeps coming while it runs a long job, so a slow job
  is healthy and a hung or crashed child is not. Cheaper than `celery inspect ping` (no faiss import, no
  broadcast to every worker).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import httpx
import redis.asyncio as aredis

from common import heartbeat
from common.settings import get_settings


def api_healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


async def _beating_here(host: str) -> bool:
    settings = get_settings()
    r = aredis.Redis.from_url(settings.effective_redis_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        return any(w.get("host") == host for w in await heartbeat.alive(r, settings.heartbeat_ttl_s))
    finally:
        await r.aclose()


def worker_healthy(host: str | None = None) -> bool:
    try:
        return asyncio.run(_beating_here(host or socket.gethostname()))
    except Exception:
        return False


def main(argv: list[str]) -> int:
    what = argv[0] if argv else "api"
    if what == "api":
        return 0 if api_healthy(os.environ.get("VECQ_PROBE_URL", "http://127.0.0.1:8000")) else 1
    if what == "worker":
        return 0 if worker_healthy() else 1
    print(f"usage: python -m vecq.probe api|worker (got {what!r})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
