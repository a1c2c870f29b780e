from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import RedisDep, SettingsDep
from common import heartbeat

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Redis down or no live worker"}})
async def readyz(r: RedisDep, settings: SettingsDep) -> JSONResponse:
    try:
        await r.ping()
        workers = await heartbeat.alive(r, settings.heartbeat_ttl_s)
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "reason": f"redis: {exc}"}, status_code=503)
    if not workers:
        return JSONResponse({"status": "unavailable", "reason": "no live worker heartbeat"}, status_code=503)
    return JSONResponse({"status": "ready", "workers": len(workers)})
