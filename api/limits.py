"""Request admission before any route runs: body size (413) and content type (415), answered as JSON errors.

JSON bodies take at most `max_body_bytes`; a binary upload (POST /v1/collections/{name}/vectors with an
.npy or Parquet content type) takes at most `max_upload_bytes`. A declared Content-Length over the limit
is refused at once, without reading a byte; a body without one (chunked) is counted as it streams in and
refused as soon as it passes the limit, so no route ever buffers more than the limit.
"""

from __future__ import annotations

import re

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response
from common.errors import TooLarge, UnsupportedMediaType

UPLOAD_PATH = re.compile(r"^/v1/collections/[^/]+/vectors/?$")
UPLOAD_TYPES = frozenset({"application/x-npy", "application/vnd.apache.parquet", "application/x-parquet",
                          "application/octet-stream"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json(media: str) -> bool:
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def declared_json_within(headers: Headers, limit: int) -> bool:
    """A JSON body of a declared length within `limit`: one BodyLimits admits without counting it, which a
    layer in front of it (api/fast_search.py) may read whole. The ASGI server delivers exactly that length."""
    declared = headers.get("content-length", "")
    return (declared.isdigit() and int(declared) <= limit and "transfer-encoding" not in headers
            and is_json(media_type(headers.get("content-type"))))


class BodyTooLarge(HTTPException):
    """Raised from `receive` while a route reads the body. FastAPI re-raises an HTTPException met while
    reading, so the app's handler (api/errors.py) answers it as JSON."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class BodyLimits:
    """Pure ASGI middleware: size and content-type limits of request bodies."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        media = media_type(headers.get("content-type"))
        method, path = scope["method"], scope["path"]
        upload = method == "POST" and media in UPLOAD_TYPES and UPLOAD_PATH.match(path) is not None
        limit = self.max_upload_bytes if upload else self.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await error_response(TooLarge(f"request body of {int(declared)} bytes is larger than {limit}",
                                          "body"))(scope, receive, send)
            return
        has_body = (declared is not None and declared.strip() not in ("", "0")) or \
            "chunked" in headers.get("transfer-encoding", "").lower()
        if has_body and method in BODY_METHODS and path.startswith("/v1/") and not upload and not is_json(media):
            allowed = "application/json" + (", application/x-npy or application/vnd.apache.parquet"
                                            if UPLOAD_PATH.match(path) else "")
            await error_response(UnsupportedMediaType(f"Content-Type must be {allowed}, got {media or 'none'}",
                                                      "content-type"))(scope, receive, send)
            return

        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as exc:  # read outside the routes' error handling: answer here unless too late
            if started:
                raise
            await error_response(TooLarge(str(exc.detail), "body"))(scope, receive, send)
