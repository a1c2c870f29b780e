"""`vecq status`: collections, live workers and the queue, as tables, read over HTTP from a running API."""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

DEFAULT_URL = "http://127.0.0.1:8000"


def fetch(url: str, api_key: str | None, timeout: float = 10.0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=url, headers=headers, timeout=timeout) as client:
        cols = client.get("/v1/collections")
        cols.raise_for_status()
        workers = client.get("/v1/workers")
        workers.raise_for_status()
    return cols.json()["collections"], workers.json()


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.1f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.1f}h"


def lag_text(lag_s: float | None, caught_up: bool | None) -> str:
    """A caught-up copy shows 0; a copy behind by less than the display precision still shows it is behind."""
    if caught_up:
        return "0"
    if lag_s is None:
        return "-"
    return "<0.1s" if lag_s < 0.1 else human_seconds(lag_s)


def tables(collections: list[dict[str, Any]], info: dict[str, Any]) -> list[Table]:
    workers: list[dict[str, Any]] = info.get("workers", [])
    held: dict[str, int] = {}
    size: dict[str, int] = {}
    lag: dict[str, float] = {}
    behind: set[str] = set()
    for w in workers:
        for c in w.get("collections", []):
            held[c["name"]] = held.get(c["name"], 0) + 1
            lag[c["name"]] = max(lag.get(c["name"], 0.0), c.get("lag_s") or 0.0)
            if not c.get("caught_up"):
                behind.add(c["name"])
            if c.get("index_bytes") is not None:
                size[c["name"]] = max(size.get(c["name"], 0), c["index_bytes"])

    ct = Table(title=f"Collections ({len(collections)})", title_justify="left")
    for header in ("name", "dim", "metric", "index", "vectors", "sealed / growing", "segments", "last LSN", "copies",
                   "max lag", "index size"):
        ct.add_column(header, no_wrap=header in ("name", "last LSN"),
                      justify="right" if header in ("dim", "vectors", "copies") else "left")
    for c in collections:
        name = c["name"]
        ct.add_row(name, str(c["dim"]), c["metric"], c["index"], f"{c['count']:,}",
                   f"{c.get('sealed_rows', 0):,} / {c.get('growing_rows', 0):,}", str(len(c.get("segments") or [])),
                   c["lsn"], str(held.get(name, 0)),
                   lag_text(lag.get(name), name not in behind) if name in held else "-", human_bytes(size.get(name)))

    wt = Table(title=f"Workers ({len(workers)} live)", title_justify="left")
    for header in ("worker", "host", "pid", "uptime", "jobs", "last job", "collections (vectors, lag)"):
        wt.add_column(header, no_wrap=header in ("worker", "host"), justify="right" if header in ("pid", "jobs")
                      else "left")
    now = time.time()
    for w in workers:
        last = w.get("last_job") or {}
        last_text = "-"
        if last:
            ago = human_seconds(now - last["at"]) if last.get("at") else "?"
            last_text = f"{last.get('type')} {last.get('status')} {last.get('duration_ms', 0):.0f}ms, {ago} ago"
        copies = ", ".join(f"{c['name']} ({c.get('count', 0):,}, lag {lag_text(c.get('lag_s'), c.get('caught_up'))})"
                           for c in w.get("collections", [])) or "-"
        wt.add_row(str(w.get("worker")), str(w.get("host")), str(w.get("pid")), human_seconds(w.get("uptime_s")),
                   str(w.get("jobs_done", 0)), last_text, copies)

    qt = Table(title="Queues", title_justify="left")
    qt.add_column("queue", no_wrap=True)
    qt.add_column("waiting", justify="right")
    for queue, depth in sorted((info.get("queues") or {}).items()):
        qt.add_row(queue, str(depth))
    qt.add_row("(delivered, not acked)", str(info.get("unacked", 0)))
    return [ct, wt, qt]


def show(url: str | None = None, api_key: str | None = None, console: Console | None = None) -> int:
    url = url or os.environ.get("VECQ_URL") or DEFAULT_URL
    api_key = api_key if api_key is not None else os.environ.get("VECQ_API_KEY")
    console = console or Console()
    try:
        collections, info = fetch(url, api_key)
    except httpx.HTTPStatusError as exc:
        console.print(f"[red]vecq status: {url} answered {exc.response.status_code}: {exc.response.text[:200]}")
        return 1
    except httpx.HTTPError as exc:
        console.print(f"[red]vecq status: cannot reach {url}: {exc}")
        return 1
    for table in tables(collections, info):
        console.print(table)
    return 0
