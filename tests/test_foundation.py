"""Issue 2: the stack runs for real; the API never imports faiss; pickle never runs in a worker."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
from kombu import Connection

from tests.conftest import WORKERS, log_of
from tests.helpers import add, ids_of, search
from vecq.stack import ROOT, Stack


def test_health_and_ready(api: httpx.Client) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["workers"] >= WORKERS


def test_api_process_never_imports_faiss() -> None:
    code = "import sys, api.main; api.main.create_app(); print('faiss' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


class _Exploit:
    """Unpickling this runs a shell command: proof that a worker decoded pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_pickle_message_is_refused_and_never_runs(stack: Stack, api: httpx.Client, tmp_path: Path,
                                                  make_collection) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "pwned"
    task_id = uuid.uuid4().hex
    body = pickle.dumps(((), {"collection": _Exploit(marker)}, {"callbacks": None, "errbacks": None,
                                                                "chain": None, "chord": None}))
    with Connection(stack.redis_url) as conn:
        conn.Producer().publish(
            body, routing_key="vecq", exchange="", content_type="application/x-python-serialize",
            content_encoding="binary", declare=[],
            headers={"lang": "py", "task": "vecq.search", "id": task_id, "root_id": task_id,
                     "parent_id": None, "group": None, "retries": 0, "argsrepr": "()", "kwargsrepr": "{}"},
        )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        logs = "".join(log_of(stack, f"worker{i + 1}") for i in range(WORKERS))
        if "untrusted content" in logs or "ContentDisallowed" in logs:
            break
        time.sleep(0.2)
    assert "untrusted content" in logs or "ContentDisallowed" in logs
    assert not marker.exists(), "a worker unpickled the message body"
    assert api.get(f"/v1/jobs/{task_id}").status_code == 404  # it never became a job
    # and every worker still serves
    name = make_collection(dim=2)
    add(api, name, [[0, 1], [1, 0]], ids=["a", "b"])
    assert ids_of(search(api, name, np.array([[1.0, 0.1]]), k=1)) == [["b"]]
    assert all(w.alive() for w in stack.workers)
