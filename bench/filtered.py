"""Filtered search (issue #15) measured on a private vecq stack: `python -m bench.filtered [--quick]`.

    python -m bench.filtered            # 200k x 128 HNSW32 + 20k x 32 Flat, about 10 minutes on 2 cores
    python -m bench.filtered --quick    # small sizes, well under a minute (tests/test_bench_filtered_smoke.py)

What it measures, in one run (the results: `filtered.md` and `filtered.json` in the output directory):

1. HNSW: n clustered vectors (bench/data.py) with `{"tag": t}`, t = a shuffled i % 1,000, sealed into one
   segment. Filters matching 50 %, 10 %, 1 % and 0.1 % of the rows (`tag < 500`, `< 100`, `< 10`, `tag == 7`):
   recall@k against an exact brute force over the matching rows (numpy, float64, in this process), queries
   answered with fewer than k hits, the `plan` each answer reports, p50 of single searches at c=1 (the filters
   and the unfiltered search measured in alternating rounds, the median of the rounds' p50s) and QPS at c=16.
2. `VECQ_FILTER_EXACT_BELOW`: the same collection, the workers restarted with the threshold forced to 0 (the
   index path; the exact plan only when the index returns fewer than k) and to more than n (always exact), at
   more selectivities: p50 and recall of each path, where their latencies cross, and a recommended value.
3. Flat: random filters over every operator on random metadata (upserts, deletes, a sealed and a growing
   segment): the ids must equal a numpy brute force over the rows `common.filters.matches` accepts, and
   `/count` must equal the number of those rows.

Like the rest of bench/, this process never imports faiss: the workers build and search, numpy checks.
`run(quick, out_dir)` is the entry point `make bench` calls; it returns the figures and writes the section.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench import data, loadgen
from bench.loadgen import LoadSpec
from bench.service import Vecq
from common import filters
from common.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
THRESHOLD = "VECQ_FILTER_EXACT_BELOW"
DEFAULT_THRESHOLD = int(Settings.model_fields["filter_exact_below"].default)
# Sealing happens when the benchmark asks, once, into one segment: no automatic seal or compaction meanwhile.
STACK_ENV = {"VECQ_SEAL_EVERY_ROWS": str(10**9), "VECQ_SEAL_EVERY_BYTES": str(1 << 40),
             "VECQ_COMPACT_MAX_SEGMENTS": "1000", "VECQ_COMPACT_DEAD_FRACTION": "1"}


@dataclass
class Config:
    n: int = 200_000
    dim: int = 128
    spec: str = "HNSW32"
    tag_values: int = 1000
    goal_fractions: tuple[float, ...] = (0.5, 0.1, 0.01, 0.001)  # the four filters
    sweep_fractions: tuple[float, ...] = (0.001, 0.005, 0.01, 0.02, 0.05, 0.075, 0.1, 0.2, 0.5)  # the threshold sweep
    queries: int = 200  # recall queries per filter
    k: int = 10
    ef_search: int = 64  # as in `python -m bench`
    latency_requests: int = 300  # single searches per filter and round, c=1
    latency_rounds: int = 3  # alternating rounds of every filter; the median p50 is reported
    latency_seconds: float = 15.0  # bound of one latency level
    warmup: float = 0.5
    qps: bool = True  # a c=16 level per filter
    qps_concurrency: int = 16
    qps_seconds: float = 3.0
    qps_requests: int = 5000
    sweep_requests: int = 200  # single searches per filter and threshold, c=1
    sweep_seconds: float = 8.0
    sweep_low: int = 0  # VECQ_FILTER_EXACT_BELOW forcing the index path
    flat_n: int = 20_000
    flat_dim: int = 32
    flat_sealed: int = 15_000  # rows sealed into a segment; the rest stay in the growing one
    flat_changed: int = 500  # sealed rows upserted (new vector and metadata), and as many deleted
    flat_filters: int = 1000
    flat_doc_pool: int = 1000  # distinct metadata documents, each row gets one (the reference runs per document)
    workers: int = 2
    api_processes: int = 2
    batch: int = 10_000  # vectors per JSON ingest request
    seed: int = 0
    quick: bool = False


QUICK = {"n": 10_000, "dim": 32, "queries": 50, "latency_requests": 60, "latency_rounds": 1, "latency_seconds": 5.0,
         "warmup": 0.2, "qps": False, "sweep_fractions": (0.001, 0.01, 0.5),
         "sweep_requests": 30, "sweep_seconds": 2.0, "flat_n": 3000, "flat_sealed": 2000, "flat_changed": 100,
         "flat_filters": 200, "flat_doc_pool": 300, "api_processes": 1, "quick": True}


def config(quick: bool, **overrides: Any) -> Config:
    return replace(Config(**(QUICK if quick else {})), **overrides)


def say(msg: str) -> None:
    print(f"[filtered {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# Filters ------------------------------------------------------------------------------------------------
def tag_filter(fraction: float, values: int) -> dict[str, Any]:
    """The filter on `tag` matching `fraction` of the rows: one value for the smallest, else a range."""
    cut = round(fraction * values)
    if cut < 1:
        raise ValueError(f"{fraction:%} of {values} tag values is no value")
    return {"tag": 7 % values} if cut == 1 else {"tag": {"$lt": cut}}


def label(fraction: float) -> str:
    return f"{fraction * 100:g}%"


PATHS = ["a", "b", "c.d", "tags"]  # as tests/test_filters.py: numbers vs booleans, 1 vs 1.0, lists, nested paths
VALUES: list[Any] = [0, 1, 1.0, 2, 2.5, -1, True, False, "", "a", "b", "ab"]
RANGE_VALUES: list[Any] = [0, 1, 1.5, 2, -1, "", "a", "ab", "b"]


def random_condition(rng: random.Random) -> Any:
    if rng.random() < 0.3:
        return rng.choice(VALUES)
    ops: dict[str, Any] = {}
    for _ in range(rng.randint(1, 2)):
        op = rng.choice(filters.FIELD_OPERATORS)
        if op in ("$eq", "$ne"):
            ops[op] = rng.choice(VALUES)
        elif op in ("$in", "$nin"):
            ops[op] = [rng.choice(VALUES) for _ in range(rng.choice([0, 1, 2, 3]))]
        elif op == "$exists":
            ops[op] = rng.random() < 0.5
        else:
            ops[op] = rng.choice(RANGE_VALUES)
    return ops


def random_filter(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    """A random filter over every field and logical operator of docs/filters.md."""
    raw: dict[str, Any] = {}
    for _ in range(rng.randint(1, 3)):
        if depth < 3 and rng.random() < 0.35:
            key = rng.choice(filters.LOGICAL_OPERATORS)
            raw[key] = random_filter(rng, depth + 1) if key == "$not" else \
                [random_filter(rng, depth + 1) for _ in range(rng.randint(1, 3))]
        else:
            raw[rng.choice(PATHS)] = random_condition(rng)
    return raw


def random_value(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.1:
        return None
    if r < 0.6:
        return rng.choice(VALUES)
    return [rng.choice([*VALUES, None]) for _ in range(rng.randint(0, 3))]


def random_doc(rng: random.Random) -> dict[str, Any] | None:
    if rng.random() < 0.05:
        return None
    doc: dict[str, Any] = {key: random_value(rng) for key in ("a", "b", "tags") if rng.random() < 0.8}
    r = rng.random()
    if r < 0.3:
        doc["c"] = {"d": random_value(rng)}
    elif r < 0.45:
        doc["c"] = [{"d": random_value(rng)}, {"e": 1}, {"d": random_value(rng)}]
    elif r < 0.5:
        doc["c"] = rng.choice([None, {}, "d"])
    return doc


# Measuring ----------------------------------------------------------------------------------------------
def brute_top_k(vectors: np.ndarray, rows: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k among `rows` (float64 squared L2, ties to the lower row) per query; -1 where fewer."""
    out = np.full((len(queries), k), -1, dtype=np.int64)
    if len(rows):
        top = data.exact_top_k(vectors[rows], queries, k)
        out[:, : top.shape[1]] = rows[top]
    return out


