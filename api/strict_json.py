"""Strict JSON request bodies: NaN/Infinity tokens, duplicate keys and runaway nesting are 422, not data."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


def _no_constants(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def loads(body: bytes | str) -> Any:
    try:
        return json.loads(body, parse_constant=_no_constants, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError:
        raise
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        message = "nesting too deep" if isinstance(exc, RecursionError) else str(exc)
        raise json.JSONDecodeError(message, text[:64], 0) from None


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler
