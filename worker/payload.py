"""Payload indexes: for each metadata field of a segment, which rows hold which value, so a filter becomes a row
mask (and a FAISS IDSelectorBitmap) without reading any row's metadata.

Per field path and value type (string, number, bool), the distinct values in sorted order, each with the rows
that hold it: an equality is one group, a range is one contiguous run of groups, `$exists` is the union. A sealed
segment's index is built once by the seal and stored with it (`payload.json` + `payload_rows.npy`, mapped); the
growing segment keeps the same groups in dicts, appended to as rows arrive. Both answer the same questions, and
`mask` turns a parsed filter (common/filters.py) into a boolean mask over a segment's rows.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from common import filters

Kind = int  # filters.value_key's kinds: 0 bool, 1 number, 2 string
KINDS: tuple[Kind, ...] = (0, 1, 2)


def scalars(doc: Any, prefix: str = "") -> Iterator[tuple[str, filters.ValueKey]]:
    """Every (dotted path, value key) a metadata document holds: exactly the values filters.values_at finds at
    each path (a list gives its scalar elements, a list of objects is traversed, nested lists give nothing)."""
    if not isinstance(doc, dict):
        return
    for key, value in doc.items():
        if "." in key:  # a dotted path cannot reach it
            continue
        path = f"{prefix}{key}"
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                yield from scalars(item, f"{path}.")
            elif isinstance(item, str | int | float) and not (isinstance(item, float) and math.isnan(item)):
                yield path, filters.value_key(item)


class Groups:
    """One field's values of one type, sorted, with their rows: what both index kinds answer from."""

    def __init__(self, values: list[Any], offsets: np.ndarray, rows: np.ndarray) -> None:
        self.values = values
        self.offsets = offsets
        self.rows = rows

    def rows_in(self, lo: int, hi: int) -> np.ndarray:
        return np.asarray(self.rows[self.offsets[lo]:self.offsets[hi]]) if hi > lo else np.zeros(0, np.int64)

    def equal(self, value: Any) -> np.ndarray:
        i = bisect.bisect_left(self.values, value)
        return self.rows_in(i, i + 1) if i < len(self.values) and self.values[i] == value else self.rows_in(0, 0)

    def between(self, op: str, value: Any) -> np.ndarray:
        if op == "gt":
            return self.rows_in(bisect.bisect_right(self.values, value), len(self.values))
        if op == "gte":
            return self.rows_in(bisect.bisect_left(self.values, value), len(self.values))
        if op == "lt":
            return self.rows_in(0, bisect.bisect_left(self.values, value))
        return self.rows_in(0, bisect.bisect_right(self.values, value))  # lte


class PayloadIndex:
    """A sealed segment's payload index: Groups per (path, type), read from the segment's files."""

    def __init__(self, groups: dict[tuple[str, Kind], Groups]) -> None:
        self.groups = groups

    @classmethod
    def build(cls, metadata: list[str | None]) -> tuple[dict[str, Any], np.ndarray]:
        """The stored form of the index of rows with these metadata JSON strings: a JSON-able layout and the rows
        array it points into."""
        by: dict[tuple[str, Kind], dict[Any, list[int]]] = {}
        for row, text in enumerate(metadata):
            if text:
                for path, (kind, value) in scalars(json.loads(text)):
                    by.setdefault((path, kind), {}).setdefault(value, []).append(row)
        layout: dict[str, Any] = {}
        chunks: list[np.ndarray] = []
        at = 0
        for (path, kind), groups in sorted(by.items()):
            values = sorted(groups)
            offsets = [at]
            for value in values:
                members = sorted(set(groups[value]))
                chunks.append(np.asarray(members, dtype=np.int64))
                at += len(members)
                offsets.append(at)
            layout.setdefault(path, {})[str(kind)] = {"values": values, "offsets": offsets}
        rows = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
        return layout, rows

    @classmethod
    def save(cls, directory: Path, metadata: list[str | None]) -> None:
        layout, rows = cls.build(metadata)
        (directory / "payload.json").write_text(json.dumps(layout))
        np.save(directory / "payload_rows.npy", rows)

    @classmethod
    def load(cls, directory: Path) -> PayloadIndex:
        layout = json.loads((directory / "payload.json").read_text())
        rows = np.load(directory / "payload_rows.npy", mmap_mode="r" if (directory / "payload_rows.npy").stat()
                       .st_size > 128 else None)
        groups: dict[tuple[str, Kind], Groups] = {}
        for path, kinds in layout.items():
            for kind, g in kinds.items():
                offsets = np.asarray(g["offsets"], dtype=np.int64)
                groups[(path, int(kind))] = Groups(g["values"], offsets, rows)
        return cls(groups)

    def lookup(self, path: str, kind: Kind) -> Groups | None:
        return self.groups.get((path, kind))


class GrowingPayload:
    """The growing segment's payload index: the same groups, in dicts, appended to as rows are added."""

    def __init__(self) -> None:
        self._by: dict[tuple[str, Kind], dict[Any, list[int]]] = {}
        self._frozen: dict[tuple[str, Kind], Groups] = {}

    def add(self, row: int, metadata: str | None) -> None:
        if not metadata:
            return
        for path, (kind, value) in scalars(json.loads(metadata)):
            key = (path, kind)
            self._by.setdefault(key, {}).setdefault(value, []).append(row)
            self._frozen.pop(key, None)

    def lookup(self, path: str, kind: Kind) -> Groups | None:
        key = (path, kind)
        if key not in self._by:
            return None
        if key not in self._frozen:  # sorted once per change of the field, not per search
            groups = self._by[key]
            values = sorted(groups)
            sizes = [len(groups[v]) for v in values]
            offsets = np.zeros(len(values) + 1, dtype=np.int64)
            offsets[1:] = np.cumsum(sizes)
            rows = np.concatenate([np.asarray(groups[v], dtype=np.int64) for v in values]) if values else \
                np.zeros(0, np.int64)
            self._frozen[key] = Groups(values, offsets, rows)
        return self._frozen[key]


Index = PayloadIndex | GrowingPayload


def mask(f: filters.Filter, index: Index, n: int) -> np.ndarray:
    """Rows of a segment of `n` rows that match `f`, as a boolean mask (dead rows are the caller's business).
    Agrees with filters.matches on every row's metadata: the negations ($ne, $nin, $exists false, $not) are
    complements of what the index finds, so rows without the field match them, as the language says."""
    if isinstance(f, filters.And):
        out = np.ones(n, dtype=bool)
        for item in f.items:
            out &= mask(item, index, n)
        return out
    if isinstance(f, filters.Or):
        out = np.zeros(n, dtype=bool)
        for item in f.items:
            out |= mask(item, index, n)
        return out
    if isinstance(f, filters.Not):
        return ~mask(f.item, index, n)
    path = ".".join(f.path)
    out = np.zeros(n, dtype=bool)
    if isinstance(f, filters.Exists):
        for kind in KINDS:
            groups = index.lookup(path, kind)
            if groups is not None:
                out[groups.rows_in(0, len(groups.values))] = True
        return out if f.present else ~out
    if isinstance(f, filters.Member):
        for kind, value in f.keys:
            groups = index.lookup(path, kind)
            if groups is not None:
                out[groups.equal(value)] = True
        return ~out if f.negate else out
    kind, value = f.key
    groups = index.lookup(path, kind)
    if f.op in ("eq", "ne"):
        if groups is not None:
            out[groups.equal(value)] = True
        return ~out if f.op == "ne" else out
    if groups is not None and kind != 0:  # booleans satisfy no range
        out[groups.between(f.op, value)] = True
    return out