def short_of(hits: list[int], matching: int, k: int) -> bool:
    return len(hits) < min(k, matching)


def recall(found: list[list[int]], truth: np.ndarray) -> float | None:
    """Mean |found ∩ truth| / |truth| per query (|truth| = min(k, matching rows)); None if nothing can match."""
    scores = []
    for hits, row in zip(found, truth.tolist(), strict=True):
        want = {r for r in row if r >= 0}
        if want:
            scores.append(len(set(hits) & want) / len(want))
    return round(float(np.mean(scores)), 4) if scores else None


def median(values: list[float]) -> float | None:
    return round(float(np.median(values)), 3) if values else None


class Bench:
    def __init__(self, cfg: Config, tmp: Path) -> None:
        self.cfg = cfg
        self.tmp = tmp
        self.vq = Vecq(tmp / "vecq", cfg.workers, api_processes=cfg.api_processes, env=dict(STACK_ENV))
        self.watch: dict[str, list[int]] = {}
        rng = np.random.default_rng(cfg.seed)
        self.vectors, self.queries = data.clustered(cfg.n, cfg.dim, cfg.queries, cfg.seed)
        self.tags = rng.permutation(cfg.n) % cfg.tag_values
        np.save(tmp / "queries.npy", self.queries)
        self.name = "filtered-" + cfg.spec.lower()
        self.truth: dict[float | None, np.ndarray] = {}

    # Stack --------------------------------------------------------------------------------------------------
    def start(self, threshold: int) -> None:
        self.vq.start(worker_env={THRESHOLD: str(threshold)})
        self.watch = self.vq.pids()

    def restart(self, threshold: int) -> float:
        started = time.perf_counter()
        self.vq.restart_workers({THRESHOLD: str(threshold)})
        self.vq.warm(self.name, self.body(None, self.queries[0]))
        self.watch = self.vq.pids()
        return round(time.perf_counter() - started, 2)

    def body(self, f: dict[str, Any] | None, q: np.ndarray | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"k": self.cfg.k}
        if "HNSW" in self.cfg.spec.upper():
            out["params"] = {"efSearch": self.cfg.ef_search}
        if f is not None:
            out["filter"] = f
        if q is not None:
            out["vector"] = q
        return out

    def ingest(self, name: str, ids: list[str], vectors: np.ndarray, metadata: list[Any]) -> float:
        """JSON batches with metadata, one at a time, each waited for; returns the seconds. In order: the WAL
        order is the segment's row order, and the HNSW graph depends on it (two in flight made recall at a
        filter move by +-0.01 from run to run)."""
        b = self.cfg.batch

        def send(s: int) -> None:
            body = orjson.dumps({"vectors": vectors[s: s + b], "ids": ids[s: s + b], "metadata": metadata[s: s + b]},
                                option=orjson.OPT_SERIALIZE_NUMPY)
            resp = self.vq.client.post(f"/v1/collections/{name}/vectors", params={"wait": 300}, content=body,
                                       headers={"content-type": "application/json"})
            self.vq.finish(resp, f"ingest into {name}")

        started = time.perf_counter()
        for s in range(0, len(ids), b):
            send(s)
        return round(time.perf_counter() - started, 2)

    def seal(self, name: str) -> float:
        started = time.perf_counter()
        resp = self.vq.client.post(f"/v1/collections/{name}/seal", params={"wait": 300})
        self.vq.finish(resp, f"seal of {name}")
        return round(time.perf_counter() - started, 2)

    def describe(self, name: str) -> dict[str, Any]:
        col = self.vq.client.get(f"/v1/collections/{name}").json()
        return {k: col.get(k) for k in ("count", "sealed_rows", "growing_rows")} | {
            "segments": len(col.get("segments") or [])}

    # Searches ---------------------------------------------------------------------------------------------
    def collect(self, name: str, f: dict[str, Any] | None, queries: np.ndarray,
                threads: int = 4) -> tuple[list[list[int]], Counter[str], list[float]]:
        """Every query once: hit rows (ids are row numbers), the plans reported, the worker's took_ms."""
        def one(q: np.ndarray) -> tuple[list[int], str, float]:
            resp = self.vq.client.post(f"/v1/collections/{name}/search", params={"wait": 120},
                                       content=orjson.dumps(self.body(f, q), option=orjson.OPT_SERIALIZE_NUMPY),
                                       headers={"content-type": "application/json"})
            if resp.status_code != 200:
                raise RuntimeError(f"search {f}: HTTP {resp.status_code} {resp.text[:300]}")
            res = resp.json()
            return [int(h["id"]) for h in res["results"][0]], str(res.get("plan")), float(res.get("took_ms") or 0)

        with ThreadPoolExecutor(threads) as pool:
            answers = list(pool.map(one, queries))
        return [a[0] for a in answers], Counter(a[1] for a in answers), [a[2] for a in answers]

    def level(self, f: dict[str, Any] | None, c: int, requests: int, seconds: float) -> dict[str, Any]:
        spec = LoadSpec(url=f"{self.vq.url}/v1/collections/{self.name}/search", concurrency=c, max_requests=requests,
                        max_seconds=seconds, warmup_s=self.cfg.warmup, queries_path=str(self.tmp / "queries.npy"),
                        template=self.body(f), watch=self.watch)
        res = loadgen.run(spec).summary()
        if res["errors"]:
            say(f"  {res['errors']} errors, e.g. {res['error_samples'][:1]}")
        cpu = res.get("cpu") or {}
        return {k: res[k] for k in ("requests", "errors", "qps", "p50_ms", "p90_ms", "p99_ms")} | {
            "others_cores": cpu.get("others_cores")}

    def truth_of(self, fraction: float | None) -> tuple[np.ndarray, int]:
        """The exact top k among the rows the filter of `fraction` matches (as tag_filter writes it)."""
        if fraction is None:
            rows = np.arange(self.cfg.n)
        else:
            f = tag_filter(fraction, self.cfg.tag_values)["tag"]
            rows = np.flatnonzero(self.tags < f["$lt"] if isinstance(f, dict) else self.tags == f)
        if fraction not in self.truth:
            self.truth[fraction] = brute_top_k(self.vectors, rows, self.queries, self.cfg.k)
        return self.truth[fraction], len(rows)

    def quality(self, fraction: float | None) -> dict[str, Any]:
        """Recall, short answers and plans of every query once, with this filter, one search at a time; and the
        worker's own time per search (`took_ms`: the search inside the worker, no HTTP, API or queue)."""
        f = None if fraction is None else tag_filter(fraction, self.cfg.tag_values)
        truth, matching = self.truth_of(fraction)
        found, plans, took = self.collect(self.name, f, self.queries, threads=1)  # one query per search call
        return {"filter": f, "matching": matching, "queries": len(found), "recall": recall(found, truth),
                "short": sum(short_of(h, matching, self.cfg.k) for h in found), "plans": dict(plans),
                "worker_p50_ms": median(took), "worker_p90_ms": round(float(np.percentile(took, 90)), 3)}

    # Phases -----------------------------------------------------------------------------------------------
    def load_hnsw(self) -> dict[str, Any]:
        cfg = self.cfg
        say(f"{cfg.spec}: ingest {cfg.n:,} x {cfg.dim} with {{'tag': 0..{cfg.tag_values - 1}}}")
        resp = self.vq.client.post("/v1/collections", json={"name": self.name, "dim": cfg.dim, "metric": "l2",
                                                            "index": cfg.spec})
        if resp.status_code != 201:
            raise RuntimeError(f"create {self.name}: HTTP {resp.status_code} {resp.text[:300]}")
        ingest_s = self.ingest(self.name, [str(i) for i in range(cfg.n)], self.vectors,
                               [{"tag": int(t)} for t in self.tags])
        say(f"  ingested in {ingest_s} s; sealing into one segment")
        seal_s = self.seal(self.name)
        shape = self.describe(self.name)
        if shape != {"count": cfg.n, "sealed_rows": cfg.n, "growing_rows": 0, "segments": 1}:
            raise RuntimeError(f"expected {cfg.n} rows in one sealed segment, got {shape}")
        warm = self.vq.warm(self.name, self.body(None, self.queries[0]))
        say(f"  sealed in {seal_s} s; every worker answered after {warm['seconds']} s")
        return {"ingest_s": ingest_s, "seal_s": seal_s, "warm_s": warm["seconds"], **shape}

    def goals_run(self) -> dict[str, Any]:
        """Default threshold: quality, then alternating c=1 latency rounds, then QPS at c=16."""
        cfg = self.cfg
        fractions: list[float | None] = [None, *cfg.goal_fractions]
        out: dict[str, Any] = {}
        for fr in fractions:
            out[label(fr) if fr else "none"] = q = self.quality(fr)
            say(f"  filter {q['filter']}: {q['matching']:,} rows match, recall@{cfg.k} {q['recall']}, "
                f"short {q['short']}/{q['queries']}, plans {q['plans']}")
        rounds: dict[str, list[dict[str, Any]]] = {key: [] for key in out}
        for r in range(cfg.latency_rounds):
            for fr in fractions:
                key = label(fr) if fr else "none"
                f = None if fr is None else tag_filter(fr, cfg.tag_values)
                rounds[key].append(self.level(f, 1, cfg.latency_requests, cfg.latency_seconds))
            say(f"  c=1 round {r + 1}: " + ", ".join(f"{k} {v[-1]['p50_ms']} ms" for k, v in rounds.items()))
        for key, levels in rounds.items():
            out[key]["p50_ms"] = median([lv["p50_ms"] for lv in levels if lv["p50_ms"] is not None])
            out[key]["p99_ms"] = median([lv["p99_ms"] for lv in levels if lv["p99_ms"] is not None])
            out[key]["c1_rounds"] = levels
        c = cfg.qps_concurrency
        for fr in fractions if cfg.qps else []:
            key = label(fr) if fr else "none"
            f = None if fr is None else tag_filter(fr, cfg.tag_values)
            out[key][f"c{c}"] = lv = self.level(f, c, cfg.qps_requests, cfg.qps_seconds)
            say(f"  c={c} {key}: {lv['qps']} QPS, p50 {lv['p50_ms']} ms")
        return out

    def sweep_run(self) -> dict[str, Any]:
        cfg = self.cfg
        out: dict[str, Any] = {}
        for fr in cfg.sweep_fractions:
            q = self.quality(fr)
            q.update(self.level(tag_filter(fr, cfg.tag_values), 1, cfg.sweep_requests, cfg.sweep_seconds))
            out[label(fr)] = q
            say(f"  {label(fr)} ({q['matching']:,} rows): p50 {q['p50_ms']} ms, recall {q['recall']}, "
                f"short {q['short']}, plans {q['plans']}")
        return out

    def flat_run(self) -> dict[str, Any]:
        """Random filters on a Flat collection: ids equal to a numpy brute force over the matching rows."""
        cfg = self.cfg
        name, dim, n = "filtered-flat", cfg.flat_dim, cfg.flat_n
        prng, rng = random.Random(cfg.seed + 15), np.random.default_rng(cfg.seed + 15)
        pool = [random_doc(prng) for _ in range(cfg.flat_doc_pool)]
        vectors, queries = data.clustered(n, dim, cfg.flat_filters, cfg.seed + 1)
        vectors = vectors.astype(np.float32)
        doc_of = rng.integers(0, len(pool), size=n)
        alive = np.ones(n, dtype=bool)
        ids = [f"f{i}" for i in range(n)]
        say(f"Flat: {n:,} x {dim}, {cfg.flat_sealed:,} sealed, {cfg.flat_changed} upserts and deletes, "
            f"{cfg.flat_filters} random filters")
        resp = self.vq.client.post("/v1/collections", json={"name": name, "dim": dim, "metric": "l2", "index": "Flat"})
        if resp.status_code != 201:
            raise RuntimeError(f"create {name}: HTTP {resp.status_code} {resp.text[:300]}")
        s = cfg.flat_sealed
        self.ingest(name, ids[:s], vectors[:s], [pool[d] for d in doc_of[:s]])
        self.seal(name)
        self.ingest(name, ids[s:], vectors[s:], [pool[d] for d in doc_of[s:]])
        changed = rng.choice(s, size=2 * cfg.flat_changed, replace=False)
        upserted, deleted = np.sort(changed[: cfg.flat_changed]), changed[cfg.flat_changed:]
        vectors[upserted] = data.clustered(len(upserted), dim, 1, cfg.seed + 2)[0]
        doc_of[upserted] = rng.integers(0, len(pool), size=len(upserted))
        self.ingest(name, [ids[i] for i in upserted], vectors[upserted], [pool[d] for d in doc_of[upserted]])
        resp = self.vq.client.post(f"/v1/collections/{name}/vectors/delete", params={"wait": 60},
                                   json={"ids": [ids[i] for i in deleted]})
        self.vq.finish(resp, "delete")
        alive[deleted] = False
        shape = self.describe(name)
        # Log order decides ties (never expected with these floats): the upserts are the newest rows.
        order = np.concatenate([np.setdiff1d(np.arange(n), upserted), upserted])
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        data64 = vectors.astype(np.float64)

        raws = [random_filter(prng) for _ in range(cfg.flat_filters)]

        def check(i: int) -> dict[str, Any]:
            raw = raws[i]
            f = filters.parse(raw)
            docs_ok = np.array([filters.matches(f, d) for d in pool])
            rows = np.flatnonzero(docs_ok[doc_of] & alive)
            q = queries[i]
            dist = ((data64[rows] - q.astype(np.float64)) ** 2).sum(1)
            want = rows[np.lexsort((rank[rows], dist))[: cfg.k]]
            body = {"vector": q, "k": cfg.k, "filter": raw}
            resp = self.vq.client.post(f"/v1/collections/{name}/search", params={"wait": 60},
                                       content=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
                                       headers={"content-type": "application/json"})
            if resp.status_code != 200:
                return {"i": i, "error": f"HTTP {resp.status_code} {resp.text[:200]}", "filter": raw}
            res = resp.json()
            got = [int(h["id"][1:]) for h in res["results"][0]]
            counted = self.vq.client.post(f"/v1/collections/{name}/count", params={"wait": 60},
                                          json={"filter": raw}).json().get("count")
            same = got == want.tolist()
            tie = False
            if not same and len(got) == len(want):  # equal distances, another order: a float tie, not a bug
                d_got = ((data64[got] - q.astype(np.float64)) ** 2).sum(1)
                tie = bool(np.allclose(np.sort(d_got), np.sort(dist[np.isin(rows, want)]), rtol=1e-6, atol=0))
            return {"i": i, "same": same, "tie": tie, "matching": len(rows), "count_ok": counted == len(rows),
                    "plan": res.get("plan"), "hits": len(got), "filter": raw, "got": got, "want": want.tolist()}

        started = time.perf_counter()
        with ThreadPoolExecutor(4) as pool_x:
            checks = list(pool_x.map(check, range(len(raws))))
        errors = [c for c in checks if "error" in c]
        ok = [c for c in checks if "error" not in c]
        wrong = [c for c in ok if not c["same"]]
        bad_counts = [c for c in ok if not c["count_ok"]]
        matching = np.array([c["matching"] for c in ok])
        self.vq.delete(name)
        return {"n": n, "dim": dim, "filters": len(raws), "collection": shape, "distinct_docs": len(pool),
                "upserted": len(upserted), "deleted": len(deleted), "seconds": round(time.perf_counter() - started, 1),
                "errors": len(errors), "mismatches": len(wrong), "tie_mismatches": sum(c["tie"] for c in wrong),
                "count_mismatches": len(bad_counts),
                "matching_none": int((matching == 0).sum()), "matching_fewer_than_k": int((matching < cfg.k).sum()),
                "matching_median": int(np.median(matching)) if len(matching) else 0,
                "plans": dict(Counter(str(c["plan"]) for c in ok)),
                "samples": [{k: c.get(k) for k in ("filter", "got", "want", "error", "matching")}
                            for c in (errors + wrong + bad_counts)[:3]]}

    def go(self) -> dict[str, Any]:
        cfg = self.cfg
        started = time.time()
        from bench.report import machine

        result: dict[str, Any] = {"config": asdict(cfg), "machine": machine(), "load_before": list(os.getloadavg()),
                                  "default_threshold": DEFAULT_THRESHOLD}
        say(f"stack: embedded Redis, {cfg.workers} workers, {cfg.api_processes} API process(es), "
            f"{THRESHOLD}={DEFAULT_THRESHOLD}")
        self.start(DEFAULT_THRESHOLD)
        try:
            result["hnsw_build"] = self.load_hnsw()
            say(f"goals, {THRESHOLD}={DEFAULT_THRESHOLD} (the default)")
            result["goals_run"] = self.goals_run()
            result["flat"] = self.flat_run()
            say(f"  Flat: {result['flat']['mismatches']} mismatches of {result['flat']['filters']}, "
                f"{result['flat']['count_mismatches']} wrong counts, {result['flat']['errors']} errors")
            result["sweep"] = {}
            for path, value in (("index", cfg.sweep_low), ("exact", cfg.n + 1)):
                restart_s = self.restart(value)
                say(f"threshold sweep, {THRESHOLD}={value} (the {path} path; workers restarted in {restart_s} s)")
                result["sweep"][path] = {"threshold": value, "restart_s": restart_s, "levels": self.sweep_run()}
        except Exception:
            say("failed; last lines of the stack's logs:\n" + self.vq.logs())
            raise
        finally:
            self.vq.stop()
        result["recommendation"] = recommend(result["sweep"], cfg.k)
        result["goals"] = goals(result, cfg)
        result["load_after"] = list(os.getloadavg())
        result["duration_s"] = round(time.time() - started, 1)
        return result


