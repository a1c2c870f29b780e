"""FastAPI dependencies: what a route needs, taken from the app's state."""

from __future__ import annotations

from typing import Annotated

import redis.asyncio as aredis
from fastapi import Depends, Path, Query, Request
from prometheus_client import CollectorRegistry

from api.auth import KeyRing, Principal, authenticate
from api.catalog import CollectionCache
from api.dispatch import Dispatcher
from api.searcher import Searcher
from api.writer import Writer
from common import keys
from common import settings as settings_module
from common.collections import Collection, aget
from common.settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_redis(request: Request) -> aredis.Redis:
    return request.app.state.redis


async def get_dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


async def get_catalog(request: Request) -> CollectionCache:
    return request.app.state.catalog


async def get_searcher(request: Request) -> Searcher:
    return request.app.state.searcher


async def get_writer(request: Request) -> Writer | None:
    return request.app.state.writer


async def get_keys(request: Request) -> KeyRing:
    return request.app.state.api_keys


async def get_metrics_registry(request: Request) -> CollectorRegistry:
    return request.app.state.metrics_registry


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[aredis.Redis, Depends(get_redis)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
CatalogDep = Annotated[CollectionCache, Depends(get_catalog)]
SearcherDep = Annotated[Searcher, Depends(get_searcher)]
WriterDep = Annotated[Writer | None, Depends(get_writer)]
KeysDep = Annotated[KeyRing, Depends(get_keys)]
MetricsRegistryDep = Annotated[CollectorRegistry, Depends(get_metrics_registry)]
PrincipalDep = Annotated[Principal, Depends(authenticate)]
CollectionName = Annotated[str, Path(pattern=keys.COLLECTION_NAME.pattern, max_length=64)]
# Bounds from the settings, which are built once per process: the OpenAPI schema shows the deployment's own.
WAIT_MAX_S = settings_module.get_settings().wait_max_s
WaitWrite = Annotated[float, Query(ge=0, le=WAIT_MAX_S, description="Seconds to wait for the job (0: 202 at once).")]
WaitSearch = Annotated[float | None, Query(ge=0, le=WAIT_MAX_S, description="Seconds to wait for the hits "
                                           "(default VECQ_SEARCH_WAIT_DEFAULT_S).")]
WaitPoll = Annotated[float, Query(ge=0, le=WAIT_MAX_S, description="Long-poll up to N seconds.")]
VectorIdPath = Annotated[str, Path(min_length=1, max_length=settings_module.get_settings().max_id_length)]


async def load_collection(name: str, r: aredis.Redis, principal: Principal, *, write: bool) -> Collection:
    principal.require(name, write=write)
    return await aget(r, name)
