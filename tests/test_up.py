"""`vecq up` (what `make run` runs): ready within 60 s, nothing left behind after Ctrl-C, and a second
`vecq up` on the same data dir brings the collections back (embedded Redis with AOF)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.helpers import add, ids_of, search
from vecq.stack import ROOT, free_port


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _up(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VECQ_")}
    env.update(VECQ_DATA_DIR=str(data_dir), VECQ_API_PORT=str(port), VECQ_WORKERS="2",
               VECQ_HEARTBEAT_INTERVAL_S="0.5", VECQ_HEARTBEAT_TTL_S="3")
    return subprocess.Popen([sys.executable, "-m", "vecq.cli", "up"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        assert proc.poll() is None, "vecq up exited"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"/readyz not 200 within {timeout}s")


def _stop(proc: subprocess.Popen[bytes]) -> set[int]:
    started = _descendants(proc.pid)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in started):
        time.sleep(0.1)
    return {p for p in started if _alive(p)}


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """After a failed step: nothing of this `vecq up` may outlive the test (its Redis, workers, API)."""
    if proc.poll() is None:
        for pid in _descendants(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.kill()


def test_vecq_up_ready_then_clean_stop_then_data_survives(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _up(tmp_path, port)
    try:
        assert _wait_ready(url, proc) < 60
        spawned = _descendants(proc.pid)
        assert len(spawned) >= 5  # redis-server, 2 celery mains + their pool children, uvicorn
        with httpx.Client(base_url=url, timeout=60) as api:
            created = api.post("/v1/collections", json={"name": "kept", "dim": 2})
            assert created.status_code == 201, created.text
            add(api, "kept", [[0, 1], [1, 0]], ids=["a", "b"])
        leftovers = _stop(proc)
        assert not leftovers, f"processes left after Ctrl-C: {leftovers}"
    finally:
        _kill_tree(proc)
    # the write was acknowledged before the stop: Redis fsyncs its AOF when it shuts down on SIGTERM
    proc = _up(tmp_path, port)
    try:
        _wait_ready(url, proc)
        with httpx.Client(base_url=url, timeout=60) as api:
            assert api.get("/v1/collections/kept").json()["count"] == 2
            assert ids_of(search(api, "kept", [[1, 0.1]], k=1)) == [["b"]]
        assert not _stop(proc)
    finally:
        _kill_tree(proc)
