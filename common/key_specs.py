"""API key specs, as configured (VECQ_API_KEYS, VECQ_API_KEYS_FILE): parsed once, by the settings model.

A spec is `key` (every collection, read and write) or `key:glob:rw|ro`, e.g. `s3cret:team-a-*:ro`, one per comma
or line, `#` starting a comment line. Only the key's SHA-256 digest is kept (api/auth.py compares digests), and no
error names a key: only its spec's position.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from common.errors import InvalidInput

# Printable ASCII without the spec separators (`,` `:`), whitespace or `#`: a key survives any header or file.
KEY_CHARS = re.compile(r"^[!-~]+$")
KEY_FORBIDDEN = set(",:#")


@dataclass(frozen=True)
class KeySpec:
    digest: bytes = field(repr=False)
    scope: str  # what job records remember of the key that submitted them
    pattern: str = "*"
    can_write: bool = True


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def scope_of_key(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def parse(text: str, known: Iterable[KeySpec] = (), where: str = "") -> tuple[KeySpec, ...]:
    """`key` or `key:glob:rw|ro` per comma or line; a key also in `known` is refused as configured twice."""
    out: list[KeySpec] = []
    seen = {k.digest for k in known}
    specs = [s.strip() for s in text.replace("\n", ",").split(",")]
    for n, spec in enumerate((s for s in specs if s and not s.startswith("#")), start=1):
        key, _, rest = spec.partition(":")
        pattern, _, mode = rest.partition(":")
        if not KEY_CHARS.fullmatch(key) or KEY_FORBIDDEN & set(key):
            raise InvalidInput(f"API key spec #{n}{where}: a key is printable ASCII without spaces, ',', ':' or '#'",
                               "api_keys")
        if mode not in ("", "rw", "ro") or ":" in mode:
            raise InvalidInput(f"API key spec #{n}{where}: mode must be rw or ro", "api_keys")
        d = digest(key)
        if d in seen:
            raise InvalidInput(f"API key spec #{n}{where}: the same key is configured twice", "api_keys")
        seen.add(d)
        out.append(KeySpec(digest=d, scope=scope_of_key(key), pattern=pattern or "*", can_write=mode != "ro"))
    return tuple(out)
