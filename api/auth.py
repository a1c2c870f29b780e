"""API keys: `Authorization: Bearer <key>` or `X-API-Key`. Open when no key is configured.

A key spec is `key` (every collection, read and write) or `key:glob:rw|ro`, e.g. `s3cret:team-a-*:ro`.
Keys come from VECQ_API_KEYS (comma-separated) and/or VECQ_API_KEYS_FILE (one spec per line) and are
never logged; job records remember the scope (a digest of the key) that submitted them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from common.errors import Forbidden, InvalidInput, Unauthorized
from common.settings import Settings


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


def parse_specs(text: str) -> list[tuple[str, Principal]]:
    out: list[tuple[str, Principal]] = []
    for raw in text.replace("\n", ",").split(","):
        spec = raw.strip()
        if not spec or spec.startswith("#"):
            continue
        key, _, rest = spec.partition(":")
        pattern, _, mode = rest.partition(":")
        if mode not in ("", "rw", "ro"):
            raise InvalidInput(f"key mode must be rw or ro, got {mode!r}", "api_keys")
        scope = "key-" + hashlib.sha256(key.encode()).hexdigest()[:16]
        out.append((key, Principal(scope=scope, pattern=pattern or "*", can_write=mode != "ro")))
    return out


def load_keys(settings: Settings) -> list[tuple[str, Principal]]:
    text = settings.api_keys
    if settings.api_keys_file is not None:
        text += "\n" + Path(settings.api_keys_file).read_text()
    return parse_specs(text)


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.headers.get("x-api-key")


def authenticate(request: Request) -> Principal:
    """FastAPI dependency for every /v1 route."""
    known: list[tuple[str, Principal]] = request.app.state.api_keys
    if not known:
        return OPEN
    key = presented_key(request)
    if not key:
        raise Unauthorized("an API key is required (Authorization: Bearer <key> or X-API-Key)", None)
    found = OPEN
    for candidate, principal in known:  # compare with every key, in constant time each
        if hmac.compare_digest(candidate.encode(), key.encode()):
            found = principal
    if found is OPEN:
        raise Unauthorized("unknown API key", None)
    return found
