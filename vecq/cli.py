"""The `vecq` command (click): `vecq up` runs the whole stack; the other commands talk to a running API.

    vecq up [--workers N]                          Redis (embedded unless VECQ_REDIS_URL), workers and the API
    vecq status                                    collections, workers and queues as tables
    vecq collections list|create|delete            ...
    vecq search COLLECTION --vector '[...]' | --file q.npy
    vecq jobs get|wait|cancel JOB_ID
    vecq ingest FILE --collection C                bulk load (.npy, .fvecs, .parquet, .jsonl)

`--url` and `--api-key` are read once, here, from the options or $VECQ_URL / $VECQ_API_KEY; every command
that talks to the API also takes them after its name. Commands that answer data print JSON on stdout; an error
prints `vecq: <code>: <message> (field X)` on stderr and exits 1 (2 for a wrong command line).

Only `up` needs the server's packages (`pip install 'vecq[server]'`); it says so when they are missing.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx

from common.errors import VecqError
from common.status import JobStatus
from vecq.client import DEFAULT_URL, Client

F = TypeVar("F", bound=Callable[..., Any])
SERVER_EXTRA = "pip install 'vecq[server]'"


@dataclass(frozen=True)
class Target:
    """The API the command talks to."""

    url: str
    api_key: str | None

    def client(self, timeout: float = 60.0) -> Client:
        return Client(self.url, self.api_key, timeout=timeout)


class VecqGroup(click.Group):
    """Turns the errors a command may meet into one line on stderr and exit status 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VecqError as exc:
            field = f" (field {exc.field})" if exc.field else ""
            click.echo(f"vecq: {exc.code}: {exc.message}{field}", err=True)
            ctx.exit(1)
        except httpx.TransportError as exc:
            url = str(exc.request.url) if _has_request(exc) else "the API"
            click.echo(f"vecq: cannot reach {url}: {exc}", err=True)
            ctx.exit(1)
        except TimeoutError as exc:
            click.echo(f"vecq: timeout: {exc}", err=True)
            ctx.exit(1)


def _has_request(exc: httpx.TransportError) -> bool:
    try:
        exc.request  # noqa: B018  # httpx raises RuntimeError when the error has no request
    except RuntimeError:
        return False
    return True


def api_options(command: F) -> F:
    """--url/--api-key after a command's name too (`vecq status --url ...`); they override the group's."""
    command = click.option("--api-key", "api_key", default=None, help="API key (default: the group's).")(command)
    return click.option("--url", "url", default=None, help="API base URL (default: the group's).")(command)


def target(ctx: click.Context, url: str | None, api_key: str | None) -> Target:
    base: Target = ctx.find_object(Target) or Target(DEFAULT_URL, None)
    return replace(base, url=url or base.url, api_key=api_key if api_key is not None else base.api_key)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


