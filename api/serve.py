"""Serving the API from N processes, each with a listening socket of its own (SO_REUSEPORT).

`uvicorn --workers N` shares one socket, and asyncio accepts every waiting connection at once: when a client's
pool opens its keep-alive connections together, they all land in whichever process woke first (64 to 0 on the
benchmark) and stay there. Coalescing gives each API process its share of the workers, so a process without
clients leaves its workers idle: c=64 swung between 1,160 and 1,630 QPS with the split. With a socket per
process the kernel spreads connections over the processes by their addresses.

    python -m api.serve --host 0.0.0.0 --port 8000 --processes 2    # default: VECQ_API_PROCESSES

One process runs the server itself; with more, this process only starts them, passes SIGTERM/SIGINT on, and
exits (1) as soon as one of them dies, so that whoever runs it (`vecq up`, Docker) sees the failure.
"""

from __future__ import annotations

import argparse
import multiprocessing
import signal
import socket
import sys
from multiprocessing.connection import wait
from typing import Any

import uvicorn

from common.settings import get_settings

APP = "api.main:app"


def listening_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def serve(host: str, port: int, log_level: str) -> None:
    """One API process: its own socket, uvicorn's own signal handling (graceful on SIGTERM)."""
    config = uvicorn.Config(APP, log_level=log_level, access_log=False,
                            timeout_keep_alive=get_settings().api_keep_alive_s)
    uvicorn.Server(config).run(sockets=[listening_socket(host, port)])


def supervise(processes: list[Any]) -> int:
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for p in processes:
            if p.is_alive():
                p.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for p in processes:
        p.start()
    wait([p.sentinel for p in processes])  # the first to exit, or all of them after a signal
    failed = not stopping
    stop(signal.SIGTERM, None)
    for p in processes:
        p.join()
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--processes", type=int, default=None, help="default: VECQ_API_PROCESSES")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    count = args.processes or get_settings().api_processes
    if count <= 1:
        serve(args.host, args.port, args.log_level)
        return 0
    spawn = multiprocessing.get_context("spawn")  # each process imports the app itself: nothing forked
    return supervise([spawn.Process(target=serve, args=(args.host, args.port, args.log_level),
                                    name=f"vecq-api-{i + 1}") for i in range(count)])


if __name__ == "__main__":
    sys.exit(main())