# Conclusions --------------------------------------------------------------------------------------------
def crossover(points: list[tuple[int, float, float]]) -> tuple[float | None, str]:
    """Where exact p50 - index p50 turns from negative (exact faster) to positive, by match count; interpolated
    on log(count). `points`: (matching rows, index p50, exact p50), by count."""
    diffs = [(m, e - i) for m, i, e in points]
    if all(d > 0 for _, d in diffs):
        return None, f"the index path is faster at every measured count (from {diffs[0][0]:,} rows)"
    if all(d <= 0 for _, d in diffs):
        return None, f"the exact path is as fast or faster at every measured count (up to {diffs[-1][0]:,} rows)"
    for (m0, d0), (m1, d1) in itertools.pairwise(diffs):
        if d0 <= 0 < d1:
            t = -d0 / (d1 - d0)
            at = math.exp(math.log(m0) + t * (math.log(m1) - math.log(m0)))
            return at, f"between {m0:,} and {m1:,} matching rows"
    return None, "no single crossing (noisy): see the table"


def nice_up(x: float) -> int:
    """Rounded up to 1, 2 or 5 times a power of ten."""
    if x <= 0:
        return 0
    p = 10 ** math.floor(math.log10(x))
    return int(min(m for m in (1, 2, 5, 10) if m * p >= x) * p)


