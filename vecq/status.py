"""`vecq status`: collections, live workers and the queue, as tables, read over HTTP from a running API.

The tables fit the terminal: each column has a priority, and on a narrow terminal the least important columns
are left out (the caption names them) instead of squeezing every column to a few letters.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console, JustifyMethod
from rich.table import Table

from vecq.client import Client

CELL_PADDING = 3  # a column's share of the borders and padding rich draws around it


def fetch(client: Client) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    collections = [c.model_dump() for c in client.list_collections()]
    return collections, client.workers()


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


@dataclass(frozen=True)
class Column:
    header: str
    priority: int  # 0 is shown first and dropped last
    justify: JustifyMethod = "left"
    wraps: bool = False  # a long free-text column: wraps within min_width instead of widening the table
    min_width: int = 0


def fit(title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int) -> Table:
    """A table of the columns that fit `width`, most important first, in their given order; the caption names
    what was left out. A column shown is as wide as its header and its widest cell, except a wrapping column,
    which gets at least its min_width and then what room is left (its width is set here, not left to rich,
    whose shrinking would otherwise crop the no-wrap columns at the terminal's edge)."""

    def natural(i: int) -> int:
        return max([len(columns[i].header), *(len(row[i]) for row in rows)])

    def least(i: int) -> int:
        column = columns[i]
        return min(natural(i), max(len(column.header), column.min_width)) if column.wraps else natural(i)

    by_priority = sorted(range(len(columns)), key=lambda i: columns[i].priority)
    widths: dict[int, int] = {}
    room = width - 1  # the table's left border
    for i in by_priority:
        if not widths or least(i) + CELL_PADDING <= room:  # the first column is always there
            widths[i] = least(i)
            room -= least(i) + CELL_PADDING
    for i in by_priority:  # what room is left widens the wrapping columns, most important first
        if i in widths and columns[i].wraps:
            grown = min(natural(i), widths[i] + max(0, room))
            room -= grown - widths[i]
            widths[i] = grown
    hidden = [c.header for i, c in enumerate(columns) if i not in widths]
    table = Table(title=title, title_justify="left", caption_justify="left",
                  caption=f"(not shown at {width} columns: {', '.join(hidden)})" if hidden else None)
    for i, column in enumerate(columns):
        if i in widths:
            table.add_column(column.header, justify=column.justify, no_wrap=not column.wraps,
                             overflow="fold" if column.wraps else "ellipsis",
                             width=widths[i] if column.wraps else None)
    for row in rows:
        table.add_row(*(cell for i, cell in enumerate(row) if i in widths))
    return table


COLLECTION_COLUMNS = (
    Column("name", 0), Column("dim", 2, "right"), Column("metric", 4), Column("index", 3),
    Column("vectors", 1, "right"), Column("sealed / growing", 8), Column("segments", 10, "right"),
    Column("last LSN", 7), Column("copies", 5, "right"), Column("max lag", 6), Column("index size", 9),
)
WORKER_COLUMNS = (
    Column("worker", 0), Column("host", 6), Column("pid", 5, "right"), Column("uptime", 2),
    Column("jobs", 1, "right"), Column("last job", 4, wraps=True, min_width=16),
    Column("collections (vectors, lag)", 3, wraps=True, min_width=26),
)
QUEUE_COLUMNS = (Column("queue", 0), Column("waiting", 1, "right"))


def tables(collections: list[dict[str, Any]], info: dict[str, Any], width: int = 200) -> list[Table]:
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

    collection_rows = [
        [c["name"], str(c["dim"]), c["metric"], c["index"], f"{c['count']:,}",
         f"{c.get('sealed_rows', 0):,} / {c.get('growing_rows', 0):,}", str(len(c.get("segments") or [])),
         c["lsn"], str(held.get(c["name"], 0)),
         lag_text(lag.get(c["name"]), c["name"] not in behind) if c["name"] in held else "-",
         human_bytes(size.get(c["name"]))]
        for c in collections]

    now = time.time()
    worker_rows = []
    for w in workers:
        last = w.get("last_job") or {}
        last_text = "-"
        if last:
            ago = human_seconds(now - last["at"]) if last.get("at") else "?"
            last_text = f"{last.get('type')} {last.get('status')} {last.get('duration_ms', 0):.0f}ms, {ago} ago"
        copies = ", ".join(f"{c['name']} ({c.get('count', 0):,}, lag {lag_text(c.get('lag_s'), c.get('caught_up'))})"
                           for c in w.get("collections", [])) or "-"
        worker_rows.append([str(w.get("worker")), str(w.get("host")), str(w.get("pid")),
                            human_seconds(w.get("uptime_s")), str(w.get("jobs_done", 0)), last_text, copies])

    queue_rows = [[queue, str(depth)] for queue, depth in sorted((info.get("queues") or {}).items())]
    queue_rows.append(["(delivered, not acked)", str(info.get("unacked", 0))])
    return [fit(f"Collections ({len(collections)})", COLLECTION_COLUMNS, collection_rows, width),
            fit(f"Workers ({len(workers)} live)", WORKER_COLUMNS, worker_rows, width),
            fit("Queues", QUEUE_COLUMNS, queue_rows, width)]


def show(client: Client, console: Console | None = None) -> None:
    """Print the tables, as wide as `console` (the terminal's width by default). Errors are the caller's."""
    console = console or Console()
    collections, info = fetch(client)
    for table in tables(collections, info, console.width):
        console.print(table)
