"""API keys: `Authorization: Bearer <key>` or `X-API-Key`. Open when no key is configured.

A key spec is `key` (every collection, read and write) or `key:glob:rw|ro`, e.g. `s3cret:team-a-*:ro`.
Keys come from VECQ_API_KEYS (comma-separated) and/or VECQ_API_KEYS_FILE (one spec per line, `#` comments),
parsed by the settings (common/key_specs.py).
Only SHA-256 digests of the keys are kept in memory and compared, each in constant time; no key is ever
logged or echoed in an error. Job records remember the scope (a digest of the key) that submitted them.

Every `/v1` request is checked by `KeyCheck`, a pure ASGI middleware, before anything reads its body: an
anonymous client cannot make the API parse or buffer a byte. A search the fast path answers in front of the
middlewares (api/fast_search.py) is checked by the same `identify` first; one it refuses goes to KeyCheck.
Routes then ask the `Principal` whether it may use a collection (glob) and write (rw) with `Principal.require`.
"""

from __future__ import annotations

import fnmatch
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_response
from common import key_specs
from common.errors import Forbidden, Unauthorized
from common.key_specs import KeySpec
from common.key_specs import scope_of_key as scope_of_key  # job scopes, for tests and tools
from common.settings import Settings

PRINCIPAL_SCOPE_KEY = "vecq.principal"  # where the key check leaves the authenticated principal in the ASGI scope
PROTECTED_PREFIX = "/v1"


@dataclass(frozen=True)
class Principal:
    scope: str  # "" when the API is open
    pattern: str = "*"
    can_write: bool = True

    def allows(self, collection: str) -> bool:
        return fnmatch.fnmatchcase(collection, self.pattern)

    def require(self, collection: str | None, *, write: bool) -> None:
        if collection is not None and not self.allows(collection):
            raise Forbidden(f"this key may not use collection {collection!r}", "name")
        if write and not self.can_write:
            raise Forbidden("this key is read-only", None)

    def may_read_job(self, job_scope: str, collection: str | None) -> bool:
        if not self.scope:
            return True
        return hmac.compare_digest(job_scope, self.scope) or (
            not job_scope and collection is not None and self.allows(collection))


OPEN = Principal(scope="")


class KeyRing:
    """The configured keys as digests. Comparing fixed-length digests leaks neither a key's bytes nor its
    length through timing, and every entry is compared (no early exit), so the position of a match leaks
    nothing either."""

    def __init__(self, entries: list[tuple[bytes, Principal]]) -> None:
        self._entries = entries

    @classmethod
    def of(cls, specs: Iterable[KeySpec]) -> KeyRing:
        return cls([(k.digest, Principal(scope=k.scope, pattern=k.pattern, can_write=k.can_write)) for k in specs])

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"KeyRing({len(self._entries)} keys)"

    def lookup(self, key: str) -> Principal | None:
        presented = key_specs.digest(key)
        found: Principal | None = None
        for known, principal in self._entries:
            if hmac.compare_digest(known, presented):
                found = principal
        return found


def parse_specs(text: str) -> KeyRing:
    """`key` or `key:glob:rw|ro` per comma or line (common/key_specs.py). Errors name the spec's position."""
    return KeyRing.of(key_specs.parse(text))


def load_keys(settings: Settings) -> KeyRing:
    return KeyRing.of(settings.api_keys)  # parsed, the file's keys included, when the settings were built


def presented_key(headers: Headers) -> str | None:
    header = headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return headers.get("x-api-key") or None


def identify(headers: Headers, keys: KeyRing) -> Principal:
    """The principal of a request, or Unauthorized (401)."""
    if not len(keys):
        return OPEN
    key = presented_key(headers)
    if key is None:
        raise Unauthorized("an API key is required (Authorization: Bearer <key> or X-API-Key)", None)
    principal = keys.lookup(key)
    if principal is None:
        raise Unauthorized("unknown API key", None)
    return principal


class KeyCheck:
    """Pure ASGI middleware: every /v1 request carries a known key, checked before its body is read."""

    def __init__(self, app: ASGIApp, keys: KeyRing) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and (path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")):
            try:
                scope[PRINCIPAL_SCOPE_KEY] = identify(Headers(scope=scope), self.keys)
            except Unauthorized as exc:
                response = error_response(exc)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# Declared for the OpenAPI schema (clients and schemathesis see the two ways to send a key); KeyCheck and
# `authenticate` do the checking, so these never refuse a request themselves.
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <key>")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="The key in an X-API-Key header")


async def authenticate(request: Request, _b: Annotated[object, Depends(_bearer)],
                       _k: Annotated[object, Depends(_api_key)]) -> Principal:
    """FastAPI dependency of every /v1 route: the principal KeyCheck found (or found again here)."""
    principal = request.scope.get(PRINCIPAL_SCOPE_KEY)
    if isinstance(principal, Principal):
        return principal
    return identify(request.headers, request.app.state.api_keys)
