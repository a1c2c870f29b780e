"""The HTTP API: `uvicorn api.main:app`. Knows HTTP and Redis; never imports faiss."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aredis
from fastapi import FastAPI
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from starlette.types import ASGIApp

from api import errors, metrics
from api.auth import KeyCheck, load_keys
from api.catalog import CollectionCache
from api.deps import WAIT_MAX_S
from api.dispatch import Dispatcher
from api.fast_search import FastSearch
from api.limits import BodyLimits
from api.routes import collections, console, health, jobs, ops, search, vectors
from api.searcher import Searcher
from api.waiter import JobWaiter
from api.writer import Writer
from common.celery_app import make_celery
from common.logs import setup_logging
from common.settings import Settings, get_settings


class VecqAPI(FastAPI):
    """FastAPI with the search fast path (api/fast_search.py) in front of its whole middleware stack, FastAPI's
    own included: a valid search pays for none of them; every other request goes through all of them."""

    def build_middleware_stack(self) -> ASGIApp:
        settings: Settings = self.state.settings
        return FastSearch(super().build_middleware_stack(), self.state, self.state.api_keys, self.state.http_series,
                          settings.max_body_bytes, WAIT_MAX_S)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # A blocking pool: a burst of requests queues for a connection instead of failing with
        # "Too many connections", and Redis sees a bounded number of clients per API process.
        # A command whose connection broke (Redis restarted since the connection was pooled) is sent again on a new
        # one: the soak saw 97 writes of one batch answered 503 when its publish met a connection that died 90 s
        # before. A command sent twice is harmless: a job published twice runs once (its claim, the log's dedup).
        pool = aredis.BlockingConnectionPool.from_url(settings.effective_redis_url, max_connections=64, timeout=5,
                                                      socket_connect_timeout=2, health_check_interval=30,
                                                      retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2))
        r = aredis.Redis(connection_pool=pool)
        listener = aredis.Redis.from_url(settings.effective_redis_url, socket_connect_timeout=2,
                                         health_check_interval=30)
        waiter = JobWaiter(r, settings.max_waiters, listener)
        await waiter.start()
        dispatcher = Dispatcher(r, app.state.celery, waiter, settings)
        dispatcher.sweeper.start()
        app.state.redis, app.state.waiter, app.state.dispatcher = r, waiter, dispatcher
        app.state.searcher = Searcher(dispatcher, settings)
        app.state.writer = Writer(dispatcher, settings) if settings.coalesce_writes else None
        app.state.catalog = CollectionCache(r, settings.collection_cache_s)
        try:
            yield
        finally:
            await dispatcher.sweeper.stop()
            await waiter.stop()
            await listener.aclose()
            await r.aclose()

    setup_logging(settings.log_json)
    app = VecqAPI(title="vecq", version="0.1.0", lifespan=lifespan,
                  description="Vector search over FAISS, run by Celery workers behind a Redis write-ahead log.")
    app.state.settings = settings
    app.state.celery = make_celery(settings)
    app.state.api_keys = load_keys(settings)
    errors.install(app)
    # Added last = runs first: the key is checked before the body limits, and both before any body is read. A
    # valid search never reaches them: VecqAPI answers it in front of the whole stack (api/fast_search.py).
    app.add_middleware(BodyLimits, max_body_bytes=settings.max_body_bytes, max_upload_bytes=settings.max_upload_bytes)
    app.add_middleware(KeyCheck, keys=app.state.api_keys)
    app.state.metrics_registry = metrics.instrument(app)  # outermost of these: counts every request, 401s too
    for module in (health, collections, vectors, search, jobs, ops, console):
        app.include_router(module.router)
    return app


app = create_app()
