"""`GET /console`: a page for people — collections, workers, queue depth, recent jobs, a search playground and
bulk ingest progress.

Three static files from the package (api/console/), served as they are: no build step, nothing from a CDN. The
page itself is open, like /docs; every figure on it comes from ordinary `/v1` calls that the browser makes with
the key its user typed (kept in the tab's sessionStorage), so it shows exactly what a client with that key sees.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from common.errors import NotFound

CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"
ASSETS = {"console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8"}
# The browser may load and call nothing but this API: no CDN, no inline script, no framing by another site.
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
          "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": POLICY, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-cache"}

router = APIRouter(tags=["console"], include_in_schema=False)


@router.get("/console")
async def console_page() -> FileResponse:
    return FileResponse(CONSOLE_DIR / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/console/{asset}")
async def console_asset(asset: str) -> FileResponse:
    if asset not in ASSETS:
        raise NotFound("no such console file", "asset")
    return FileResponse(CONSOLE_DIR / asset, media_type=ASSETS[asset], headers=HEADERS)