@click.group(cls=VecqGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click.option("--url", envvar="VECQ_URL", default=DEFAULT_URL, show_default=True, show_envvar=True,
              help="API base URL.")
@click.option("--api-key", envvar="VECQ_API_KEY", default=None, show_envvar=True, help="API key (Bearer).")
@click.pass_context
def cli(ctx: click.Context, url: str, api_key: str | None) -> None:
    """vecq vector search service."""
    ctx.obj = Target(url, api_key or None)


# The server ------------------------------------------------------------------------------------------------


@cli.command()
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes (default: VECQ_WORKERS).")
def up(workers: int | None) -> None:
    """Run Redis (embedded unless VECQ_REDIS_URL), workers and the API; Ctrl-C stops everything."""
    try:
        from kombu.utils.url import maybe_sanitize_url

        from common.settings import SettingsError, get_settings
        from vecq.stack import Stack
    except ImportError as exc:
        click.echo(f"vecq up: runs the server, whose packages are not installed ({exc.name} is missing): "
                   f"{SERVER_EXTRA}", err=True)
        sys.exit(2)
    try:
        settings = get_settings()
    except SettingsError as exc:
        click.echo(f"vecq: {exc}", err=True)
        sys.exit(2)
    data_dir = Path(settings.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    redis_url = str(settings.redis_url) if settings.redis_url is not None else None  # None: an embedded Redis
    stack = Stack(data_dir=data_dir, redis_url=redis_url, log_dir=None)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if stack.redis_url is None:
            url = stack.start_redis()
            print(f"vecq: embedded Redis at {url} (AOF in {data_dir / 'redis'})", flush=True)
        else:
            print(f"vecq: using Redis at {maybe_sanitize_url(stack.redis_url)}", flush=True)
        count = workers or settings.workers
        for i in range(count):
            stack.start_worker(i + 1)
        # The API sizes its coalescing by the workers it has and the processes it runs in.
        api_env = {"VECQ_WORKERS": str(count), "VECQ_API_PROCESSES": str(settings.api_processes)}
        api = stack.start_api(settings.api_host, settings.api_port, processes=settings.api_processes,
                              extra_env=api_env)
        print(f"vecq: {len(stack.workers)} workers starting; API at {api} (docs: {api}/docs, console: {api}/console)",
              flush=True)
        stack.wait_ready(timeout=120)
        print(f"vecq: ready — {api}/readyz is 200. Ctrl-C stops everything.", flush=True)
        while not stop.wait(0.5):
            dead = [p.name for p in [stack.api, *stack.workers] if p is not None and not p.alive()]
            if dead:
                print(f"vecq: {', '.join(dead)} exited; stopping", file=sys.stderr, flush=True)
                sys.exit(1)
    except (RuntimeError, TimeoutError) as exc:
        print(f"vecq: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    finally:
        print("vecq: stopping…", flush=True)
        stack.stop()
        print("vecq: stopped", flush=True)


# Reading a running API -------------------------------------------------------------------------------------


@cli.command()
@api_options
@click.pass_context
def status(ctx: click.Context, url: str | None, api_key: str | None) -> None:
    """Collections, live workers and queue depth of a running API, as tables that fit the terminal."""
    from vecq.status import show

    with target(ctx, url, api_key).client(timeout=10.0) as client:
        show(client)


def query_vectors(vector: str | None, file: Path | None) -> Any:
    """The query of `vecq search`: exactly one of --vector (JSON) and --file (.npy)."""
    import numpy as np

    if (vector is None) == (file is None):
        raise click.UsageError("give one of --vector and --file")
    if file is not None:
        try:
            return np.load(file)
        except (OSError, ValueError) as exc:
            raise click.BadParameter(f"{file}: not a .npy file ({exc})", param_hint="--file") from None
    return json_option(vector, "--vector")


def json_option(text: str | None, name: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=name) from None


@cli.command(epilog="""Example: vecq search docs --vector '[0.9, 0.1, 0]' -k 2 --metadata
--filter '{"lang": {"$in": ["en", "fr"]}, "year": {"$gte": 2020}}'  (filters: docs/filters.md)""")
@click.argument("collection")
@click.option("--vector", help="A JSON list of numbers, or a list of such lists.")
@click.option("--file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A .npy file of query vectors (one per row).")
@click.option("-k", type=click.IntRange(min=1), default=10, show_default=True, help="Hits per query.")
@click.option("--filter", "filter_json", help="A metadata filter, JSON (docs/filters.md).")
@click.option("--params", help='Index parameters, JSON, e.g. \'{"efSearch": 128}\'.')
@click.option("--metadata", is_flag=True, help="Include each hit's metadata.")
@api_options
@click.pass_context
def search(ctx: click.Context, collection: str, vector: str | None, file: Path | None, k: int,
           filter_json: str | None, params: str | None, metadata: bool, url: str | None, api_key: str | None) -> None:
    """Search COLLECTION; the hits as JSON (what POST /v1/collections/{name}/search answers)."""
    vectors = query_vectors(vector, file)
    where = json_option(filter_json, "--filter")
    index_params = json_option(params, "--params")
    with target(ctx, url, api_key).client() as client:
        res = client.search(collection, vectors, k, filter=where, include_metadata=metadata, params=index_params)
    click.echo(res.model_dump_json(exclude_none=True, indent=2))


# Collections -----------------------------------------------------------------------------------------------


@cli.group(cls=VecqGroup)
def collections() -> None:
    """List, create and delete collections."""


@collections.command("list")
@click.option("--json", "as_json", is_flag=True, help="The collections as JSON instead of a table.")
@api_options
@click.pass_context
def collections_list(ctx: click.Context, as_json: bool, url: str | None, api_key: str | None) -> None:
    """The collections: name, dim, metric, index and vector count."""
    with target(ctx, url, api_key).client() as client:
        found = client.list_collections()
    if as_json:
        echo_json([c.model_dump(exclude={"segments"}) for c in found])
        return
    from rich.console import Console

    from vecq.status import Column, fit

    columns = (Column("name", 0), Column("dim", 1, "right"), Column("metric", 3), Column("index", 2),
               Column("vectors", 1, "right"), Column("last LSN", 4))
    rows = [[c.name, str(c.dim), c.metric, c.index, f"{c.count:,}", c.lsn] for c in found]
    console = Console()
    console.print(fit(f"Collections ({len(found)})", columns, rows, console.width))


@collections.command("create")
@click.argument("name")
@click.option("--dim", type=click.IntRange(min=1), required=True, help="Dimension of its vectors.")
@click.option("--metric", type=click.Choice(["l2", "ip", "cosine"]), default="l2", show_default=True)
@click.option("--index", default="Flat", show_default=True, help="FAISS index description, e.g. HNSW32.")
@click.option("--exist-ok", is_flag=True, help="An existing collection of the same dim is not an error.")
@api_options
@click.pass_context
def collections_create(ctx: click.Context, name: str, dim: int, metric: str, index: str, exist_ok: bool,
                       url: str | None, api_key: str | None) -> None:
    """Create collection NAME; the collection as JSON."""
    with target(ctx, url, api_key).client() as client:
        made = client.create_collection(name, dim, metric, index, exist_ok=exist_ok)
    echo_json(made.model_dump(exclude={"segments"}))


@collections.command("delete")
@click.argument("name")
@api_options
@click.pass_context
def collections_delete(ctx: click.Context, name: str, url: str | None, api_key: str | None) -> None:
    """Delete collection NAME and its vectors."""
    with target(ctx, url, api_key).client() as client:
        client.delete_collection(name)
    click.echo(f"deleted collection {name}")


# Jobs ------------------------------------------------------------------------------------------------------


@cli.group(cls=VecqGroup)
def jobs() -> None:
    """Look at, wait for and cancel jobs."""


@jobs.command("get")
@click.argument("job_id")
@api_options
@click.pass_context
def jobs_get(ctx: click.Context, job_id: str, url: str | None, api_key: str | None) -> None:
    """The record of job JOB_ID as JSON."""
    with target(ctx, url, api_key).client() as client:
        job = client.get_job(job_id)
    click.echo(job.model_dump_json(indent=2))


@jobs.command("wait")
@click.argument("job_id")
@click.option("--timeout", type=click.FloatRange(min=0), default=None, help="Seconds (default: no limit).")
@api_options
@click.pass_context
def jobs_wait(ctx: click.Context, job_id: str, timeout: float | None, url: str | None, api_key: str | None) -> None:
    """Wait until job JOB_ID ends; its record as JSON. Exits 1 if it failed or was canceled."""
    with target(ctx, url, api_key).client(timeout=90.0) as client:
        job = client.wait_job(job_id, timeout, check=False)
    click.echo(job.model_dump_json(indent=2))
    if job.status != JobStatus.SUCCEEDED:
        error = job.error
        detail = f"{error.code}: {error.message}" + (f" (field {error.field})" if error.field else "") if error \
            else str(job.status)
        click.echo(f"vecq: job {job_id} {job.status}: {detail}", err=True)
        ctx.exit(1)


@jobs.command("cancel")
@click.argument("job_id")
@api_options
@click.pass_context
def jobs_cancel(ctx: click.Context, job_id: str, url: str | None, api_key: str | None) -> None:
    """Cancel job JOB_ID while it is queued; its record as JSON (a job that already ran: conflict, exit 1)."""
    with target(ctx, url, api_key).client() as client:
        job = client.cancel_job(job_id)
    click.echo(job.model_dump_json(indent=2))


# Bulk load -------------------------------------------------------------------------------------------------


@cli.command(epilog="Rows without ids get --id-prefix + their row number in the file, so running the same file "
                    "again replaces the same vectors. .parquet files need pyarrow.")
@click.argument("file")
@click.option("--collection", "-c", required=True, help="The collection to load into.")
@click.option("--create", is_flag=True, help="Create the collection if it does not exist.")
@click.option("--dim", type=int, default=None, help="Dimension for --create (default: the file's).")
@click.option("--metric", type=click.Choice(["l2", "ip", "cosine"]), default="l2", show_default=True,
              help="Metric for --create.")
@click.option("--index", default="Flat", show_default=True, help="FAISS index description for --create.")
@click.option("--id-prefix", default="", help="Ids of rows without one: PREFIX + row number (default: the row "
                                              "number).")
@click.option("--batch", type=click.IntRange(min=1), default=50_000, show_default=True,
              help="Rows per upload request.")
@click.option("--timeout", type=float, default=3600, show_default=True, help="Seconds to wait for the jobs.")
@click.option("--http-timeout", type=float, default=300, show_default=True, help="Seconds per HTTP request.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@api_options
@click.pass_context
def ingest(ctx: click.Context, file: str, collection: str, create: bool, dim: int | None, metric: str, index: str,
           id_prefix: str, batch: int, timeout: float, http_timeout: float, no_progress: bool, url: str | None,
           api_key: str | None) -> None:
    """Bulk-load vectors from FILE (.npy, .fvecs, .parquet or .jsonl) over HTTP: read in chunks, each chunk
    uploaded as its own request without waiting, then every job waited for and a summary printed."""
    from vecq.ingest import IngestArgs, run

    api = target(ctx, url, api_key)
    args = IngestArgs(file=file, collection=collection, url=api.url, api_key=api.api_key, create=create, dim=dim,
                      metric=metric, index=index, id_prefix=id_prefix, batch=batch, timeout=timeout,
                      http_timeout=http_timeout, no_progress=no_progress)
    ctx.exit(run(args))


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="vecq")


if __name__ == "__main__":
    main()
