"""The `vecq` command: `vecq up` runs the whole stack."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from kombu.utils.url import maybe_sanitize_url

from common.settings import get_settings
from vecq.stack import Stack


def cmd_up(args: argparse.Namespace) -> int:
    settings = get_settings()
    data_dir = Path(settings.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(data_dir=data_dir, redis_url=settings.redis_url, log_dir=None)
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
    from vecq.ingest import add_parser as add_ingest  # pyarrow, numpy and rich: loaded for the CLI only

    add_ingest(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
