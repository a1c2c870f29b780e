"""The search route's fast path: a pure ASGI layer in front of the whole app that answers a well-formed search
without the per-request work of FastAPI and of vecq's own middlewares. Owns no Redis keys.

Profiled at c=64, FastAPI's dependency solving and routing, then its middleware layers and vecq's (each with a
send wrapper), cost the API more CPU per search than everything vecq does for it. This layer answers with the
route's own code (api/routes/search.py `answer`), through the same admission the middlewares apply, when the
request is one it understands fully: `POST /v1/collections/{name}/search` with a valid name, no query string but
`wait=<seconds>` in range, a JSON body of a declared length within VECQ_MAX_BODY_BYTES, a key `identify`
(api/auth.py) accepts (checked before a byte of the body is read), and a body that the strict parser and
`SearchRequest` accept; it counts the request in the same HTTP series (api/metrics.py HttpSeries). Anything else
(no key or a wrong one, a 422 to explain, an odd query, a chunked body) is handed, its body replayed, to the app,
whose middlewares and route answer exactly as they always have: the fast path changes no answer, only what a
valid one costs. The route stays where the OpenAPI schema comes from.
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any

import orjson
import pydantic
from fastapi.routing import APIRoute
from starlette.datastructures import Headers, State
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import errors
from api.auth import PRINCIPAL_SCOPE_KEY, KeyRing, identify
from api.dispatch import Pending, RawResult
from api.limits import declared_json_within
from api.metrics import HANDLER_SCOPE_KEY, HttpSeries
from api.routes.search import answer, router
from api.strict_json import loads
from common import keys
from common.errors import Unauthorized
from common.schemas import SearchRequest, SearchResponse

SEARCH_PATH = re.compile(r"^/v1/collections/([^/]+)/search$")
SEARCH_TEMPLATE: str = next(r.path for r in router.routes  # its metrics label
                            if isinstance(r, APIRoute) and r.name == "search")
WAIT_QUERY = re.compile(rb"^wait=(\d{1,6}(?:\.\d{1,9})?)$")  # plain decimals only: anything else goes the long way


class FastSearch:
    """Pure ASGI layer in front of the app: valid searches answered by the route's code, everything else passed
    on untouched."""

    def __init__(self, app: ASGIApp, state: State, keys: KeyRing, series: HttpSeries, max_body_bytes: int,
                 wait_max_s: float) -> None:
        self.app = app
        self.state = state  # the FastAPI app's state: its searcher, catalog and settings, set by its lifespan
        self.keys = keys
        self.series = series
        self.max_body_bytes = max_body_bytes
        self.wait_max_s = wait_max_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        match = SEARCH_PATH.match(scope["path"])
        wait = self._wait(scope["query_string"]) if match else None
        if match is None or wait is False or not keys.COLLECTION_NAME.fullmatch(match.group(1)):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            principal = identify(headers, self.keys)
        except Unauthorized:  # the app's key check answers it
            await self.app(scope, receive, send)
            return
        if not declared_json_within(headers, self.max_body_bytes):  # BodyLimits judges anything else
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        scope[PRINCIPAL_SCOPE_KEY] = principal
        scope[HANDLER_SCOPE_KEY] = SEARCH_TEMPLATE  # counted as the route's requests (a fallback: the route)
        body, messages = await _read(receive)
        request = _parse(body) if body is not None else None
        if request is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        status = 500  # unless a response starts
        try:
            try:
                outcome = await answer(match.group(1), request, self.state.catalog, self.state.searcher,
                                       principal, self.state.settings, wait if isinstance(wait, float) else None)
            except Exception as exc:
                response: Response = errors.handled(exc) or errors.unexpected(exc)
            else:
                response = _response(outcome)
            status = response.status_code
            await response(scope, receive, send)
        finally:
            self.series.observe(SEARCH_TEMPLATE, "POST", status, time.perf_counter() - started)

    def _wait(self, query: bytes) -> float | bool | None:
        """The `wait` query value; None if absent; False if the query is anything the route should judge."""
        if not query:
            return None
        m = WAIT_QUERY.match(query)
        if m is None:
            return False
        wait = float(m.group(1))
        return wait if math.isfinite(wait) and 0 <= wait <= self.wait_max_s else False


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
