"""The search route's fast path: a pure ASGI middleware that answers a well-formed search without FastAPI's
per-request work. Owns no Redis keys.

Profiled at c=64, FastAPI's dependency solving (seven dependencies on the search route, the security schemes
included) and its routing cost the API more CPU per search than everything vecq does for it. This middleware runs
inside KeyCheck and BodyLimits (the key is checked and the body limited as for any route), reads the body, and
answers with the route's own code (api/routes/search.py `answer`) when the request is one it understands fully:
`POST /v1/collections/{name}/search` with a valid name, no query string but `wait=<seconds>` in range, and a JSON
body that the strict parser and `SearchRequest` accept. Anything else (a 422 to explain, an odd query) is handed,
its body replayed, to the FastAPI route, which answers exactly as it always has: the fast path changes no answer,
only what a valid one costs. The route stays where the OpenAPI schema comes from.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson
import pydantic
from fastapi.routing import APIRoute
from starlette.datastructures import State
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import errors
from api.auth import PRINCIPAL_SCOPE_KEY, Principal
from api.dispatch import Pending, RawResult
from api.limits import is_json, media_type
from api.metrics import HANDLER_SCOPE_KEY
from api.routes.search import answer, router
from api.strict_json import loads
from common import keys
from common.schemas import SearchRequest, SearchResponse

SEARCH_PATH = re.compile(r"^/v1/collections/([^/]+)/search$")
SEARCH_TEMPLATE: str = next(r.path for r in router.routes  # its metrics label
                            if isinstance(r, APIRoute) and r.name == "search")
WAIT_QUERY = re.compile(rb"^wait=(\d{1,6}(?:\.\d{1,9})?)$")  # plain decimals only: anything else goes the long way


class FastSearch:
    """Pure ASGI middleware: valid searches answered by the route's code, everything else passed on untouched."""

    def __init__(self, app: ASGIApp, state: State, wait_max_s: float) -> None:
        self.app = app
        self.state = state  # the FastAPI app's state: its searcher, catalog and settings, set by its lifespan
        self.wait_max_s = wait_max_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        match = SEARCH_PATH.match(scope["path"])
        wait = self._wait(scope["query_string"]) if match else None
        principal = scope.get(PRINCIPAL_SCOPE_KEY)
        if (match is None or wait is False or not isinstance(principal, Principal)
                or not keys.COLLECTION_NAME.fullmatch(match.group(1)) or not _json_body(scope)):
            await self.app(scope, receive, send)
            return
        scope[HANDLER_SCOPE_KEY] = SEARCH_TEMPLATE  # counted as the route's requests (a fallback: the route)
        body, messages = await _read(receive)
        request = _parse(body) if body is not None else None
        if request is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        response: Response
        try:
            outcome = await answer(match.group(1), request, self.state.catalog, self.state.searcher, principal,
                                   self.state.settings, wait if isinstance(wait, float) else None)
        except Exception as exc:
            handled = errors.handled(exc)
            if handled is None:
                raise  # the app's last resort answers it (a 500 in vecq's shape)
            response = handled
        else:
            response = _response(outcome)
        await response(scope, receive, send)

    def _wait(self, query: bytes) -> float | bool | None:
        """The `wait` query value; None if absent; False if the query is anything the route should judge."""
        if not query:
            return None
        m = WAIT_QUERY.match(query)
        if m is None:
            return False
        wait = float(m.group(1))
        return wait if math.isfinite(wait) and 0 <= wait <= self.wait_max_s else False


def _json_body(scope: Scope) -> bool:
    content_type = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
    return is_json(media_type(content_type.decode("latin-1")))


async def _read(receive: Receive) -> tuple[bytes | None, list[Message]]:
    """The whole body (None if the client went away first), and the messages it came in, to replay."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return None, messages
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), messages


def _parse(body: bytes) -> SearchRequest | None:
    """The request if the route would accept it as is; None if it has something to say about it."""
    try:
        return SearchRequest.model_validate(_loads(body))
    except (json.JSONDecodeError, pydantic.ValidationError):
        return None


KEY_END = re.compile(rb'"\s*:')  # where a key ends; also an escaped quote before a colon in a string, so never fewer


def _loads(body: bytes) -> Any:
    """api/strict_json.py's `loads`, a few times faster for a search body: orjson refuses NaN and Infinity as the
    strict parser does, but keeps the last of duplicate keys. So its result stands only if it has as many keys as
    the body has key ends (a duplicate would leave fewer); anything else is judged by the strict parser."""
    try:
        value = orjson.loads(body)
        same = _keys(value) == len(KEY_END.findall(body))
    except (orjson.JSONDecodeError, RecursionError):  # deeper than Python recurses: the strict parser says so
        same = False
    return value if same else loads(body)


SCALARS = frozenset({float, int, str, bool, type(None)})


def _keys(value: Any) -> int:
    if isinstance(value, dict):
        return len(value) + sum(_keys(v) for v in value.values() if isinstance(v, dict | list))
    if isinstance(value, list):
        if SCALARS.issuperset(map(type, value)):  # a vector: its elements' types are checked in C, not one by one
            return 0
        return sum(_keys(v) for v in value if isinstance(v, dict | list))
    return 0


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def again() -> Message:
        return pending.pop(0) if pending else await receive()

    return again


def _response(outcome: dict[str, Any] | Pending | RawResult) -> Response:
    if isinstance(outcome, Pending | RawResult):
        return outcome.response()
    # as the route's response_model does: validated, unset fields left out
    return JSONResponse(SearchResponse.model_validate(outcome).model_dump(mode="json", exclude_unset=True))
