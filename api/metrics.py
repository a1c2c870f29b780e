"""Prometheus metrics: HTTP metrics of this API process, and cluster state read from Redis at scrape time.

- Per process (HttpMetrics, one registry per app; the series prometheus-fastapi-instrumentator made):
  `vecq_http_requests_total` and the `vecq_http_request_duration_seconds` histogram, by route template
  (`handler`), method and status. With
  several uvicorn processes, set PROMETHEUS_MULTIPROC_DIR and every scrape sums all of them.
- Cluster-wide (api/ops.py, recomputed on every scrape, the same whichever process answers): jobs by type and
  final status, queue depth, live workers, per worker and per collection applied-LSN lag, vectors and index
  bytes per collection.
- Of the process that answers the scrape, read at scrape time: its coalescing lanes and the searches waiting in
  them for a batch slot (api/searcher.py), the two numbers that must stay bounded whatever clients send.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.ops import Snapshot, copies, lsn_seconds
from api.searcher import Searcher
from api.writer import Writer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


HANDLER_SCOPE_KEY = "vecq.handler"  # a route template set by code that answers without FastAPI's routing
UNTEMPLATED = "none"  # unknown paths: bounded label values
EXCLUDED = frozenset({"/metrics"})  # scrapes are not counted


def instrument(app: FastAPI) -> CollectorRegistry:
    """Count and time every request of `app` in a registry of its own (so several apps in one process,
    as in tests, never clash), and return that registry."""
    disable_created_metrics()  # no `_created` series: they double the output and dashboards ignore them
    registry = CollectorRegistry(auto_describe=True)
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    labels = ["handler", "method", "status"]
    requests = Counter("http_requests_total", "Total number of requests by method, status and handler.",
                       labelnames=labels, namespace="vecq", registry=registry)
    latency = Histogram("http_request_duration_seconds", "Duration of HTTP requests in seconds",
                        labelnames=labels, buckets=LATENCY_BUCKETS, namespace="vecq", registry=registry)
    app.state.http_series = HttpSeries(requests, latency)
    app.add_middleware(HttpMetrics, series=app.state.http_series)
    return registry


class HttpSeries:
    """The HTTP request series: one count and one duration per (route template, method, status). Recorded by
    HttpMetrics for every request, and by the search fast path (api/fast_search.py) for those it answers."""

    def __init__(self, requests: Counter, latency: Histogram) -> None:
        self.requests = requests
        self.latency = latency
        # Each label set's two series, looked up once: `labels()` checks and locks on every call. Bounded: route
        # templates (or "none") x methods x statuses.
        self._series: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def observe(self, handler: str, method: str, status: int, seconds: float) -> None:
        if handler in EXCLUDED:
            return
        labels = (handler, method, str(status))
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = (self.requests.labels(*labels), self.latency.labels(*labels))
        series[0].inc()
        series[1].observe(max(seconds, 0.0))


class HttpMetrics:
    """Pure ASGI middleware, the outermost of vecq's: counts and times each request by route template, method and
    status (the searches the fast path answers in front of it, it counts itself in the same HttpSeries).

    The series are prometheus-fastapi-instrumentator's (the names, labels and buckets dashboards know); what
    changed is how the template is found: from the route the router matched (`scope["route"]`, or the one a fast
    path names), not by matching every route again before each request (a tenth of the API's CPU per search)."""

    def __init__(self, app: ASGIApp, series: HttpSeries) -> None:
        self.app = app
        self.series = series

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts: an exception escaped the app

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.series.observe(_handler(scope), scope["method"], status, time.perf_counter() - started)


def _handler(scope: Scope) -> str:
    named = scope.get(HANDLER_SCOPE_KEY)
    if isinstance(named, str):
        return named
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNTEMPLATED


def render(process_registry: CollectorRegistry, snap: Snapshot, searcher: Searcher | None = None,
           writer: Writer | None = None) -> bytes:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:  # every uvicorn process's HTTP metrics, summed
        process_registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(process_registry)
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(_Cluster(snap))
    if searcher is not None:
        scrape.register(_Lanes(searcher, writer))
    return generate_latest(process_registry) + generate_latest(scrape)


class _Lanes:
    """A one-shot collector of this process's coalescing state."""

    def __init__(self, searcher: Searcher, writer: Writer | None) -> None:
        self.searcher = searcher
        self.writer = writer

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("vecq_search_lanes", "Coalescing lanes this API process holds (one per collection, "
                                "consistency, session min_lsn and params with searches in it).",
                                value=len(self.searcher.lanes))
        yield GaugeMetricFamily("vecq_search_pending", "Searches waiting in this API process's lanes for a batch "
                                "slot.", value=self.searcher.pending_count())
        if self.writer is not None:
            yield GaugeMetricFamily("vecq_write_lanes", "Write coalescing lanes this API process holds (one per "
                                    "collection with writes in it).", value=len(self.writer.lanes))
            yield GaugeMetricFamily("vecq_write_pending", "Writes waiting in this API process's lanes for a batch "
                                    "slot.", value=self.writer.pending_count())


class _Cluster:
    """A one-shot collector over one Snapshot."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        snap = self.snap
        jobs = CounterMetricFamily("vecq_jobs", "Jobs finished, by type and final status (all workers).",
                                   labels=["type", "status"])
        seconds = SummaryMetricFamily("vecq_job_duration_seconds", "Run time of finished jobs (all workers).",
                                      labels=["type", "status"])
        for counted in snap.jobs:
            jobs.add_metric([counted.type, counted.status], counted.count)
            seconds.add_metric([counted.type, counted.status], counted.count, counted.seconds)
        yield jobs
        yield seconds

        depth = GaugeMetricFamily("vecq_queue_depth", "Messages waiting in the Celery queue.", labels=["queue"])
        for queue, n in snap.queues.items():
            depth.add_metric([queue], n)
        yield depth
        yield GaugeMetricFamily("vecq_queue_unacked", "Messages delivered to workers, not yet acked.",
                                value=snap.unacked)
        yield GaugeMetricFamily("vecq_workers", "Worker processes with a fresh heartbeat.", value=len(snap.workers))

        vectors = GaugeMetricFamily("vecq_collection_vectors", "Live vectors.", labels=["collection"])
        last = GaugeMetricFamily("vecq_collection_last_write_timestamp_seconds",
                                 "When the newest WAL entry was written (0: none yet).", labels=["collection"])
        rows = GaugeMetricFamily("vecq_collection_rows", "Rows in sealed segments (dead ones included) and written "
                                 "since the newest seal (growing).", labels=["collection", "part"])
        segments = GaugeMetricFamily("vecq_collection_segments", "Sealed segments.", labels=["collection"])
        for name, state in sorted(snap.collections.items()):
            vectors.add_metric([name], state.count)
            last.add_metric([name], lsn_seconds(state.last_lsn))
            rows.add_metric([name, "sealed"], state.sealed_rows)
            rows.add_metric([name, "growing"], state.growing_rows)
            segments.add_metric([name], state.segments)
        yield from (vectors, last, rows, segments)

        uptime = GaugeMetricFamily("vecq_worker_uptime_seconds", "Seconds since the worker process started.",
                                   labels=["worker", "host"])
        done = CounterMetricFamily("vecq_worker_jobs", "Jobs this worker process ran.", labels=["worker"])
        lag = GaugeMetricFamily("vecq_worker_lag_seconds",
                                "Write time between the newest WAL entry and the newest one this copy applied.",
                                labels=["worker", "collection"])
        applied = GaugeMetricFamily("vecq_worker_applied_lsn_timestamp_seconds",
                                    "When the newest WAL entry this copy applied was written.",
                                    labels=["worker", "collection"])
        wbytes = GaugeMetricFamily("vecq_worker_index_bytes", "Bytes of this copy's index in the process's own "
                                   "memory: its growing segment, and sealed ones FAISS could not map.",
                                   labels=["worker", "collection"])
        mapped = GaugeMetricFamily("vecq_worker_mapped_bytes", "Bytes of this copy's sealed segments mapped from "
                                   "the segment store (shared by the processes of a host).",
                                   labels=["worker", "collection"])
        memory = GaugeMetricFamily("vecq_worker_memory_bytes", "Resident memory of the worker process: anonymous "
                                   "(its own) and file-backed (mapped segments, shared).", labels=["worker", "kind"])
        col_lag: dict[str, float] = {}
        col_bytes: dict[str, int] = {}
        for w in snap.workers:
            wid = str(w.get("worker"))
            if w.get("started_at"):
                uptime.add_metric([wid, str(w.get("host"))], max(0.0, snap.taken_at - float(w["started_at"])))
            done.add_metric([wid], int(w.get("jobs_done") or 0))
            for kind, value in (w.get("memory") or {}).items():
                memory.add_metric([wid, kind], value)
            for c in copies(snap, w):
                lag.add_metric([wid, c["name"]], c["lag_s"])
                applied.add_metric([wid, c["name"]], lsn_seconds(c["applied_lsn"]))
                col_lag[c["name"]] = max(col_lag.get(c["name"], 0.0), c["lag_s"])
                if c.get("mapped_bytes") is not None:
                    mapped.add_metric([wid, c["name"]], c["mapped_bytes"])
                if c.get("index_bytes") is not None:
                    wbytes.add_metric([wid, c["name"]], c["index_bytes"])
                    col_bytes[c["name"]] = max(col_bytes.get(c["name"], 0), int(c["index_bytes"]))
        yield from (uptime, done, lag, applied, wbytes, mapped, memory)

        clag = GaugeMetricFamily("vecq_collection_lag_seconds",
                                 "Largest lag among the live workers' copies of the collection.",
                                 labels=["collection"])
        for name, value in sorted(col_lag.items()):
            clag.add_metric([name], value)
        yield clag
        cbytes = GaugeMetricFamily("vecq_collection_index_bytes",
                                   "Estimated bytes of one copy of the index (largest among workers).",
                                   labels=["collection"])
        for name, value in sorted(col_bytes.items()):
            cbytes.add_metric([name], value)
        yield cbytes