def latency_bound(idx: dict[str, Any], ex: dict[str, Any], keys: list[str], metric: str) -> dict[str, Any]:
    """Match count below which the exact path is faster, by one latency measure (None when never or always)."""
    points = [(idx[key]["matching"], idx[key][metric], ex[key][metric]) for key in keys
              if idx[key].get(metric) is not None and ex[key].get(metric) is not None]
    at, where = crossover(points) if points else (None, "no latencies")
    # No crossing: exact everywhere measured (bound above the largest count), or index everywhere (no bound).
    exact_wins = bool(points) and points[-1][2] <= points[-1][1]
    bound = at if at is not None else points[-1][0] + 1 if exact_wins else 0
    return {"rows": round(at) if at else None, "where": where, "bound": round(bound),
            "points": [{"matching": m, "index_ms": i, "exact_ms": e} for m, i, e in points]}


def recommend(sweep: dict[str, Any], k: int) -> dict[str, Any]:
    """The threshold: at least the latency crossover of the search inside the worker (what the threshold changes;
    the HTTP and API time around it is the same for both paths, and on a shared machine the noisier part), rounded
    up to 1, 2 or 5 x 10^n, and at least the smallest measured count from which the index path is good enough."""
    idx, ex = sweep["index"]["levels"], sweep["exact"]["levels"]
    keys = sorted(idx, key=lambda key: idx[key]["matching"])
    worker = latency_bound(idx, ex, keys, "worker_p50_ms")
    e2e = latency_bound(idx, ex, keys, "p50_ms")
    # The index path must also be good enough wherever the threshold sends searches to it: recall, k hits, and
    # not mostly the exact fallback after an index search that found fewer than k (then exact alone is cheaper).
    # Between two measured counts nothing is known: the bound is the first measured count above the largest weak
    # one (searches matching fewer rows go exact), or above every count if the largest is weak.
    weak = [idx[key]["matching"] for key in keys if (idx[key]["recall"] or 0) < 0.95 or idx[key]["short"]
            or idx[key]["plans"].get("exact", 0) * 2 > idx[key]["queries"]]
    counts = [idx[key]["matching"] for key in keys]
    need = min((m for m in counts if m > max(weak)), default=max(weak) + 1) if weak else 0
    return {"worker": worker, "end_to_end": e2e, "recall_bound_rows": need, "index_path_weak_at": weak,
            "value": max(nice_up(worker["bound"]), need)}


