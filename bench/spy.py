"""Where a lone search's CPU goes inside the API and the worker processes: py-spy samples, sorted into stages by the
functions on the stack.

py-spy samples a process from outside (`--nonblocking`: it never pauses it) and records only threads that are
running, not waiting, so samples / rate is about the CPU time (see the caveat below). `Recording` runs one `py-spy
record` for a bounded time and stops it with SIGINT (py-spy then writes what it has); `--subprocesses` follows a
Celery worker's pool child. A raw file has one line per distinct stack, `frame;frame;... count`, root first; a
followed child's stacks start with `process PID:"cmdline"` frames.

`attribute` gives each stack to the category of its innermost frame that is a marker of one (the rules below): the
Celery publish inside the coalescer's task counts as publish, a redis-py read inside the claim as the claim. Caveat:
py-spy counts a thread as running when the OS says it is runnable, so on a busy machine a thread just woken from a
poll but still waiting for a core is counted too (the `waiting` category, when no marker is on its stack); the
section also reads each process's CPU from /proc over the same pass, to compare. It also lists the functions holding
the most samples (self time) and the vecq functions under which the most samples fall (inclusive): the places to
cut.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

Rules = list[tuple[str, tuple[str, ...]]]

# A frame is `function (path/file.py:line)`. Libraries that any stage calls (redis, json, asyncio, numpy) are no
# markers: their samples go to the nearest caller that is one.
WAIT = "waiting in a poll or socket read (runnable, or C code)"
# matched anywhere in the leaf frame: py-spy names methods Class.method
WAIT_LEAVES = ("poll (", "select (", "_read_from_socket (", "_recv (billiard", "Runner.run (asyncio", "wait (")
# Leaves where a process hands work to another (a socket or pipe write, then the read of the answer, a poll): on a
# busy machine the writer is often preempted right there by the process it woke, and the woken one waits for a
# core. Samples parked here are hops, not Python work: their share says what the number of hops costs.
HANDOFF_LEAVES = ("send_packed_command (", "_read_from_socket (", "_send (billiard", "_recv (billiard",
                  "send_offset (billiard", "poll (", "writelines (asyncio")

API_RULES: Rules = [
    ("publish (Celery message, LPUSH)", ("api/publish.py", "celery/", "kombu/", "send (api/dispatch.py")),
    # redis-py's asyncio client writes under asyncio.wait_for, a task of its own on Python 3.11: its stack no longer
    # shows the caller. In a lone search the API's only async write is the publish's LPUSH.
    ("async Redis write (the publish's LPUSH, as a task of its own)", ("_send_packed_command (redis/asyncio",)),
    ("reply + API wake-up (pub/sub listener)", ("api/waiter.py",)),
    ("collection lookup + auth", ("api/catalog.py", "api/auth.py", "api/deps.py", "common/collections.py")),
    ("parse + validate (body JSON, pydantic, dependencies)", ("pydantic", "fastapi/dependencies", "_validate",
                                                              "api/strict_json.py", "common/schemas.py")),
    ("response (body, headers)", ("starlette/responses.py", "fastapi/encoders.py", "serialize_response",
                                  "response (api/dispatch.py")),
    ("route + coalescing (api/routes/search.py, api/searcher.py, codec)", ("api/routes/search.py", "api/searcher.py",
                                                                           "api/batches.py", "common/codec.py",
                                                                           "common/jobs.py")),
    ("HTTP + ASGI (uvicorn, httptools, starlette, middleware)", ("uvicorn/", "httptools", "starlette/", "fastapi/",
                                                                 "api/")),
]

# A Celery worker: its main process (consumer) and its pool child (the job).
WORKER_RULES: Rules = [
    ("heartbeat thread", ("common/heartbeat.py", "worker/lifecycle.py")),
    ("claim", ("claim_delivery", "DeliveryClaim")),
    ("catch-up (registry, WAL)", ("worker/registry.py", "common/wal.py")),
    ("search (FAISS + hits)", ("worker/search.py", "worker/index.py", "worker/segment.py",
                               "worker/collection_copy.py")),
    ("decode query", ("decode_vectors", "common/codec.py")),
    ("finish (encode outcomes, EVALSHA pipeline, PUBLISH)", ("finish_members", "common/jobs.py",
                                                                      "common/stats.py", "finish (worker/runner.py")),
    ("job log line", ("logging/", "common/logs.py", "note (worker/runner.py")),
    ("vecq job runner (worker/runner.py, worker/tasks.py)", ("worker/runner.py", "worker/tasks.py")),
    ("Celery trace + pool, child side", ("celery/app/trace.py", "billiard/", "celery/concurrency")),
    ("kombu consumer (BRPOP, decode, QoS, ack)", ("kombu/", "celery/")),
]
OTHER = "event loop and other"
OUTER = ("<frozen runpy>", "(api/serve.py", "(uvicorn/server.py", "(uvicorn/_compat.py", "(uvicorn/main.py")


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise RuntimeError("py-spy is not installed (pip install -e '.[bench]')")
    return found


class Recording:
    """One bounded `py-spy record` of a process (and its children with `subprocesses`)."""

    def __init__(self, pid: int, out: Path, rate: int, max_s: float, subprocesses: bool = False,
                 fmt: str = "raw") -> None:
        # --nonblocking: pausing the process for each sample (the default) slows the search it measures, and its
        # idle detection is worse here: a pool child's wait on its pipe showed as 40% of its samples.
        argv = [py_spy(), "record", "-p", str(pid), "-r", str(rate), "-f", fmt, "-o", str(out), "--nonblocking",
                "-d", str(max(1, int(max_s)))]
        if subprocesses:
            argv.append("--subprocesses")
        self.out = out
        self.log = out.with_suffix(".log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> str:
        """Stop sampling now (py-spy writes its file on SIGINT); its log's last line."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""


