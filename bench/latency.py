"""The latency budget of a lone search (issue #18), measured on one private stack in one run:

    python -m bench --only latency              # about a minute on 2 cores: bench/results/latency.{md,json}
    python -m bench --only latency --quick      # a smoke run, well under a minute (bench/results/quick/)
    python -m bench --only latency --lat-profile    # also py-spy flamegraphs (svg) of the API and the workers

The stack is `vecq up`'s (bench/service.py: embedded Redis, 2 Celery workers, 1 API process, coalescing at its
defaults). What it measures, every figure against references taken in the same run (the machine is shared:
ratios, never absolute goals):

1. Sequential requests on one keep-alive connection (http.client: the cheapest client there is), in alternating
   rounds so that a noisy moment hits all three alike: the HTTP floor (`GET /healthz` on the vecq API), a bare
   Celery no-op (bench/bare.py: same Redis, its own queue and prefork worker, `delay().get()`), and a lone vecq
   search (`POST /v1/collections/tiny/search?wait=30`, 2 vectors of dimension 4, k=1). p50/p99 of each, and
   vecq's own time = lone p50 - floor p50 - Celery p50. Meanwhile /proc gives the CPU each process spent per
   search, and Redis's INFO commandstats the commands per search, less what the idle stack sends over as long
   (heartbeats, BRPOP timeouts: measured first, same length).
2. The stage split: the same searches again with Redis's MONITOR on (bench/redis_trace.py): each hop of a batch
   is a command stamped by Redis, so client stamps + hops give the stages, and the round trips per search.
3. Where the CPU goes: the same searches again under py-spy (bench/spy.py) on the API and on both workers with
   their pool children, sorted into stages by function, with the functions holding the most samples.
4. The API's CPU per search at c=64 (bench/loadgen.py, closed loop, bounded by time and count) on a small Flat
   collection, against a bare FastAPI JSON endpoint's CPU per request with the same bodies (bench/bare.py),
   in alternating rounds.

Every process it starts runs in a session of its own and is killed by process group at the end.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson
import psutil
import redis

from bench import bare, cpu, loadgen, redis_trace, spy
from bench.loadgen import LoadSpec
from bench.service import Vecq
from vecq.stack import free_port

ROOT = Path(__file__).resolve().parent.parent
TINY = "tiny"
LOADED = "latency-flat"


@dataclass
class Config:
    workers: int = 2
    requests: int = 300  # sequential calls of each kind (floor, Celery no-op, lone search), over the rounds
    rounds: int = 3
    max_loop_s: float = 20.0  # bound of one round of one kind
    tiny_dim: int = 4
    traced_requests: int = 200  # lone searches under MONITOR
    profiled_requests: int = 300  # lone searches under py-spy
    profile_rate: int = 500  # py-spy samples per second
    load_profile_rate: int = 200  # py-spy on the API during one more c=64 vecq round (not a measured one)
    flamegraphs: bool = False  # --lat-profile: svg flamegraphs of the API and the workers too
    load_concurrency: int = 64
    load_seconds: float = 5.0
    load_requests: int = 20_000
    load_warmup: float = 1.0
    load_rounds: int = 2  # alternating vecq / bare rounds; the median CPU per request of each
    load_n: int = 10_000
    load_dim: int = 128
    load_k: int = 10
    seed: int = 0
    quick: bool = False


QUICK: dict[str, Any] = {"requests": 60, "rounds": 2, "traced_requests": 40, "profiled_requests": 60,
                         "load_seconds": 1.0, "load_requests": 2000, "load_warmup": 0.3, "load_rounds": 1,
                         "load_n": 2000, "load_dim": 32, "quick": True}
# The goals of issue #18, as ratios to the references measured in the same run.
GOAL_OWN_MS = 0.7
GOAL_REDIS_CALLS = 10
GOAL_CPU_RATIO = 1.3


def config(quick: bool, **overrides: Any) -> Config:
    return replace(Config(**(QUICK if quick else {})), **overrides)


def say(msg: str) -> None:
    print(f"[latency {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def percentiles(ms: list[float]) -> dict[str, float | int | None]:
    if not ms:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "mean_ms": None}
    a = np.asarray(ms)
    return {"n": len(ms), "p50_ms": round(float(np.percentile(a, 50)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3), "mean_ms": round(float(a.mean()), 3)}


# Clients --------------------------------------------------------------------------------------------------
class Http:
    """One keep-alive HTTP/1.1 connection: the least a client can add to a request."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=60)

    def call(self, method: str, path: str, body: bytes | None = None) -> bytes:
        headers = {"content-type": "application/json"} if body is not None else {}
        self.conn.request(method, path, body, headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status} {data[:300]!r}")
        return data

    def close(self) -> None:
        self.conn.close()


