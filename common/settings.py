"""All of vecq's configuration, read once from `VECQ_*` environment variables.

Each value is checked here, its rules across fields too (validators), so that a bad configuration stops a process
at start-up with a message naming the variable (`SettingsError`), not at the first request that needs it.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, RedisDsn, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from common import key_specs
from common.errors import InvalidInput
from common.key_specs import KeySpec


class SettingsError(ValueError):
    """An invalid VECQ_* variable, named in the message."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VECQ_", extra="ignore")

    # Wiring
    redis_url: RedisDsn | None = Field(
        None, description="Broker, results, WAL (redis:// or rediss://). Unset: `vecq up` starts an embedded Redis "
        "in the data dir."
    )
    data_dir: Path = Field(Path("data"), description="Sealed segments and the embedded Redis's files.")
    workers: int = Field(
        os.cpu_count() or 1, ge=1, description="Worker processes `vecq up` starts (the API sizes coalescing by it)."
    )
    api_processes: int = Field(1, ge=1, description="API processes `vecq up` and `python -m api.serve` start.")
    api_host: str = Field("127.0.0.1", description="Where `vecq up` binds the API.")
    api_port: int = Field(8000, description="Port of the API under `vecq up`.")
    api_keep_alive_s: int = Field(
        75, ge=1, description="Seconds the API keeps an idle HTTP connection open. Longer than the clients' own "
        "idle expiry (httpx 5 s, load balancers ~60 s): a pooled connection reused just as the server closes it "
        "fails with no response."
    )
    api_keys: Annotated[tuple[KeySpec, ...], NoDecode] = Field(
        (), description="Comma-separated API keys, `key` or `key:glob:rw|ro`; empty = open (no auth)."
    )
    api_keys_file: Path | None = Field(None, description="A file with one key spec per line (as api_keys).")
    metrics_need_key: bool = Field(
        False, description="With API keys set: /metrics needs a key allowed on every collection (glob `*`); "
        "otherwise it is open, like /healthz, and lists every collection's name."
    )
    queue: str = Field("vecq", description="Celery queue the workers consume.")

    # FAISS tuning (applied in each worker child before the first search)
    omp_threads: int = Field(1, ge=1, description="OpenMP threads per worker process.")
    seal_omp_threads: int = Field(
        1, ge=0, description="OpenMP threads of the `add` of a seal or a compaction (0: every core). 1 by default: "
        "on the shared 2-core bench host, under load, 2 threads added IVF1024 rows 1.1-2x slower than one (the "
        "threads wait on each other when the cores are taken); raise it where the cores are free during seals. "
        "Training, HNSW adds and searches keep VECQ_OMP_THREADS: FAISS's k-means and HNSW graphs are not "
        "bit-identical across thread counts, and every build of the same rows must be the same."
    )
    blas_min_queries: int = Field(
        4, ge=1, description="Flat search uses BLAS from this many queries in one call (faiss.cvar."
        "distance_compute_blas_threshold = this x dim, set per search)."
    )

    # Jobs and waiting
    job_ttl_s: int = Field(86_400, ge=1, description="How long job records stay readable.")
    search_wait_default_s: float = Field(30.0, ge=0, description="Default `wait` of synchronous search.")
    wait_max_s: float = Field(300.0, ge=0, description="Largest `wait` accepted anywhere.")
    max_waiters: int = Field(4096, ge=1, description="Requests one API process may hold waiting (503 beyond).")
    max_attempts: int = Field(3, ge=1, description="Deliveries of a job before it is failed (poison jobs).")
    task_time_limit_s: int = Field(1800, ge=10, description="Hard time limit of one job (seals and compactions "
                                   "excepted).")
    seal_time_limit_s: int = Field(
        4 * 3600, ge=10, description="Hard time limit of a seal or a compaction: an HNSW build of millions of rows."
    )
    worker_init_timeout_s: float = Field(
        600.0, ge=4, description="worker_proc_alive_timeout: above the slowest index load at start."
    )
    heartbeat_interval_s: float = Field(2.0, gt=0, description="How often a worker child beats.")
    heartbeat_ttl_s: float = Field(10.0, gt=0, description="A worker that has not beaten for this long is gone.")

    # Limits
    max_dim: int = Field(4096, ge=1, description="Largest collection dimension.")
    max_k: int = Field(1000, ge=1, description="Largest k of a search.")
    max_k_with_offset: int = Field(10_000, ge=1, description="Largest k + offset of a search (paging).")
    filter_exact_below: int = Field(
        20_000, ge=0, description="A filtered search on an approximate index (HNSW, IVF, ...) scores the matching "
        "rows of a segment one by one when fewer than this match (exact, and never short of k hits)."
    )
    max_query_vectors: int = Field(1000, ge=1, description="Query vectors per search request.")
    max_vectors_per_request: int = Field(10_000, ge=1, description="Vectors per JSON add request.")
    max_id_length: int = Field(256, ge=1, description="Longest vector id (characters).")
    max_metadata_bytes: int = Field(65_536, ge=2, description="Largest metadata object per vector (JSON bytes).")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="JSON request bodies (413 beyond).")
    max_upload_bytes: int = Field(2 * 1024**3, ge=1024, description="Binary uploads (.npy, Parquet).")
    max_collections: int = Field(1000, ge=1, description="Most collections at once.")

    # Write path and segments
    wal_chunk_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Vector bytes per WAL entry.")
    seal_every_rows: int = Field(
        100_000, ge=1, description="Rows written since the newest seal that trigger the next one (a trained index "
        "waits until it has the rows to train on)."
    )
    seal_every_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, description="Vector bytes written since the newest seal that trigger the next."
    )
    train_sample_rows: int = Field(
        65_536, ge=1, description="Rows a trained index (IVF, PQ, SQ, OPQ, PCA, RaBitQ) is trained on, at least "
        "39 per centroid; drawn from the collection with a fixed seed."
    )
    compact_max_segments: int = Field(
        8, ge=1, description="More sealed segments than this trigger a compaction (all merged into one)."
    )
    compact_dead_fraction: float = Field(
        0.2, gt=0, le=1, description="A larger share of dead (deleted or replaced) sealed rows triggers a compaction."
    )
    eventual_max_lag_s: float = Field(
        1.0, ge=0, description="An `eventual` search catches up first if its copy's last catch-up is older."
    )

    # Coalescing of concurrent searches (per API process)
    coalesce: bool = Field(True, description="Batch concurrent searches of one collection into one job.")
    coalesce_max_batch: int = Field(256, ge=1, description="Query vectors per coalesced job.")
    coalesce_max_delay_ms: float = Field(
        20.0, ge=0, description="Longest a search waits for the rest of its group (see Coalescing in the README)."
    )
    coalesce_max_inflight: int = Field(
        0, ge=0, description="Batches of one collection in flight per API process; 0: workers / api_processes."
    )
    coalesce_max_pending: int = Field(
        1024, ge=1, description="Searches of one lane (collection, consistency, min_lsn, params) an API process "
        "holds waiting for a batch slot; beyond, 429 with Retry-After."
    )
    coalesce_writes: bool = Field(
        True, description="Batch concurrent JSON writes of one collection that wait for their outcome into one job."
    )
    coalesce_max_write_rows: int = Field(4096, ge=1, description="Vectors per coalesced write job.")
    collection_cache_s: float = Field(
        1.0, ge=0, description="How long an API process reuses a collection's record for searches (0: never)."
    )

    blob_ttl_s: int = Field(
        3600, ge=60, description="How long an upload (.npy, Parquet) waits in Redis for its ingest job to use it."
    )

    segment_dir: Path | None = Field(
        None, description="The segment store, where seals write and every worker maps sealed segments (default: "
        "data_dir/segments). Workers on several hosts must all see the same directory (a shared volume)."
    )

    # Logging / testing
    log_json: bool = Field(False, description="JSON log lines.")
    enable_test_tasks: bool = Field(
        False, description="Registers test-only tasks (poison, sleep). Never in production."
    )
    test_start_delay_s: float = Field(
        0.0, ge=0, description="Test-only, with enable_test_tasks: a worker child sleeps this long before it loads "
        "its collections (a slow start, now that loads are fast). Never in production."
    )

    @field_validator("redis_url", mode="before")
    @classmethod
    def _empty_url_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return key_specs.parse(value)
        except InvalidInput as exc:  # its message names the spec's position, never the key
            raise ValueError(exc.message) from None

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.api_keys_file is not None:
            try:
                text = Path(self.api_keys_file).read_text()
                self.api_keys = self.api_keys + key_specs.parse(text, known=self.api_keys,
                                                                where=" of VECQ_API_KEYS_FILE")
            except OSError as exc:
                raise ValueError(f"VECQ_API_KEYS_FILE: cannot read {self.api_keys_file}: {exc.strerror}") from None
            except InvalidInput as exc:
                raise ValueError(exc.message) from None
        if self.heartbeat_ttl_s <= self.heartbeat_interval_s:
            raise ValueError(f"VECQ_HEARTBEAT_TTL_S ({self.heartbeat_ttl_s}) must be longer than "
                             f"VECQ_HEARTBEAT_INTERVAL_S ({self.heartbeat_interval_s}): every live worker would "
                             "look gone between two beats")
        if self.search_wait_default_s > self.wait_max_s:
            raise ValueError(f"VECQ_SEARCH_WAIT_DEFAULT_S ({self.search_wait_default_s}) is above VECQ_WAIT_MAX_S "
                             f"({self.wait_max_s})")
        if self.max_k_with_offset < self.max_k:
            raise ValueError(f"VECQ_MAX_K_WITH_OFFSET ({self.max_k_with_offset}) is below VECQ_MAX_K ({self.max_k})")
        if self.seal_time_limit_s < self.task_time_limit_s:
            raise ValueError(f"VECQ_SEAL_TIME_LIMIT_S ({self.seal_time_limit_s}) is below VECQ_TASK_TIME_LIMIT_S "
                             f"({self.task_time_limit_s}): a seal is the longest job")
        return self

    @property
    def coalesce_inflight(self) -> int:
        """One batch in flight per worker, shared out among the API processes: each worker can run a batch while
        an API process answers the clients of another."""
        return self.coalesce_max_inflight or max(1, self.workers // self.api_processes)

    @property
    def redelivery_window_s(self) -> float:
        """How long after its first delivery a job can come back (Celery's visibility timeout, celery_app.py)."""
        return max(self.task_time_limit_s, self.seal_time_limit_s) + 600.0

    def soft_limit(self, hard_s: int) -> int:
        """The soft time limit under a hard one: time for a job to fail cleanly before it is killed."""
        return max(hard_s - 30, 5)

    @property
    def effective_redis_url(self) -> str:
        return str(self.redis_url) if self.redis_url is not None else "redis://127.0.0.1:6379/0"


def load(**overrides: Any) -> Settings:
    """The settings from the environment (and `overrides`), or SettingsError naming each bad VECQ_* variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            name = "VECQ_" + "_".join(str(part) for part in e["loc"][:1]).upper() if e["loc"] else ""
            message = e["msg"].removeprefix("Value error, ")
            problems.append(f"{name}: {message}" if name else message)
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load()
