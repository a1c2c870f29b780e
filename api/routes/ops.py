"""Operations: `GET /metrics` (Prometheus) and `GET /v1/workers` (live workers, their copies, the queue)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from api import metrics, ops
from api.auth import identify
from api.deps import KeysDep, MetricsRegistryDep, PrincipalDep, RedisDep, SearcherDep, SettingsDep, WriterDep
from common.errors import Forbidden
from common.schemas import error_responses

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {metrics.CONTENT_TYPE: {}}, "description": "Prometheus text format"}})
async def prometheus_metrics(request: Request, r: RedisDep, settings: SettingsDep, api_keys: KeysDep,
                             registry: MetricsRegistryDep, searcher: SearcherDep, writer: WriterDep) -> Response:
    """Prometheus exposition. Open like /healthz (expose it to the monitoring network only), unless
    VECQ_METRICS_NEED_KEY: then a key allowed on every collection, since it names them all."""
    if settings.metrics_need_key:
        principal = identify(request.headers, api_keys)
        if principal.pattern != "*":
            raise Forbidden("/metrics names every collection: it needs a key allowed on all of them", None)
    snap = await ops.take(r, settings)
    return Response(metrics.render(registry, snap, searcher, writer),
                    media_type=metrics.CONTENT_TYPE)


@router.get("/v1/workers", responses=error_responses(401, 503))
async def list_workers(r: RedisDep, settings: SettingsDep, principal: PrincipalDep) -> dict[str, Any]:
    """Workers whose heartbeat is fresh (a worker that stops beating drops out after the heartbeat TTL),
    each with its copies of the collections this key may see, plus the queue depth."""
    snap = await ops.take(r, settings, with_jobs=False)
    return {"workers": ops.worker_views(snap, principal.allows), "queues": snap.queues, "unacked": snap.unacked,
            "heartbeat_ttl_s": settings.heartbeat_ttl_s}
