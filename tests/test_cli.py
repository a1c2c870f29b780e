"""Issue #17 item 7: the `vecq` CLI (click) against a real stack — collections list|create|delete, search
--vector|--file, jobs get|wait|cancel, the URL from $VECQ_URL, one-line errors on stderr — and `vecq status`
tables that fit 80 columns. Run in-process with click's CliRunner (the commands' own code, real HTTP)."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from click.testing import CliRunner, Result
from rich.console import Console

from tests.helpers import add
from vecq.cli import cli
from vecq.client import Client
from vecq.stack import Stack
from vecq.status import COLLECTION_COLUMNS, WORKER_COLUMNS, tables


def vecq(url: str, *args: str) -> Result:
    """`vecq ARGS` with VECQ_URL set (the way the group reads the URL), COLUMNS=80 for the tables."""
    return CliRunner().invoke(cli, list(args), env={"VECQ_URL": url, "VECQ_API_KEY": "", "COLUMNS": "80"},
                              catch_exceptions=False)


def fresh_name() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}"


def test_collections_create_list_delete(stack: Stack) -> None:
    url = stack.api_url or ""
    name = fresh_name()
    made = vecq(url, "collections", "create", name, "--dim", "3", "--metric", "cosine")
    assert made.exit_code == 0, made.output
    assert json.loads(made.stdout) | {"name": name, "dim": 3, "metric": "cosine"} == json.loads(made.stdout)

    again = vecq(url, "collections", "create", name, "--dim", "3")
    assert again.exit_code == 1 and again.stdout == ""
    assert again.stderr.startswith("vecq: conflict: ") and "Traceback" not in again.stderr
    assert vecq(url, "collections", "create", name, "--dim", "3", "--exist-ok").exit_code == 0
    other_dim = vecq(url, "collections", "create", name, "--dim", "4", "--exist-ok")
    assert other_dim.exit_code == 1 and "(field dim)" in other_dim.stderr

    listed = vecq(url, "collections", "list", "--json")
    assert listed.exit_code == 0 and name in [c["name"] for c in json.loads(listed.stdout)]
    table = vecq(url, "collections", "list")
    assert table.exit_code == 0 and name in table.stdout and "vectors" in table.stdout
    assert max(len(line) for line in table.stdout.splitlines()) <= 80

    gone = vecq(url, "collections", "delete", name)
    assert gone.exit_code == 0 and name in gone.stdout
    assert name not in [c["name"] for c in json.loads(vecq(url, "collections", "list", "--json").stdout)]
    twice = vecq(url, "collections", "delete", name)
    assert twice.exit_code == 1 and twice.stderr.startswith("vecq: not_found: ")


def test_search_by_vector_and_by_file(stack: Stack, api: httpx.Client, make_collection: Callable[..., str],
                                      tmp_path: Path) -> None:
    url = stack.api_url or ""
    name = make_collection(dim=2)
    add(api, name, [[1, 0], [0.9, 0.1], [0, 1]], ["a", "b", "c"], metadata=[{"lang": "en"}, {"lang": "fr"}, None])

    by_vector = vecq(url, "search", name, "--vector", "[0, 1]", "-k", "2", "--metadata")
    assert by_vector.exit_code == 0, by_vector.output
    assert [h["id"] for h in json.loads(by_vector.stdout)["results"][0]] == ["c", "b"]

    np.save(tmp_path / "q.npy", np.array([[1, 0], [0, 1]], dtype=np.float32))
    by_file = vecq(url, "search", name, "--file", str(tmp_path / "q.npy"), "-k", "1")
    assert by_file.exit_code == 0, by_file.output
    assert [[h["id"] for h in row] for row in json.loads(by_file.stdout)["results"]] == [["a"], ["c"]]

    filtered = vecq(url, "search", name, "--vector", "[1, 0]", "--filter", '{"lang": "fr"}')
    assert [h["id"] for h in json.loads(filtered.stdout)["results"][0]] == ["b"]

    both = vecq(url, "search", name, "--vector", "[1, 0]", "--file", str(tmp_path / "q.npy"))
    assert both.exit_code == 2 and "one of --vector and --file" in both.stderr
    not_json = vecq(url, "search", name, "--vector", "[1, 0")
    assert not_json.exit_code == 2 and "--vector" in not_json.stderr
    wrong_dim = vecq(url, "search", name, "--vector", "[1, 0, 0]")
    assert wrong_dim.exit_code == 1 and wrong_dim.stderr.startswith("vecq: invalid: ") and "(field " in wrong_dim.stderr
    missing = vecq(url, "search", "no-such-collection", "--vector", "[1, 0]")
    assert missing.exit_code == 1 and missing.stderr.startswith("vecq: not_found: ")


def test_jobs_get_wait_and_cancel_of_a_finished_job(stack: Stack, api: httpx.Client,
                                                    make_collection: Callable[..., str]) -> None:
    url = stack.api_url or ""
    name = make_collection(dim=2)
    queued = api.post(f"/v1/collections/{name}/vectors", params={"wait": 0},
                      json={"vectors": [[1, 2], [3, 4]], "ids": ["x", "y"]})
    assert queued.status_code == 202, queued.text
    job_id = queued.json()["job_id"]

    waited = vecq(url, "jobs", "wait", job_id, "--timeout", "60")
    assert waited.exit_code == 0, waited.output
    assert json.loads(waited.stdout)["status"] == "succeeded" and json.loads(waited.stdout)["result"]["count"] == 2
    got = vecq(url, "jobs", "get", job_id)
    assert got.exit_code == 0 and json.loads(got.stdout)["job_id"] == job_id

    too_late = vecq(url, "jobs", "cancel", job_id)  # it ran: 409, nothing to cancel
    assert too_late.exit_code == 1 and too_late.stderr.startswith("vecq: conflict: ")
    assert "only a queued job can be canceled" in too_late.stderr
    unknown = vecq(url, "jobs", "get", "no-such-job")
    assert unknown.exit_code == 1 and unknown.stderr == "vecq: not_found: job not found (unknown or expired) " \
                                                        "(field job_id)\n"


def test_jobs_cancel_of_a_queued_job(new_stack: Callable[..., Stack]) -> None:
    """With its only worker stopped, a write stays queued: the CLI sees it queued, cancels it, and waiting
    for it then ends with exit status 1 and the job canceled."""
    stack = new_stack(workers=1)
    url = stack.api_url or ""
    with Client(url) as vq:
        vq.create_collection("late", 2)
        stack.workers[0].stop()
        stack.workers.clear()
        job = vq.add("late", [[1, 2]], wait=False)

    seen = vecq(url, "jobs", "get", job.job_id)
    assert seen.exit_code == 0 and json.loads(seen.stdout)["status"] == "queued"
    canceled = vecq(url, "jobs", "cancel", job.job_id)
    assert canceled.exit_code == 0, canceled.output
    assert json.loads(canceled.stdout)["status"] == "canceled"
    waited = vecq(url, "jobs", "wait", job.job_id)
    assert waited.exit_code == 1 and json.loads(waited.stdout)["status"] == "canceled"
    assert f"vecq: job {job.job_id} canceled" in waited.stderr


def test_url_option_overrides_the_environment(stack: Stack) -> None:
    """VECQ_URL points nowhere; --url (before or after the command name) wins over it."""
    dead = "http://127.0.0.1:9"
    assert vecq(dead, "--url", stack.api_url or "", "collections", "list", "--json").exit_code == 0
    assert vecq(dead, "collections", "list", "--json", "--url", stack.api_url or "").exit_code == 0
    unreachable = vecq(dead, "collections", "list")
    assert unreachable.exit_code == 1 and unreachable.stderr.startswith(f"vecq: cannot reach {dead}/")


# vecq status at 80 columns ---------------------------------------------------------------------------------


def render(width: int, collections: list[dict[str, Any]], info: dict[str, Any]) -> str:
    console = Console(width=width, file=io.StringIO(), record=True)
    for table in tables(collections, info, width):
        console.print(table)
    return console.export_text()


@pytest.mark.parametrize("width", [80, 100])
def test_status_tables_fit_the_terminal_without_squeezing(stack: Stack, api: httpx.Client,
                                                          make_collection: Callable[..., str], width: int) -> None:
    name = make_collection(dim=3, index="HNSW32")
    add(api, name, np.eye(3))
    with Client(stack.api_url) as vq:
        collections = [c.model_dump() for c in vq.list_collections()]
        info = vq.workers()
    text = render(width, collections, info)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    # What matters most is there, whole: the collection's name, count and index, each worker's name and jobs.
    for header in ("name", "vectors", "dim", "index", "worker", "jobs", "uptime", "queue", "waiting"):
        assert any(f" {header} " in line for line in lines), (header, text)
    assert any(name in line and "HNSW32" in line for line in lines), text
    for worker in info["workers"]:
        assert any(str(worker["worker"]) in line for line in lines), text
    # Every column is either shown, its header whole, or named in the caption (which may wrap).
    words = " ".join(text.split())
    for column in (*COLLECTION_COLUMNS, *WORKER_COLUMNS):
        assert column.header in words, (column.header, text)

    wide = render(250, collections, info)
    assert "not shown" not in wide and all(f" {c.header} " in wide for c in COLLECTION_COLUMNS)


def test_vecq_status_command_at_80_columns(stack: Stack, make_collection: Callable[..., str]) -> None:
    name = make_collection(dim=2)
    out = vecq(stack.api_url or "", "status")
    assert out.exit_code == 0, out.output
    assert name in out.stdout and "Workers (" in out.stdout and "Queues" in out.stdout
    assert max(len(line) for line in out.stdout.splitlines()) <= 80
    assert "not shown at 80 columns:" in out.stdout