def read_raw(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    if not path.exists():
        return stacks
    for line in path.read_text(errors="replace").splitlines():
        text, _, count = line.rpartition(" ")
        if text and count.isdigit():
            stacks.append((text.split(";"), int(count)))
    return stacks


def pid_of(frames: list[str]) -> int | None:
    """The process a sample came from: the innermost `process PID:...` frame (with --subprocesses)."""
    for frame in reversed(frames):
        if frame.startswith("process ") and ":" in frame:
            head = frame[len("process "):].split(":", 1)[0]
            if head.isdigit():
                return int(head)
    return None


def category(frames: list[str], rules: Rules) -> str:
    """The stage of one stack (root first): the innermost frame that is a marker of a rule decides (the rule listed
    first if it is a marker of several); a stack parked in a wait call with no marker is waiting."""
    for frame in reversed(frames):
        if parked(frame, OUTER):
            break  # the frames that start the process and its event loop: on every stack, no stage
        for name, markers in rules:
            if any(marker in frame for marker in markers):
                return name
    return WAIT if parked(frames[-1], WAIT_LEAVES) else OTHER


def parked(leaf: str, markers: tuple[str, ...]) -> bool:
    return any(m in leaf for m in markers)


VECQ_DIRS = ("api/", "common/", "worker/")
ROOTS = ("api/serve.py",)  # on every stack of its process: says nothing


def vecq_frame(frame: str) -> bool:
    inside = frame.rpartition("(")[2]
    return inside.startswith(VECQ_DIRS) and not inside.startswith(ROOTS)


def attribute(stacks: list[tuple[list[str], int]], rules: Rules, rate: int, per: int, top: int = 12,
              pids: set[int] | None = None) -> dict[str, Any]:
    """CPU per search (ms) by category, the top self-time functions and the top vecq functions (inclusive),
    over the samples of `pids` (all if None). `per`: searches in the recording."""
    by_category: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = handoff = 0
    for frames, count in stacks:
        if pids is not None and pid_of(frames) not in pids:
            continue
        code = [f for f in frames if not f.startswith("process ")]
        if not code:
            continue
        total += count
        by_category[category(code, rules)] += count
        leaves[code[-1]] += count
        handoff += count if parked(code[-1], HANDOFF_LEAVES) else 0
        for function in {f.rsplit(":", 1)[0] + ")" for f in code if vecq_frame(f)}:  # once per stack
            inclusive[function] += count
    ms = 1000 / rate / max(per, 1)

    def share(n: int) -> dict[str, float]:
        return {"ms_per_search": round(n * ms, 3), "share": round(n / total, 3) if total else 0.0}

    return {"samples": total, "cpu_ms_per_search": round(total * ms, 3),
            "handoff_share": round(handoff / total, 3) if total else 0.0,
            "categories": {name: share(by_category[name]) for name in [r[0] for r in rules] + [WAIT, OTHER]
                           if by_category[name]},
            "top_self": [{"function": f, **share(n)} for f, n in leaves.most_common(top)],
            "top_vecq_inclusive": [{"function": f, **share(n)} for f, n in inclusive.most_common(top)]}
