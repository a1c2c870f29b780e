"""The segment store on disk: `{store}/{name}/{uid}/{segment id}/`, one directory per sealed segment.

A segment directory holds its FAISS index (`index.faiss`), the raw float32 vectors (`vectors.npy`: exact for
any spec, for reads by id, `include_vectors` and compaction), the row -> id map (`ids.bin` + `ids_offsets.npy`),
the sorted 64-bit id keys with their rows (`keys.npy`, `key_rows.npy`), the row -> metadata map (`meta.bin` +
`meta_offsets.npy`), the payload index of that metadata (`payload.json` + `payload_rows.npy`, worker/payload.py),
the ids its range deleted (`deleted.json`) and `segment.json`, written last. Everything goes to a temp dir, is
fsynced and renamed into place; the segment exists for readers only once the manifest in Redis
(common/segments.py) lists it. So a writer killed half-way leaves a temp dir or an unlisted dir, which the next
seal sweeps.

The store is `settings.segment_dir`, by default `{data_dir}/segments`. Workers on several hosts must share it
(a shared volume): a worker whose log was trimmed can only come back through segments it can read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

from common import keys
from common.collections import Collection
from common.segments import SegmentInfo
from common.settings import Settings
from worker.index import read_back
from worker.payload import PayloadIndex
from worker.segment import SealedSegment, id_keys

log = logging.getLogger("vecq.worker")

FORMAT = 1
META = "segment.json"
TRAINED_NAME = re.compile(r"trained-[0-9a-f]{32}\.faiss")
ORPHAN_GRACE_S = 600.0  # an unlisted dir younger than this may be a seal about to commit, or still being read


def root(settings: Settings) -> Path:
    return settings.segment_dir or settings.data_dir / "segments"


def collection_dir(store: Path, col: Collection) -> Path:
    return store / keys.check_collection_name(col.name) / keys.check_token(col.uid)


@dataclass(frozen=True)
class SegmentRows:
    """What a seal or a compaction writes: live rows in log order, and the ids deleted in its range."""

    ids: list[str]
    vectors: np.ndarray
    deleted: list[str]
    metadata: list[str | None]


def write(store: Path, col: Collection, segment_id: str, index: faiss.Index, rows: SegmentRows) -> tuple[Path, int]:
    """Write a segment's files atomically; returns its directory and size in bytes."""
    base = collection_dir(store, col)
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    faiss.write_index(index, str(tmp / "index.faiss"))
    np.save(tmp / "vectors.npy", np.ascontiguousarray(rows.vectors, dtype="<f4"))
    _write_texts(tmp, "ids", rows.ids)
    _write_texts(tmp, "meta", rows.metadata)
    PayloadIndex.save(tmp, rows.metadata)
    row_keys = id_keys(rows.ids)
    order = np.argsort(row_keys, kind="stable")
    np.save(tmp / "keys.npy", row_keys[order])
    np.save(tmp / "key_rows.npy", order.astype(np.int64))
    (tmp / "deleted.json").write_text(json.dumps(rows.deleted))
    (tmp / META).write_text(json.dumps({"format": FORMAT, "name": col.name, "uid": col.uid, "id": segment_id,
                                        "rows": len(rows.ids), "dim": col.dim}))
    for path in tmp.iterdir():
        _fsync(path)
    _fsync(tmp)
    final = base / segment_id
    os.replace(tmp, final)
    _fsync(base)
    return final, sum(p.stat().st_size for p in final.iterdir())


def open_segment(store: Path, col: Collection, info: SegmentInfo) -> SealedSegment:
    """Map a listed segment read-only (falling back to a normal read for index types FAISS cannot map)."""
    path = collection_dir(store, col) / keys.check_token(info.id)
    meta = json.loads((path / META).read_text())
    if meta.get("format") != FORMAT or meta.get("uid") != col.uid or meta.get("dim") != col.dim:
        raise RuntimeError(f"segment {path} does not belong to collection {col.name} ({col.uid}, d={col.dim})")
    index, mapped = read_back(str(path / "index.faiss"))
    if not mapped:
        log.warning("collection=%s segment=%s spec=%s: FAISS cannot map this index type; read into memory",
                    col.name, info.id, info.spec)
    mode: Literal["r"] | None = "r" if info.rows else None  # an empty array cannot be mapped
    segment = SealedSegment(
        info, index, mapped,
        vectors=np.load(path / "vectors.npy", mmap_mode=mode),
        id_bytes=_bytes(path / "ids.bin"),
        id_offsets=np.load(path / "ids_offsets.npy", mmap_mode=mode),
        keys=np.load(path / "keys.npy", mmap_mode=mode),
        key_rows=np.load(path / "key_rows.npy", mmap_mode=mode),
        deleted=json.loads((path / "deleted.json").read_text()),
    )
    segment.meta_bytes = _bytes(path / "meta.bin")
    segment.meta_offsets = np.load(path / "meta_offsets.npy", mmap_mode=mode)
    segment.payload = PayloadIndex.load(path)
    if segment.rows != info.rows:
        raise RuntimeError(f"segment {path}: index has {segment.rows} rows, the manifest {info.rows}")
    return segment


def write_trained(store: Path, col: Collection, index: faiss.Index) -> str:
    """Save the trained, empty template of a trained spec; returns its file name."""
    base = collection_dir(store, col)
    base.mkdir(parents=True, exist_ok=True)
    name = f"trained-{uuid.uuid4().hex}.faiss"
    tmp = base / f".tmp-{name}"
    faiss.write_index(index, str(tmp))
    _fsync(tmp)
    os.replace(tmp, base / name)
    _fsync(base)
    return name


def read_trained(store: Path, col: Collection, name: str) -> faiss.Index:
    if not TRAINED_NAME.fullmatch(name):
        raise RuntimeError(f"not a trained template's name: {name!r}")
    return faiss.read_index(str(collection_dir(store, col) / name))


def sweep(store: Path, col: Collection, keep: set[str], grace_s: float = ORPHAN_GRACE_S) -> int:
    """Remove what no manifest lists any more (segments merged by a compaction, a killed writer's leftovers), once
    it is older than `grace_s`: a worker that has just read the previous manifest may still be opening it (and a
    file already mapped stays readable after its name is gone). Returns how many entries were removed."""
    base = collection_dir(store, col)
    if not base.exists():
        return 0
    removed, now = 0, time.time()
    for path in base.iterdir():
        if path.name in keep or now - path.stat().st_mtime < grace_s:
            continue
        _remove(path)
        removed += 1
    return removed


def remove(store: Path, col: Collection) -> None:
    shutil.rmtree(collection_dir(store, col), ignore_errors=True)


def _write_texts(directory: Path, name: str, texts: list[str] | list[str | None]) -> None:
    """Texts by row as one blob and offsets (`{name}.bin`, `{name}_offsets.npy`): mapped, no object per row."""
    encoded = [t.encode() if t else b"" for t in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(e) for e in encoded])
    (directory / f"{name}.bin").write_bytes(b"".join(encoded))
    np.save(directory / f"{name}_offsets.npy", offsets)


def _bytes(path: Path) -> np.ndarray:
    return np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else np.zeros(0, np.uint8)


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
