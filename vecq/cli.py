"""The `vecq` command: `vecq up` runs the whole stack."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from kombu.utils.url import maybe_sanitize_url

from common.settings import SettingsError, get_settings
from vecq.stack import Stack


def cmd_up(args: argparse.Namespace) -> int:
    try:
        settings = get_settings()
    except SettingsError as exc:
        print(f"vecq: {exc}", file=sys.stderr)
        return 2
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
        workers = args.workers or settings.workers
        for i in range(workers):
            stack.start_worker(i + 1)
        # The API sizes its coalescing by the workers it has and the processes it runs in.
        api_env = {"VECQ_WORKERS": str(workers), "VECQ_API_PROCESSES": str(settings.api_processes)}
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
                return 1
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"vecq: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        print("vecq: stopping…", flush=True)
        stack.stop()
        print("vecq: stopped", flush=True)


def cmd_status(args: argparse.Namespace) -> int:
    from vecq.status import show  # rich is only needed here

    return show(args.url, args.api_key)


def cmd_search(args: argparse.Namespace) -> int:
    """One search, its hits as JSON on stdout (what `POST /v1/collections/{name}/search` answers)."""
    import json

    import numpy as np

    from vecq.client import Client, VecqHTTPError

    vectors = np.load(args.file) if args.file else np.asarray(json.loads(args.vector), dtype=np.float64)
    where = json.loads(args.filter) if args.filter else None
    try:
        with Client(args.url, args.api_key) as vq:
            res = vq.search(args.collection, vectors, args.k, filter=where, include_metadata=args.metadata,
                            params=json.loads(args.params) if args.params else None)
    except VecqHTTPError as exc:
        print(f"vecq search: {exc}", file=sys.stderr)
        return 1
    print(res.model_dump_json(exclude_none=True, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vecq", description="vecq vector search service")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run Redis (embedded unless VECQ_REDIS_URL), workers and the API")
    up.add_argument("--workers", type=int, default=None, help="worker processes (default: VECQ_WORKERS)")
    up.set_defaults(func=cmd_up)
    status = sub.add_parser("status", help="collections, live workers and queue depth of a running API")
    status.add_argument("--url", default=None, help="API base URL (default: $VECQ_URL or http://127.0.0.1:8000)")
    status.add_argument("--api-key", default=None, help="API key (default: $VECQ_API_KEY)")
    status.set_defaults(func=cmd_status)
    search = sub.add_parser("search", help="search a collection; the hits as JSON",
                            epilog="""example: vecq search docs --vector '[0.9, 0.1, 0]' -k 2 --metadata """
                            """--filter '{"lang": {"$in": ["en", "fr"]}, "year": {"$gte": 2020}}' """
                            "(filters: docs/filters.md)")
    search.add_argument("collection")
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--vector", help="a JSON list of numbers, or a list of such lists")
    query.add_argument("--file", help="a .npy file of query vectors (one per row)")
    search.add_argument("-k", type=int, default=10, help="hits per query (default 10)")
    search.add_argument("--filter", help="a metadata filter, JSON (docs/filters.md)")
    search.add_argument("--params", help='index parameters, JSON, e.g. \'{"efSearch": 128}\'')
    search.add_argument("--metadata", action="store_true", help="include each hit's metadata")
    search.add_argument("--url", default=None, help="API base URL (default: $VECQ_URL or http://127.0.0.1:8000)")
    search.add_argument("--api-key", default=None, help="API key (default: $VECQ_API_KEY)")
    search.set_defaults(func=cmd_search)
    from vecq.ingest import add_parser as add_ingest  # pyarrow, numpy and rich: loaded for the CLI only

    add_ingest(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
