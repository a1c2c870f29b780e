"""Snapshots on disk: `{data_dir}/snapshots/{name}/{uid}/snap-{lsn}/` plus a `CURRENT` pointer.

A snapshot holds a compacted index (no tombstones), the position -> id list and a manifest with the LSN
it covers. Files are written to a temp dir, the manifest last, then the dir is renamed into place and
CURRENT is replaced atomically: a reader sees a whole snapshot or the previous one, never half of one.
Workers on several hosts must share this directory (see README, "Several hosts").
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import faiss

from common import keys
from common.collections import Collection
from worker.index import CollectionIndex

FORMAT = 1


def collection_dir(data_dir: Path, col: Collection) -> Path:
    return data_dir / "snapshots" / keys.check_collection_name(col.name) / keys.check_token(col.uid)


def write(data_dir: Path, copy: CollectionIndex) -> Path:
    """Write `copy` (already compacted) as the newest snapshot; return its directory."""
    assert not copy.dead, "snapshots are written from a compacted copy"
    base = collection_dir(data_dir, copy.col)
    base.mkdir(parents=True, exist_ok=True)
    final = base / f"snap-{copy.applied}"
    tmp = base / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    faiss.write_index(copy.index, str(tmp / "index.faiss"))
    (tmp / "ids.json").write_text(json.dumps(copy.ids))
    manifest = {"format": FORMAT, "lsn": copy.applied, "count": copy.count, "ntotal": copy.index.ntotal,
                "dim": copy.col.dim, "metric": copy.col.metric, "index": copy.col.index,
                "written_at": time.time()}
    with open(tmp / "manifest.json", "w") as fh:
        json.dump(manifest, fh)
        fh.flush()
        os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = base / f".CURRENT-{uuid.uuid4().hex}"
    pointer.write_text(final.name)
    os.replace(pointer, base / "CURRENT")
    for old in base.iterdir():  # older snapshots are no longer reachable from CURRENT
        if old.name not in (final.name, "CURRENT") and not old.name.startswith(".tmp-"):
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    return final


def load(data_dir: Path, col: Collection) -> CollectionIndex | None:
    base = collection_dir(data_dir, col)
    try:
        name = (base / "CURRENT").read_text().strip()
    except FileNotFoundError:
        return None
    snap = base / name
    manifest = json.loads((snap / "manifest.json").read_text())
    copy = CollectionIndex(col, index=faiss.read_index(str(snap / "index.faiss")))
    copy.ids = json.loads((snap / "ids.json").read_text())
    copy.position = {vid: pos for pos, vid in enumerate(copy.ids) if vid is not None}
    copy.applied = manifest["lsn"]
    return copy


def remove(data_dir: Path, col: Collection) -> None:
    shutil.rmtree(collection_dir(data_dir, col), ignore_errors=True)