def timed(call: Callable[[], Any], count: int, max_s: float) -> tuple[list[float], list[Any]]:
    """`count` sequential calls (fewer if `max_s` runs out): each one's ms and what it returned."""
    ms, out = [], []
    deadline = time.perf_counter() + max_s
    for _ in range(count):
        t0 = time.perf_counter()
        out.append(call())
        ms.append((time.perf_counter() - t0) * 1000)
        if time.perf_counter() > deadline:
            break
    return ms, out


def commandstats(r: redis.Redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in r.info("commandstats").items()}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def per_call(busy: dict[str, int], busy_s: float, idle: dict[str, int], idle_s: float,
             calls: int) -> dict[str, float]:
    """Commands per call, less what the idle stack sends in as long."""
    out = {}
    for name in sorted(set(busy) | set(idle)):
        n = (busy.get(name, 0) - idle.get(name, 0) * busy_s / idle_s) / calls
        if n > 0.005:
            out[name] = round(n, 2)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


@contextmanager
def process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child in a session of its own, killed with its group on the way out."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=out, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group (a pool child)
        proc.wait(5)


def child_env(redis_url: str) -> dict[str, str]:
    env = {**os.environ, "BARE_REDIS_URL": redis_url}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


# The run --------------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, cfg: Config, tmp: Path, out_dir: Path) -> None:
        self.cfg = cfg
        self.tmp = tmp
        self.out_dir = out_dir
        self.vecq = Vecq(tmp / "vecq", workers=cfg.workers, api_processes=1)
        self.r: redis.Redis | None = None
        self.search_body = orjson.dumps({"vector": [0.1] + [0.0] * (cfg.tiny_dim - 1), "k": 1})
        self.search_path = f"/v1/collections/{TINY}/search?wait=30"

    def go(self) -> dict[str, Any]:
        from bench.report import machine

        started = time.time()
        result: dict[str, Any] = {"config": asdict(self.cfg), "machine": machine(),
                                  "load_before": list(os.getloadavg()),
                                  "started_at": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        (self.tmp / "logs").mkdir(parents=True, exist_ok=True)
        try:
            say("starting the stack (2 workers, 1 API process)")
            self.vecq.start()
            assert self.vecq.stack is not None and self.vecq.stack.redis_url
            self.r = redis.Redis.from_url(self.vecq.stack.redis_url)
            self.tiny_collection()
            env = child_env(self.vecq.stack.redis_url)
            with process(bare.worker_argv(f"bare-{os.getpid()}@%h"), env, self.tmp / "logs" / "bare-celery.log"):
                celery = bare.make_celery(self.vecq.stack.redis_url)
                self.wait_bare_worker(celery)
                result["lone"] = self.lone(celery)
                result["redis"] = self.redis_calls(result["lone"])
                result["trace"] = self.trace()
                result["profile"] = self.profile()
                celery.close()
            result["load"] = self.load(env)
        except BaseException:
            say("failed; the stack's logs:\n" + self.vecq.logs()[-4000:])
            raise
        finally:
            if self.r is not None:
                self.r.close()
            self.vecq.stop()
        result["load_after"] = list(os.getloadavg())
        result["duration_s"] = round(time.time() - started, 1)
        result["goals"] = goals(result)
        return result

    # Setup ------------------------------------------------------------------------------------------------
    def tiny_collection(self) -> None:
        """The issue's collection: two vectors, a search hits one of them."""
        dim = self.cfg.tiny_dim
        self.vecq.create(TINY, dim, "Flat")
        vectors = [[0.0] * (dim - 1) + [1.0], [1.0] + [0.0] * (dim - 1)]
        resp = self.vecq.client.post(f"/v1/collections/{TINY}/vectors", params={"wait": 60},
                                     json={"vectors": vectors, "ids": ["a", "b"]})
        self.vecq.finish(resp, "tiny add")
        self.vecq.warm(TINY, {"vector": vectors[0], "k": 1})

    @staticmethod
    def wait_bare_worker(celery: Any, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                celery.send_task(bare.NOOP, queue=bare.BARE_QUEUE).get(timeout=5)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError("the bare Celery worker did not answer (see its log)") from None

    # 1. Floor, Celery no-op, lone search ------------------------------------------------------------------
    def lone(self, celery: Any) -> dict[str, Any]:
        cfg = self.cfg
        assert self.r is not None
        client = Http(self.vecq.url)
        per_round = max(1, cfg.requests // cfg.rounds)
        healthz: list[float] = []
        noop: list[float] = []
        search: list[float] = []
        took: list[float] = []
        search_s = 0.0
        noop_s = 0.0
        search_cmds: dict[str, int] = {}
        noop_cmds: dict[str, int] = {}
        pids = self.vecq.pids()
        meter = {"api": 0.0, "workers": 0.0, "redis": 0.0}

        def noop_call() -> Any:
            return celery.send_task(bare.NOOP, queue=bare.BARE_QUEUE).get(timeout=30)

        try:
            for _ in range(10):  # a warm connection and warm code paths for all three
                client.call("GET", "/healthz")
                client.call("POST", self.search_path, self.search_body)
                noop_call()
            say(f"idle interval, then {cfg.rounds} rounds of {per_round} /healthz, Celery no-ops and lone searches")
            idle = self.idle_commands(min(10.0, max(1.0, 0.012 * cfg.requests)))
            for _ in range(cfg.rounds):
                ms, _ = timed(lambda: client.call("GET", "/healthz"), per_round, cfg.max_loop_s)
                healthz += ms
                before, t0 = commandstats(self.r), time.perf_counter()
                ms, _ = timed(noop_call, per_round, cfg.max_loop_s)
                noop_s += time.perf_counter() - t0
                noop_cmds = add(noop_cmds, delta(commandstats(self.r), before))
                noop += ms
                before, t0 = commandstats(self.r), time.perf_counter()
                spent = {group: sum(cpu.process_seconds(p) for p in ps) for group, ps in pids.items()}
                ms, bodies = timed(lambda: client.call("POST", self.search_path, self.search_body), per_round,
                                   cfg.max_loop_s)
                for group, ps in pids.items():
                    meter[group] += sum(cpu.process_seconds(p) for p in ps) - spent[group]
                search_s += time.perf_counter() - t0
                search_cmds = add(search_cmds, delta(commandstats(self.r), before))
                search += ms
                took += [float(orjson.loads(b)["took_ms"]) for b in bodies]
        finally:
            client.close()
        floor, celery_rt, lone = percentiles(healthz), percentiles(noop), percentiles(search)
        own = None
        if lone["p50_ms"] is not None and floor["p50_ms"] is not None and celery_rt["p50_ms"] is not None:
            own = round(float(lone["p50_ms"]) - float(floor["p50_ms"]) - float(celery_rt["p50_ms"]), 3)
        return {"floor": floor, "celery_noop": celery_rt, "search": lone, "worker_search_took": percentiles(took),
                "vecq_own_ms": own,
                "cpu_ms_per_search": {g: round(1000 * s / max(1, len(search)), 3) for g, s in meter.items()},
                "_commands": {"idle": idle, "search": search_cmds, "search_s": search_s, "searches": len(search),
                              "noop": noop_cmds, "noop_s": noop_s, "noops": len(noop)}}

    def idle_commands(self, seconds: float) -> dict[str, Any]:
        assert self.r is not None
        before, t0 = commandstats(self.r), time.perf_counter()
        time.sleep(seconds)
        after = commandstats(self.r)
        return {"commands": delta(after, before), "seconds": time.perf_counter() - t0}

    def redis_calls(self, lone: dict[str, Any]) -> dict[str, Any]:
        raw = lone.pop("_commands")
        idle, idle_s = raw["idle"]["commands"], raw["idle"]["seconds"]
        search = per_call(raw["search"], raw["search_s"], idle, idle_s, raw["searches"])
        noop = per_call(raw["noop"], raw["noop_s"], idle, idle_s, raw["noops"])
        return {"per_search": search, "per_search_total": round(sum(search.values()), 2),
                "per_noop": noop, "per_noop_total": round(sum(noop.values()), 2),
                "idle_per_s": round(sum(idle.values()) / idle_s, 1), "idle_s": round(idle_s, 2)}

    # 2. Stages from Redis's MONITOR -----------------------------------------------------------------------
    def trace(self) -> dict[str, Any]:
        cfg = self.cfg
        assert self.vecq.stack is not None and self.vecq.stack.redis_url
        say(f"{cfg.traced_requests} lone searches under Redis MONITOR (the stage split)")
        parts = urlsplit(self.vecq.stack.redis_url)
        client = Http(self.vecq.url)
        requests: list[tuple[float, float, str]] = []
        roles = self.connection_roles()
        try:
            client.call("POST", self.search_path, self.search_body)
            with redis_trace.Monitor(parts.hostname or "127.0.0.1", parts.port or 6379) as monitor:
                time.sleep(0.05)
                deadline = time.perf_counter() + cfg.max_loop_s
                stamps = []
                for _ in range(cfg.traced_requests):
                    sent = time.time()
                    client.call("POST", self.search_path, self.search_body)
                    stamps.append((sent, time.time()))
                    if time.perf_counter() > deadline:
                        break
                time.sleep(0.05)
        finally:
            client.close()
        commands = monitor.commands()
        roles.update(self.connection_roles())
        found = redis_trace.batches(commands)
        # each search is one batch: its LPUSH falls between the client's stamps
        pushed = sorted((b.lpush, batch_id) for batch_id, b in found.items() if b.lpush is not None)
        for sent, received in stamps:
            inside = [batch_id for at, batch_id in pushed if sent <= at <= received]
            if len(inside) == 1:
                requests.append((sent, received, inside[0]))
        split = redis_trace.stages(requests, found)
        trips, sent_by_name = redis_trace.round_trips(commands, stamps[0][0], stamps[-1][1]) if stamps else (0, {})
        by_role: dict[str, int] = {}
        for c in commands:
            if stamps and stamps[0][0] <= c.at < stamps[-1][1] and c.client != "lua":
                role = roles.get(redis_trace.port_of(c.client) or -1, "other")
                by_role[role] = by_role.get(role, 0) + 1
        n = max(1, len(stamps))
        split.update(searches=len(stamps), search=percentiles([(b - a) * 1000 for a, b in stamps]),
                     round_trips_per_search=round(trips / n, 2),
                     client_commands_per_search={k: round(v / n, 2) for k, v in sorted(
                         sent_by_name.items(), key=lambda kv: -kv[1])},
                     client_commands_by_process={k: round(v / n, 2) for k, v in sorted(by_role.items())})
        return split

    def connection_roles(self) -> dict[int, str]:
        """Local port of each Redis connection -> which process holds it (api, worker main, worker child)."""
        assert self.vecq.stack is not None and self.vecq.stack.redis_url
        redis_port = urlsplit(self.vecq.stack.redis_url).port
        mains = {w.pid for w in self.vecq.stack.workers}
        pids = self.vecq.pids()
        roles: dict[int, str] = {}
        for group, members in pids.items():
            if group == "redis":
                continue
            for pid in members:
                role = "api" if group == "api" else "worker main" if pid in mains else "worker child"
                try:
                    for conn in psutil.Process(pid).net_connections("tcp"):
                        if conn.raddr and conn.raddr.port == redis_port:
                            roles[conn.laddr.port] = role
                except psutil.Error:
                    continue
        return roles

    # 3. Where the CPU goes: py-spy ------------------------------------------------------------------------
    def profile(self) -> dict[str, Any]:
        cfg = self.cfg
        assert self.vecq.stack is not None
        say(f"{cfg.profiled_requests} lone searches under py-spy ({cfg.profile_rate} Hz) on the API and the workers")
        # the raw stacks stay next to the results (not committed): grep them for what the tables leave out
        result = self.record(self.out_dir, "raw", cfg.profiled_requests)
        if cfg.flamegraphs:
            say("again, for the flamegraphs (--lat-profile)")
            self.record(self.out_dir, "flamegraph", cfg.profiled_requests)
        return result

    def record(self, where: Path, fmt: str, count: int) -> dict[str, Any]:
        cfg = self.cfg
        assert self.vecq.stack is not None and self.vecq.stack.api is not None
        suffix = "raw" if fmt == "raw" else "svg"
        targets = {"api": (self.vecq.stack.api.pid, False)}  # api.serve with one process serves in its own process
        for i, w in enumerate(self.vecq.stack.workers):
            targets[f"worker{i + 1}"] = (w.pid, True)
        bound = cfg.max_loop_s + 5
        recordings = {name: spy.Recording(pid, where / f"latency-{name}.{suffix}", cfg.profile_rate, bound, subs,
                                          fmt=fmt) for name, (pid, subs) in targets.items()}
        client = Http(self.vecq.url)
        pids = self.vecq.pids()
        try:
            time.sleep(1.0)  # py-spy attaches
            spent = {group: sum(cpu.process_seconds(p) for p in ps) for group, ps in pids.items()}
            ms, _ = timed(lambda: client.call("POST", self.search_path, self.search_body), count, cfg.max_loop_s)
            spent = {group: sum(cpu.process_seconds(p) for p in ps) - spent[group] for group, ps in pids.items()}
        finally:
            client.close()
            logs = {name: rec.stop() for name, rec in recordings.items()}
        if fmt != "raw":
            return {}
        mains = {w.pid for w in self.vecq.stack.workers}
        worker_stacks = [s for name, rec in recordings.items() if name != "api" for s in spy.read_raw(rec.out)]
        children = {pid for frames, _ in worker_stacks if (pid := spy.pid_of(frames)) is not None} - mains
        n = len(ms)
        return {"searches": n, "rate": cfg.profile_rate, "search": percentiles(ms), "py_spy": logs,
                "proc_cpu_ms_per_search": {g: round(1000 * s / max(1, n), 3) for g, s in spent.items()},
                "api": spy.attribute(spy.read_raw(recordings["api"].out), spy.API_RULES, cfg.profile_rate, n),
                "worker_main": spy.attribute(worker_stacks, spy.WORKER_RULES, cfg.profile_rate, n, pids=mains),
                "worker_child": spy.attribute(worker_stacks, spy.WORKER_RULES, cfg.profile_rate, n, pids=children)}

    # 4. API CPU per search at c=64 vs a bare FastAPI endpoint ----------------------------------------------
    def load(self, env: dict[str, str]) -> dict[str, Any]:
        cfg = self.cfg
        assert self.vecq.stack is not None and self.vecq.stack.api is not None
        say(f"c={cfg.load_concurrency}: a {cfg.load_n:,} x {cfg.load_dim} Flat collection")
        rng = np.random.default_rng(cfg.seed)
        vectors = rng.standard_normal((cfg.load_n, cfg.load_dim)).astype(np.float32)
        self.vecq.create(LOADED, cfg.load_dim, "Flat")
        self.vecq.ingest_json(LOADED, vectors, batch=5000)
        queries_path = self.tmp / "queries.npy"
        np.save(queries_path, rng.standard_normal((256, cfg.load_dim)).astype(np.float32))
        self.vecq.warm(LOADED, {"vector": vectors[0], "k": cfg.load_k})
        api_pids = cpu.tree(self.vecq.stack.api.pid)
        port = free_port()
        rounds: dict[str, list[dict[str, Any]]] = {"vecq": [], "bare": []}
        with process(bare.uvicorn_argv(port), env, self.tmp / "logs" / "bare-fastapi.log") as server:
            wait_http(f"http://127.0.0.1:{port}/docs")
            for i in range(cfg.load_rounds):
                say(f"round {i + 1}/{cfg.load_rounds}: vecq search, then the bare endpoint, c={cfg.load_concurrency}")
                for system, url, pids in (
                        ("vecq", f"{self.vecq.url}/v1/collections/{LOADED}/search?wait=30", api_pids),
                        ("bare", f"http://127.0.0.1:{port}/search", [server.pid])):
                    res = loadgen.run(LoadSpec(url=url, mode="post", concurrency=cfg.load_concurrency,
                                               max_requests=cfg.load_requests, max_seconds=cfg.load_seconds,
                                               warmup_s=cfg.load_warmup, queries_path=str(queries_path),
                                               template={"k": cfg.load_k}, watch={"api": pids}))
                    summary = res.summary()
                    if res.errors or not res.requests:
                        raise RuntimeError(f"{system} at c={cfg.load_concurrency}: {summary}")
                    rounds[system].append(summary)
            api_profile = self.profile_loaded_api(f"{self.vecq.url}/v1/collections/{LOADED}/search?wait=30",
                                                  queries_path)
        self.vecq.delete(LOADED)

        def median_cpu(system: str) -> float | None:
            values = [r["cpu"]["per_request"]["api_ms"] for r in rounds[system] if r.get("cpu")]
            return round(statistics.median(values), 4) if values else None

        vecq_ms, bare_ms = median_cpu("vecq"), median_cpu("bare")
        return {"concurrency": cfg.load_concurrency, "n": cfg.load_n, "dim": cfg.load_dim, "k": cfg.load_k,
                "vecq_api_cpu_ms": vecq_ms, "bare_api_cpu_ms": bare_ms,
                "ratio": round(vecq_ms / bare_ms, 2) if vecq_ms and bare_ms else None,
                "vecq_qps": statistics.median(r["qps"] for r in rounds["vecq"]),
                "bare_qps": statistics.median(r["qps"] for r in rounds["bare"]), "rounds": rounds,
                "api_profile": api_profile}

    def profile_loaded_api(self, url: str, queries_path: Path) -> dict[str, Any]:
        """py-spy on the API during one more c=64 round of searches, apart from the measured ones (py-spy takes
        CPU): where the API's CPU per search goes under load."""
        cfg = self.cfg
        assert self.vecq.stack is not None and self.vecq.stack.api is not None
        say(f"one more vecq round at c={cfg.load_concurrency} under py-spy ({cfg.load_profile_rate} Hz) on the API")
        rec = spy.Recording(self.vecq.stack.api.pid, self.out_dir / "latency-api-c64.raw", cfg.load_profile_rate,
                            cfg.load_warmup + cfg.load_seconds + 30)
        try:
            time.sleep(1.0)  # py-spy attaches
            res = loadgen.run(LoadSpec(url=url, mode="post", concurrency=cfg.load_concurrency,
                                       max_requests=cfg.load_requests, max_seconds=cfg.load_seconds, warmup_s=0.0,
                                       queries_path=str(queries_path), template={"k": cfg.load_k}))
        finally:
            log = rec.stop()
        # the recording spans the load generator's start too: per search is over every request it sent
        sent = res.requests + res.warmup_requests
        return {"requests": sent, "qps": res.qps, "py_spy": log,
                **spy.attribute(spy.read_raw(rec.out), spy.API_RULES, cfg.load_profile_rate, sent)}


def add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in set(a) | set(b)}


def wait_http(url: str, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer in {timeout:.0f} s")
        time.sleep(0.1)


def goals(res: dict[str, Any]) -> list[dict[str, Any]]:
    lone, redis_calls, load = res["lone"], res["redis"], res["load"]
    floor, noop, search = lone["floor"]["p50_ms"], lone["celery_noop"]["p50_ms"], lone["search"]["p50_ms"]
    budget = round(floor + noop + GOAL_OWN_MS, 3)
    trips = res["trace"].get("round_trips_per_search")
    out = [
        {"goal": "lone search p50 ≤ Celery no-op p50 + HTTP floor p50 + 0.7 ms", "target": f"≤ {budget} ms",
         "measured": f"{search} ms (vecq's own: {lone['vecq_own_ms']} ms)", "met": search <= budget},
        {"goal": f"Redis calls per lone search ≤ {GOAL_REDIS_CALLS} (Celery's own included)",
         "target": f"≤ {GOAL_REDIS_CALLS}",
         "measured": f"{redis_calls['per_search_total']} commands (INFO commandstats), {trips} round trips "
                     f"(MONITOR)", "met": redis_calls["per_search_total"] <= GOAL_REDIS_CALLS},
    ]
    if load.get("ratio") is not None:
        out.append({"goal": f"API CPU per search at c={load['concurrency']} ≤ {GOAL_CPU_RATIO}x a bare FastAPI JSON "
                            "endpoint's per request", "target": f"≤ {GOAL_CPU_RATIO}x",
                    "measured": f"{load['ratio']}x ({load['vecq_api_cpu_ms']} vs {load['bare_api_cpu_ms']} ms)",
                    "met": load["ratio"] <= GOAL_CPU_RATIO})
    return out


def run(quick: bool, out_dir: Path, **overrides: Any) -> dict[str, Any]:
    """The whole section: measure, write `latency.md` and `latency.json` into `out_dir`, return the figures."""
    from bench import latency_report

    cfg = config(quick, **overrides)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vecq-latency-") as tmp:
        result = Bench(cfg, Path(tmp), out_dir).go()
    result["command"] = "python -m bench --only latency" + (" --quick" if quick else "") + (
        " --lat-profile" if cfg.flamegraphs else "")
    (out_dir / "latency.json").write_text(json.dumps(result, indent=1, default=str))
    (out_dir / "latency.md").write_text(latency_report.render(result))
    return result