def goals(res: dict[str, Any], cfg: Config) -> list[dict[str, Any]]:
    run, out = res["goals_run"], []
    for fr in cfg.goal_fractions:
        r = run[label(fr)]
        out.append({"goal": f"{label(fr)} filter ({r['matching']:,} rows): recall@{cfg.k} >= 0.95",
                    "target": ">= 0.95", "measured": r["recall"], "met": (r["recall"] or 0) >= 0.95})
    shorts = {key: r["short"] for key, r in run.items()}
    sweep_shorts = {f"{p}/{key}": lv["short"] for p, s in res["sweep"].items() for key, lv in s["levels"].items()}
    total = sum(shorts.values()) + sum(sweep_shorts.values())
    queries = sum(r["queries"] for r in run.values()) + sum(
        lv["queries"] for s in res["sweep"].values() for lv in s["levels"].values())
    out.append({"goal": "always k hits (queries with fewer than min(k, matching rows), over every pass)",
                "target": "0", "measured": f"{total} of {queries}", "met": total == 0})
    one = label(0.01)
    if one in run and run["none"]["p50_ms"] and run[one]["p50_ms"]:
        ratio = round(run[one]["p50_ms"] / run["none"]["p50_ms"], 2)
        out.append({"goal": "p50 at 1 % <= 1.5 x unfiltered p50 (c=1, same run)", "target": "<= 1.5",
                    "measured": f"{ratio} ({run[one]['p50_ms']} / {run['none']['p50_ms']} ms)", "met": ratio <= 1.5})
        w_none, w_one = run["none"].get("worker_p50_ms"), run[one].get("worker_p50_ms")
        if w_none and w_one:
            ratio = round(w_one / w_none, 2)
            out.append({"goal": "the same inside the worker (took_ms p50, one search at a time)", "target": "<= 1.5",
                        "measured": f"{ratio} ({w_one} / {w_none} ms)", "met": ratio <= 1.5})
    flat = res["flat"]
    out.append({"goal": f"Flat: {flat['filters']} random filters, ids equal to brute force", "target": "0 mismatches",
                "measured": f"{flat['mismatches']} mismatches, {flat['errors']} errors",
                "met": flat["mismatches"] == 0 and flat["errors"] == 0})
    out.append({"goal": "Flat: /count equals the brute-force count", "target": "0 wrong",
                "measured": f"{flat['count_mismatches']} wrong", "met": flat["count_mismatches"] == 0})
    return out


