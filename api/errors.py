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

from common import errors
from common.errors import VecqError

log = logging.getLogger("vecq.api")

# What each status tells the client beyond the body: 429 and 503 are both "come back shortly".
_HEADERS: dict[int, dict[str, str]] = {
    errors.TooManyRequests.status: {"Retry-After": "1"},
    errors.Unavailable.status: {"Retry-After": "1"},
    errors.Unauthorized.status: {"WWW-Authenticate": "Bearer"},
}
# Starlette's own HTTPExceptions (routing, 405) carry only a status.
_BY_STATUS: dict[int, type[VecqError]] = {cls.status: cls for cls in (
    errors.Unauthorized, errors.Forbidden, errors.NotFound, errors.MethodNotAllowed, errors.TooLarge,
    errors.UnsupportedMediaType)}


def error_response(exc: VecqError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": exc.to_dict()}, status_code=exc.status,
                        headers={**_HEADERS.get(exc.status, {}), **(headers or {})} or None)


def field_name(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """("body", "vectors", 3, 7) -> "vectors[3][7]"; ("query", "wait") -> "wait"."""
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or (str(loc[0]) if loc else None)


async def _vecq_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, VecqError)
    return error_response(exc)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first: dict[str, Any] = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid request"}
    loc = tuple(first.get("loc", ()))
    message = str(first.get("msg", "invalid"))
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error")
        return error_response(errors.InvalidJSON(f"body is not valid JSON: {detail}", "body"))
    if first.get("type") == "missing" and loc == ("body",):
        return error_response(errors.InvalidInput("a JSON body is required", "body"))
    return error_response(errors.InvalidInput(message, field_name(loc)))


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    field = {413: "body", 415: "content-type"}.get(exc.status_code)  # the request part at fault
    cls = _BY_STATUS.get(exc.status_code)
    if cls is None:  # a status vecq has no class for: answer it as Starlette meant, in vecq's shape
        return JSONResponse({"error": {"code": "http_error", "message": str(exc.detail), "field": field}},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))
    return error_response(cls(str(exc.detail), field), getattr(exc, "headers", None))


REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, kombu.exceptions.OperationalError)


def redis_down() -> JSONResponse:
    return error_response(errors.Unavailable("Redis is unavailable; retry shortly"))


def handled(exc: Exception) -> JSONResponse | None:
    """The answer the app's handlers give `exc` (a VecqError, Redis down), for code that runs outside them (a
    pure ASGI middleware: api/fast_search.py); None for anything else, left to the app's last resort."""
    if isinstance(exc, VecqError):
        return error_response(exc)
    if isinstance(exc, REDIS_DOWN):
        log.warning("redis unavailable: %s", exc)
        return redis_down()
    return None


async def _redis_down(_: Request, exc: Exception) -> JSONResponse:
    log.warning("redis unavailable: %s", exc)
    return redis_down()


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    return unexpected(exc)


def unexpected(exc: Exception) -> JSONResponse:
    """The last resort's answer: a 500 in vecq's shape, the exception in the log."""
    log.exception("unhandled error", exc_info=exc)
    return error_response(VecqError("internal error"))


def install(app: FastAPI) -> None:
    app.add_exception_handler(VecqError, _vecq_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for down in REDIS_DOWN:
        app.add_exception_handler(down, _redis_down)
    app.add_exception_handler(Exception, _unexpected)
