"""Redis key layout. Every key vecq writes is built here, from validated names only.

Each family is written by one module: collections.py (`col`), wal.py (`wal`, `docs`, `dedup`, `trim`),
jobs.py (`job`, `delivery`, `batch`), blobs.py (`blob`), heartbeat.py (`hb`), segments.py (`segments`, `seal`,
`seallock`, `compactlock`), stats.py (`stats`); jobs.py also writes `jobs:recent`, the index of recent jobs;
worker/reaper.py `reaper`, a lock.
"""

from __future__ import annotations

import re

PREFIX = "vecq"
COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class InvalidName(ValueError):
    pass


def check_collection_name(name: str) -> str:
    if not isinstance(name, str) or not COLLECTION_NAME.fullmatch(name):
        raise InvalidName(f"invalid collection name {name!r}: must match {COLLECTION_NAME.pattern}")
    return name


def check_token(token: str) -> str:
    """Job ids, blob ids, collection uids: opaque tokens that must never smuggle a separator."""
    if not isinstance(token, str) or not TOKEN.fullmatch(token):
        raise InvalidName(f"invalid token {token!r}")
    return token


COLLECTIONS = f"{PREFIX}:collections"
WORKERS = f"{PREFIX}:workers"
STATS_JOBS = f"{PREFIX}:stats:jobs"
STATS_JOB_SECONDS = f"{PREFIX}:stats:job_seconds"
REAPER = f"{PREFIX}:reaper"  # whose turn it is to give back a dead worker's jobs (worker/reaper.py)
RECENT_JOBS = f"{PREFIX}:jobs:recent"


def collection(name: str) -> str:
    return f"{PREFIX}:col:{check_collection_name(name)}"


def _data(name: str, uid: str, part: str) -> str:
    # The uid makes a re-created collection start from empty keys, even while old workers still look.
    return f"{PREFIX}:c:{check_collection_name(name)}:{check_token(uid)}:{part}"


def wal(name: str, uid: str) -> str:
    return _data(name, uid, "wal")


def docs(name: str, uid: str) -> str:
    return _data(name, uid, "docs")


def dedup(name: str, uid: str) -> str:
    return _data(name, uid, "dedup")


def trim(name: str, uid: str) -> str:
    return _data(name, uid, "trim")


def segments(name: str, uid: str) -> str:
    return _data(name, uid, "segments")


def seal_state(name: str, uid: str) -> str:
    return _data(name, uid, "seal")


def seal_lock(name: str, uid: str) -> str:
    return _data(name, uid, "seallock")


def compact_lock(name: str, uid: str) -> str:
    return _data(name, uid, "compactlock")


def job(job_id: str) -> str:
    return f"{PREFIX}:job:{check_token(job_id)}"


def job_watchers(job_id: str) -> str:
    return f"{PREFIX}:job:{check_token(job_id)}:watchers"


def delivery(batch_id: str) -> str:
    return f"{PREFIX}:delivery:{check_token(batch_id)}"


def batch_outcomes(batch_id: str) -> str:
    return f"{PREFIX}:batch:{check_token(batch_id)}"


def job_channel(listener_id: str) -> str:
    return f"{PREFIX}:done:{check_token(listener_id)}"


def blob(blob_id: str) -> str:
    return f"{PREFIX}:blob:{check_token(blob_id)}"


def heartbeat(worker_id: str) -> str:
    return f"{PREFIX}:hb:{check_token(worker_id)}"
