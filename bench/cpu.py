"""CPU accounting from /proc while a load level runs: how much CPU each part of the system spent per request,
and how much the rest of the machine took meanwhile. On a small shared machine throughput moves with whatever
else runs; CPU per request does not, and the share taken by other processes says how far to trust a level.

Linux only; elsewhere every reading is None and the benchmark runs without it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def tree(pid: int) -> list[int]:
    """A process and all its descendants (a Celery worker and its pool child, uvicorn and its workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            pass
    return sorted(set(out))


def process_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_seconds() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot, summed over CPUs."""
    try:
        values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except OSError:
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / TICK, sum(values[:8]) / TICK


class Meter:
    """Start before a level, `stop(requests, extra)` after: CPU ms per request by group, and the machine's
    busy cores split into ours and everyone else's."""

    def __init__(self, groups: Mapping[str, list[int]]) -> None:
        self.pids = {name: list(pids) for name, pids in groups.items()}
        self.before: dict[str, float] = {}
        self.machine: tuple[float, float] | None = None
        self.started = 0.0

    def start(self) -> Meter:
        self.before = {name: sum(process_seconds(p) for p in pids) for name, pids in self.pids.items()}
        self.machine = machine_seconds()
        self.started = time.perf_counter()
        return self

    def stop(self, requests: int, extra_seconds: Mapping[str, float] | None = None) -> dict[str, Any] | None:
        wall = time.perf_counter() - self.started
        machine = machine_seconds()
        if self.machine is None or machine is None or wall <= 0:
            return None
        spent = {name: sum(process_seconds(p) for p in pids) - self.before[name] for name, pids in self.pids.items()}
        spent.update(extra_seconds or {})
        busy = machine[0] - self.machine[0]
        ours = sum(spent.values())
        per_request = {f"{name}_ms": round(1000 * s / requests, 3) if requests else None for name, s in spent.items()}
        return {"per_request": per_request, "cores": {name: round(s / wall, 2) for name, s in spent.items()},
                "machine_busy_cores": round(busy / wall, 2), "others_cores": round(max(0.0, busy - ours) / wall, 2),
                "cpus": os.cpu_count()}