def run(quick: bool, out_dir: Path, **overrides: Any) -> dict[str, Any]:
    """The whole section: measure, write `filtered.md` and `filtered.json` into `out_dir`, return the figures."""
    from bench import filtered_report

    cfg = config(quick, **overrides)
    with tempfile.TemporaryDirectory(prefix="vecq-filtered-") as tmp:
        result = Bench(cfg, Path(tmp)).go()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "filtered.json").write_text(json.dumps(result, indent=1, default=str))
    (out_dir / "filtered.md").write_text(filtered_report.render(result))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.filtered", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes: well under a minute")
    p.add_argument("--out", type=Path, help="results directory (default bench/results; --quick: bench/results/quick)")
    p.add_argument("--n", type=int, help="HNSW collection rows")
    p.add_argument("--render", type=Path, metavar="JSON", help="only rewrite filtered.md from an earlier run's JSON")
    args = p.parse_args(argv)
    out = args.out or ROOT / "bench" / "results" / ("quick" if args.quick else "")
    if args.render:  # the conclusions again, from the measurements
        from bench import filtered_report

        res = json.loads(args.render.read_text())
        res["recommendation"] = recommend(res["sweep"], res["config"]["k"])
        res["goals"] = goals(res, replace(Config(), **{k: tuple(v) if isinstance(v, list) else v
                                                       for k, v in res["config"].items()}))
        out.mkdir(parents=True, exist_ok=True)
        (out / "filtered.json").write_text(json.dumps(res, indent=1, default=str))
        (out / "filtered.md").write_text(filtered_report.render(res))
        return 0
    result = run(args.quick, out, **({"n": args.n} if args.n else {}))
    from bench import filtered_report

    print(filtered_report.render(result))
    return 0  # goals not met are reported, not failed: the figures are the product


if __name__ == "__main__":
    sys.exit(main())
