"""Snapshots on disk: `{snapshot_dir}/{name}/{uid}/snap-{lsn}-{rand}/` plus a `CURRENT` pointer.

A snapshot holds the index (`index.faiss`), the position -> id map (`ids.json`, `null` at a tombstoned
position) and a manifest with the LSN it covers and the collection it belongs to. The files go to a temp dir
and are fsynced, the manifest last; the dir is renamed into place and CURRENT is replaced atomically. A reader
sees a whole snapshot or the previous one, never half of one, and the previous one is kept until the next
write so that a reader that has just read CURRENT can still open it.

The snapshot dir is `settings.snapshot_dir`, by default `{data_dir}/snapshots`. Workers on several hosts must
share it: a worker whose WAL position was trimmed away can only come back through a snapshot it can read.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import faiss

from common import keys
from common.codec import Lsn
from common.collections import Collection
from common.settings import Settings
from worker.index import CollectionIndex

FORMAT = 1
CURRENT = "CURRENT"
MANIFEST = "manifest.json"
INDEX = "index.faiss"
IDS = "ids.json"
LOAD_TRIES = 5


def root(settings: Settings) -> Path:
    return settings.snapshot_dir or settings.data_dir / "snapshots"


def collection_dir(root: Path, col: Collection) -> Path:
    return root / keys.check_collection_name(col.name) / keys.check_token(col.uid)


def write(root: Path, copy: CollectionIndex) -> Path:
    """Write `copy` as the collection's newest snapshot; return its directory. Callers hold the collection's
    snapshot lock (common/snapshots.py), so leftovers of an earlier writer that died are safe to sweep."""
    base = collection_dir(root, copy.col)
    base.mkdir(parents=True, exist_ok=True)
    previous = _current_name(base)
    for stale in base.glob(".*"):  # temp dirs and pointers of a writer killed half-way
        _remove(stale)
    tmp = base / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    faiss.write_index(copy.index, str(tmp / INDEX))
    _fsync(tmp / INDEX)
    _write(tmp / IDS, json.dumps(copy.ids))
    manifest = {"format": FORMAT, "name": copy.col.name, "uid": copy.col.uid, "lsn": copy.applied,
                "count": copy.count, "ntotal": copy.index.ntotal, "tombstones": len(copy.dead),
                "dim": copy.col.dim, "metric": copy.col.metric, "index": copy.col.index, "written_at": time.time()}
    _write(tmp / MANIFEST, json.dumps(manifest))  # last: a dir without a manifest is not a snapshot
    _fsync(tmp)
    final = base / f"snap-{copy.applied}-{uuid.uuid4().hex[:8]}"
    os.replace(tmp, final)
    _fsync(base)
    pointer = base / f".{CURRENT}-{uuid.uuid4().hex}"
    _write(pointer, final.name)
    os.replace(pointer, base / CURRENT)
    _fsync(base)
    for old in base.iterdir():  # keep the new one and the one before it (a reader may be opening it now)
        if old.name not in (final.name, previous, CURRENT):
            _remove(old)
    return final


def load(root: Path, col: Collection) -> CollectionIndex | None:
    """The newest snapshot of `col`, or None if it has none."""
    base = collection_dir(root, col)
    for attempt in range(LOAD_TRIES):
        name = _current_name(base)
        if name is None:
            return None
        try:
            return _read(base / name, col)
        except (OSError, RuntimeError):  # faiss raises RuntimeError for a file that vanished
            if _current_name(base) == name or attempt == LOAD_TRIES - 1:
                raise  # not a newer snapshot replacing this one: a broken snapshot
            time.sleep(0.05)
    return None  # not reached


def current_lsn(root: Path, col: Collection) -> Lsn | None:
    """The LSN of the newest snapshot of `col`, from its manifest (cheap: the index is not read)."""
    base = collection_dir(root, col)
    name = _current_name(base)
    if name is None:
        return None
    try:
        return str(json.loads((base / name / MANIFEST).read_text())["lsn"])
    except (OSError, ValueError, KeyError):
        return None


def remove(root: Path, col: Collection) -> None:
    shutil.rmtree(collection_dir(root, col), ignore_errors=True)


def _read(snap: Path, col: Collection) -> CollectionIndex:
    manifest = json.loads((snap / MANIFEST).read_text())
    if manifest.get("format") != FORMAT or manifest.get("dim") != col.dim or manifest.get("uid", col.uid) != col.uid:
        raise RuntimeError(f"snapshot {snap} does not belong to collection {col.name} ({col.uid}, d={col.dim})")
    copy = CollectionIndex(col, index=faiss.read_index(str(snap / INDEX)))
    ids: list[str | None] = json.loads((snap / IDS).read_text())
    if len(ids) != copy.index.ntotal:
        raise RuntimeError(f"snapshot {snap}: {len(ids)} ids for {copy.index.ntotal} vectors")
    copy.ids = ids
    copy.position = {vid: pos for pos, vid in enumerate(ids) if vid is not None}
    copy.dead = {pos for pos, vid in enumerate(ids) if vid is None}
    copy.applied = manifest["lsn"]
    return copy


def _current_name(base: Path) -> str | None:
    try:
        return (base / CURRENT).read_text().strip() or None
    except FileNotFoundError:
        return None


def _write(path: Path, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync(path: Path) -> None:
    """Flush a file's data, or a directory's entries (renames), to disk before the next step depends on it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
