"""Every error leaves the API as {"error": {"code", "message", "field"}} with a 4xx/5xx status."""

from __future__ import annotations

import logging
from typing import Any

import kombu.exceptions
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.errors import VecqError

log = logging.getLogger("vecq.api")


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "field": field}}, status_code=status,
                        headers=headers)


def field_name(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """("body", "vectors", 3, 7) -> "vectors[3][7]"; ("query", "wait") -> "wait"."""
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or (str(loc[0]) if loc else None)


async def _vecq_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, VecqError)
    retry = {"Retry-After": "1"}  # 429 and 503 are both "come back shortly"
    headers = {429: retry, 503: retry, 401: {"WWW-Authenticate": "Bearer"}}.get(exc.status)
    return error_response(exc.status, exc.code, exc.message, exc.field, headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid request"}
    loc = tuple(first.get("loc", ()))
    message = str(first.get("msg", "invalid"))
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error")
        return error_response(422, "invalid_json", f"body is not valid JSON: {detail}", "body")
    if first.get("type") == "missing" and loc == ("body",):
        return error_response(422, "invalid", "a JSON body is required", "body")
    return error_response(422, "invalid", message, field_name(loc))


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
            413: "too_large", 415: "unsupported_media_type"}.get(exc.status_code, "http_error")
    field = {413: "body", 415: "content-type"}.get(exc.status_code)  # the request part at fault
    return error_response(exc.status_code, code, str(exc.detail), field, getattr(exc, "headers", None))


async def _redis_down(_: Request, exc: Exception) -> JSONResponse:
    log.warning("redis unavailable: %s", exc)
    return error_response(503, "unavailable", "Redis is unavailable; retry shortly", None, {"Retry-After": "1"})


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal", "internal error", None)


def install(app: FastAPI) -> None:
    app.add_exception_handler(VecqError, _vecq_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(redis.exceptions.ConnectionError, _redis_down)
    app.add_exception_handler(redis.exceptions.TimeoutError, _redis_down)
    app.add_exception_handler(kombu.exceptions.OperationalError, _redis_down)
    app.add_exception_handler(Exception, _unexpected)
