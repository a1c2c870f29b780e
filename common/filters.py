"""The metadata filter language (issue #15): parse and validate a JSON filter into a small typed AST, write it
back canonically, evaluate it against one vector's metadata, and the helpers the payload indexes build on.
Pure Python: no Redis, no FAISS. docs/filters.md is the user-facing version of this docstring.

Syntax (a JSON object, Mongo/Qdrant/Chroma style):

    {"lang": "en"}                                   shorthand for {"lang": {"$eq": "en"}}
    {"lang": "en", "year": {"$gte": 2020, "$lt": 2024}}   several keys, or several operators: all of them
    {"$or": [{"lang": "en"}, {"tags": {"$in": ["ml", "ir"]}}]}
    {"$not": {"author.name": "bob"}}                 a dotted path reads into nested objects
    {"draft": {"$exists": false}}

Logical operators (top level of a filter object): $and and $or take a non-empty list of filters, $not one
filter. Field operators: $eq $ne (a scalar), $gt $gte $lt $lte (a number or a string), $in $nin (a list of at
most MAX_IN_VALUES scalars; may be empty), $exists (true or false). Scalars are strings, finite numbers and
booleans; null, lists and objects are not values (null: use $exists). An empty filter object is "no filter" at
the top and refused anywhere below it.

Semantics. Everything is defined on values_at(metadata, path): the scalar values a document holds at a path —
a list contributes its scalar elements, a list of objects is traversed element by element (Mongo style), and
null, objects, nested lists and missing keys contribute nothing. With V = values_at(metadata, path):

    $eq v      some x in V equals v           {"tags": "a"} matches {"tags": ["a", "b"]}
    $ne v      no x in V equals v             so a missing field, or null metadata, matches $ne
    $in S      some x in V is in S            $in [] matches nothing
    $nin S     no x in V is in S              $nin [] matches everything; a missing field matches
    $gt v ...  some x in V of v's kind with x > v   numbers with numbers, strings with strings only
    $exists b  (V is non-empty) == b          null, [], {} and a missing key do not "exist"
    $not f     not f                          {"$not": {"year": {"$gt": 5}}} matches a missing year

Equality: 1 == 1.0 (numbers compare by exact value), but a boolean never equals a number (true != 1, unlike
Python). Strings compare by Unicode code point (the order of their UTF-8 bytes). Ranges never cross kinds: the
string "2021" does not satisfy {"$gt": 2020}; booleans satisfy no range. As in MongoDB, each condition on a
list field may be met by a different element: {"x": {"$gt": 5, "$lt": 3}} matches {"x": [1, 10]}, and
{"$and": [{"tags": "a"}, {"tags": "b"}]} matches {"tags": ["a", "b"]}.

Errors: every malformed filter raises InvalidInput whose `field` is the path into the filter, e.g.
"filter.year.$gt", "filter.$or[1].lang", "filter.tags.$in[3]".

The AST is normalized, so that equal filters compare (and serialize) equal: shorthand and multi-key objects
become And, nested And/Or are flattened, duplicates dropped and items sorted, one-item And/Or collapse,
$in/$nin of one value become $eq/$ne, integral floats become ints (2.0 -> 2), and $not is pushed into
$eq/$ne, $in/$nin and $exists (they are exact negations of each other) and cancels a $not.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from common.errors import InvalidInput

MAX_DEPTH = 32  # filter objects nested inside one another ($and / $or / $not)
MAX_NODES = 4096  # JSON values in one filter: objects, lists, and the values inside them
MAX_IN_VALUES = 1024  # values in one $in / $nin list

Scalar: TypeAlias = str | int | float | bool
Path: TypeAlias = tuple[str, ...]
CompareOp: TypeAlias = Literal["eq", "ne", "gt", "gte", "lt", "lte"]
# A value as the filter compares it: (kind, value) with kind 0 bool, 1 number, 2 string, so that True and 1
# differ (in Python they are equal) while 1 and 1.0 stay equal, and keys of different kinds sort apart.
ValueKey: TypeAlias = tuple[int, Scalar]

COMPARE_OPS: tuple[CompareOp, ...] = ("eq", "ne", "gt", "gte", "lt", "lte")
FIELD_OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists")
LOGICAL_OPERATORS = ("$and", "$or", "$not")
_RANGES: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le,
}


# ---------------------------------------------------------------------------------------------------- AST


@dataclass(frozen=True)
class Compare:
    """$eq/$ne/$gt/$gte/$lt/$lte of one path. `value` is normalized (2.0 -> 2); equality goes by `key`."""

    path: Path
    op: CompareOp
    value: Scalar = field(compare=False)
    key: ValueKey = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.op not in COMPARE_OPS:
            raise ValueError(f"unknown comparison {self.op!r}")
        object.__setattr__(self, "value", _normalized(self.value))
        object.__setattr__(self, "key", value_key(self.value))


@dataclass(frozen=True)
class Member:
    """$in (negate=False) or $nin (negate=True). `values` is deduplicated and sorted (bools, numbers, strings)."""

    path: Path
    values: tuple[Scalar, ...] = field(compare=False)
    negate: bool = False
    keys: frozenset[ValueKey] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        by_key = {value_key(v): v for v in map(_normalized, self.values)}
        object.__setattr__(self, "values", tuple(by_key[k] for k in sorted(by_key)))
        object.__setattr__(self, "keys", frozenset(by_key))


@dataclass(frozen=True)
class Exists:
    path: Path
    present: bool = True


@dataclass(frozen=True)
class And:
    items: tuple[Filter, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Filter, ...]


@dataclass(frozen=True)
class Not:
    item: Filter


Filter: TypeAlias = Compare | Member | Exists | And | Or | Not


def value_key(value: Scalar) -> ValueKey:
    """How the filter language compares a scalar: see ValueKey. Metadata values go through it as well."""
    if isinstance(value, bool):
        return (0, value)
    if isinstance(value, int | float):
        return (1, value)
    return (2, value)


def _normalized(value: Scalar) -> Scalar:
    # 2.0 and 2 are the same filter value: one spelling, so that canonical() gives one string.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# ---------------------------------------------------------------------------- normalizing constructors


def and_(*items: Filter) -> Filter:
    """All of `items`: nested Ands flattened, duplicates dropped, sorted; a single item is returned as is."""
    return _junction(And, items)


def or_(*items: Filter) -> Filter:
    """Any of `items`: as and_."""
    return _junction(Or, items)


def _junction(kind: type[And] | type[Or], items: Sequence[Filter]) -> Filter:
    if not items:
        raise ValueError(f"{kind.__name__} of no items")
    flat: dict[Filter, None] = {}
    for item in items:
        for sub in item.items if isinstance(item, kind) else (item,):
            flat[sub] = None
    unique = sorted(flat, key=_text)
    return unique[0] if len(unique) == 1 else kind(tuple(unique))


def not_(item: Filter) -> Filter:
    """The negation, pushed into the operators that have an exact opposite; Not(Not(f)) is f."""
    if isinstance(item, Not):
        return item.item
    if isinstance(item, Compare) and item.op in ("eq", "ne"):
        return Compare(item.path, "ne" if item.op == "eq" else "eq", item.value)
    if isinstance(item, Member):
        return Member(item.path, item.values, not item.negate)
    if isinstance(item, Exists):
        return Exists(item.path, not item.present)
    return Not(item)


def member(path: Path, values: Iterable[Scalar], negate: bool = False) -> Filter:
    """$in / $nin; with exactly one distinct value it is the same filter as $eq / $ne and is written so."""
    m = Member(path, tuple(values), negate)
    if len(m.values) == 1:
        return Compare(path, "ne" if negate else "eq", m.values[0])
    return m


def normalize(f: Filter) -> Filter:
    """The normal form parse() returns, for an AST built by hand."""
    if isinstance(f, Member):
        return member(f.path, f.values, f.negate)
    if isinstance(f, And):
        return and_(*map(normalize, f.items))
    if isinstance(f, Or):
        return or_(*map(normalize, f.items))
    if isinstance(f, Not):
        return not_(normalize(f.item))
    return f


# ------------------------------------------------------------------------------------------------ parse


def parse(raw: Any, field: str = "filter") -> Filter | None:
    """A JSON filter -> its normalized AST; None (no filter) for None or {}. InvalidInput names the part at fault,
    starting with `field`."""
    if raw is None or (isinstance(raw, dict) and not raw):
        return None
    if not isinstance(raw, dict):
        raise InvalidInput("must be a JSON object (a filter) or null", field)
    return _Parser(field).filter(raw, field, 1)


class _Parser:
    def __init__(self, root: str) -> None:
        self.root = root
        self.nodes = 0

    def count(self) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise InvalidInput(
                f"filter too large: more than {MAX_NODES:,} values (objects, lists and the values in them)", self.root)

    def filter(self, raw: Any, at: str, depth: int) -> Filter:
        if depth > MAX_DEPTH:
            raise InvalidInput(f"filter nested more than {MAX_DEPTH} levels deep ($and, $or, $not)", at)
        if not isinstance(raw, dict):
            raise InvalidInput("must be a filter object", at)
        if not raw:
            raise InvalidInput("must not be an empty filter (it would match everything)", at)
        self.count()
        parts: list[Filter] = []
        for key, value in raw.items():
            here = f"{at}.{_shown(key)}"
            if not isinstance(key, str):
                raise InvalidInput("keys must be strings", here)
            if key in ("$and", "$or"):
                if not isinstance(value, list) or not value:
                    raise InvalidInput(f"{key} takes a non-empty list of filters", here)
                self.count()
                items = [self.filter(item, f"{here}[{i}]", depth + 1) for i, item in enumerate(value)]
                parts.append(and_(*items) if key == "$and" else or_(*items))
            elif key == "$not":
                parts.append(not_(self.filter(value, here, depth + 1)))
            elif key in FIELD_OPERATORS:
                raise InvalidInput(f'{key} applies to a field: write {{"<field>": {{"{key}": ...}}}}', here)
            elif key.startswith("$"):
                raise InvalidInput(f"unknown operator {_shown(key)}: a filter's operators are $and, $or, $not", here)
            else:
                parts.append(self.condition(_field_path(key, here), value, here))
        return and_(*parts)

    def condition(self, path: Path, raw: Any, at: str) -> Filter:
        if not isinstance(raw, dict):
            return Compare(path, "eq", self.scalar(raw, at))
        if not raw:
            raise InvalidInput('must be a value or an object of operators such as {"$eq": ...}, not {}', at)
        self.count()
        parts = [self.operator(path, op, operand, f"{at}.{_shown(op)}") for op, operand in raw.items()]
        return and_(*parts)

    def operator(self, path: Path, op: Any, raw: Any, at: str) -> Filter:
        if op in ("$eq", "$ne"):
            return Compare(path, op[1:], self.scalar(raw, at))
        if op in ("$gt", "$gte", "$lt", "$lte"):
            if isinstance(raw, bool) or not isinstance(raw, int | float | str):
                raise InvalidInput(f"{op} takes a number or a string", at)
            return Compare(path, op[1:], self.scalar(raw, at))
        if op in ("$in", "$nin"):
            if not isinstance(raw, list):
                raise InvalidInput(f"{op} takes a list of values", at)
            if len(raw) > MAX_IN_VALUES:
                raise InvalidInput(f"{op} takes at most {MAX_IN_VALUES:,} values, got {len(raw):,}", at)
            self.count()
            return member(path, [self.scalar(v, f"{at}[{i}]") for i, v in enumerate(raw)], op == "$nin")
        if op == "$exists":
            if not isinstance(raw, bool):
                raise InvalidInput("$exists takes true or false", at)
            self.count()
            return Exists(path, raw)
        if op in LOGICAL_OPERATORS:
            raise InvalidInput(f'{op} combines whole filters: write {{"{op}": ...}} around the field', at)
        if isinstance(op, str) and op.startswith("$"):
            raise InvalidInput(f"unknown operator {_shown(op)}: a field takes {', '.join(FIELD_OPERATORS)}", at)
        dotted = ".".join(path)
        raise InvalidInput(f'objects are not values: to match a nested field write the path "{dotted}.{_shown(op)}"',
                           at)

    def scalar(self, raw: Any, at: str) -> Scalar:
        self.count()
        if raw is None:
            raise InvalidInput('null is not a value to filter on: use {"$exists": false} for a missing or null field',
                               at)
        if isinstance(raw, bool | int):
            return raw
        if isinstance(raw, float):
            if not math.isfinite(raw):
                raise InvalidInput("must be a finite number", at)
            return raw
        if isinstance(raw, str):
            _check_text(raw, at)
            return raw
        if isinstance(raw, list):
            raise InvalidInput("lists are not values: use $in to match any of several values", at)
        if isinstance(raw, dict):
            raise InvalidInput("objects are not values: match a nested field with a dotted path", at)
        raise InvalidInput(f"must be a string, a number or a boolean, not {type(raw).__name__}", at)


def _field_path(key: str, at: str) -> Path:
    if not key:
        raise InvalidInput("field names must not be empty", at)
    _check_text(key, at)
    path = tuple(key.split("."))
    if any(not segment for segment in path):
        raise InvalidInput(f"field path {key!r} has an empty segment", at)
    if any(segment.startswith("$") for segment in path):
        raise InvalidInput(f"field path {key!r} has a segment starting with $", at)
    return path


def _shown(key: Any) -> str:
    """A key as error messages and paths show it: lone surrogates escaped, so the error itself encodes as UTF-8."""
    return str(key).encode("utf-8", "backslashreplace").decode("utf-8")


def _check_text(text: str, at: str) -> None:
    # A lone surrogate ("\ud800" is valid JSON) cannot be encoded as UTF-8: refuse it here rather than have a
    # Redis key or a Celery message fail later.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput("must be valid Unicode (no lone surrogates)", at) from None


# -------------------------------------------------------------------------------------------- canonical


def canonical(f: Filter | None) -> str:
    """One JSON string per filter (sorted keys, no spaces, normal form): "{}" for no filter. Filters equal by
    structure (key order, $and/$or item order, duplicates, shorthand, 2 vs 2.0...) give the same string, and
    parse(json.loads(canonical(f))) == normalize(f)."""
    return "{}" if f is None else _dumps(to_json(normalize(f)))


def to_json(f: Filter) -> dict[str, Any]:
    """The filter as a JSON object in the explicit operator form (no shorthand)."""
    if isinstance(f, Compare):
        return {".".join(f.path): {f"${f.op}": f.value}}
    if isinstance(f, Member):
        return {".".join(f.path): {"$nin" if f.negate else "$in": list(f.values)}}
    if isinstance(f, Exists):
        return {".".join(f.path): {"$exists": f.present}}
    if isinstance(f, And):
        return {"$and": [to_json(item) for item in f.items]}
    if isinstance(f, Or):
        return {"$or": [to_json(item) for item in f.items]}
    return {"$not": to_json(f.item)}


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _text(f: Filter) -> str:
    return _dumps(to_json(f))


# ------------------------------------------------------------------------------------------- evaluation


def values_at(metadata: dict[str, Any] | None, path: Path | str) -> list[Scalar]:
    """The scalar values (str, int, float, bool) a document holds at `path` (a tuple or a dotted string), in
    document order, repeats kept: a list contributes its scalar elements, a list of objects is traversed element
    by element, and null, objects, nested lists and missing keys contribute nothing (nor does NaN, which stored
    metadata never holds). The payload indexes are built from this; the filter semantics are defined on it."""
    if isinstance(path, str):
        path = tuple(path.split("."))
    nodes: list[Any] = [metadata] if isinstance(metadata, dict) else []
    for segment in path:
        found: list[Any] = []
        for node in nodes:
            if isinstance(node, dict) and segment in node:
                value = node[segment]
                if isinstance(value, list):
                    found.extend(value)
                else:
                    found.append(value)
        nodes = found
    return [v for v in nodes if isinstance(v, str | int | float) and not (isinstance(v, float) and math.isnan(v))]


def matches(f: Filter | None, metadata: dict[str, Any] | None) -> bool:
    """The reference semantics (see the module docstring): does a document with this metadata pass the filter?
    No filter passes everything; null metadata has no fields."""
    if f is None:
        return True
    if isinstance(f, And):
        return all(matches(item, metadata) for item in f.items)
    if isinstance(f, Or):
        return any(matches(item, metadata) for item in f.items)
    if isinstance(f, Not):
        return not matches(f.item, metadata)
    values = values_at(metadata, f.path)
    if isinstance(f, Exists):
        return bool(values) == f.present
    if isinstance(f, Member):
        return any(value_key(x) in f.keys for x in values) != f.negate
    if f.op in ("eq", "ne"):
        return any(value_key(x) == f.key for x in values) != (f.op == "ne")
    compare = _RANGES[f.op]
    if isinstance(f.value, str):
        return any(isinstance(x, str) and compare(x, f.value) for x in values)
    return any(not isinstance(x, bool | str) and compare(x, f.value) for x in values)


def fields(f: Filter | None) -> set[Path]:
    """The paths a filter reads."""
    if f is None:
        return set()
    if isinstance(f, And | Or):
        return set().union(*(fields(item) for item in f.items))
    if isinstance(f, Not):
        return fields(f.item)
    return {f.path}


# ------------------------------------------------------------------------------------ static analysis


def never_matches(f: Filter | None) -> bool:
    """True only for filters no document can pass (so the API may answer an empty result without a search);
    False whenever unsure. Sound under list semantics: contradictions between two conditions on one path
    ($eq 1 and $eq 2; $gt 5 and $lt 3) are NOT flagged, since a list field can meet both."""
    if f is None:
        return False
    if isinstance(f, Member):
        return not f.negate and not f.values  # $in []
    if isinstance(f, Compare):
        return f.op == "lt" and f.value == ""  # no string sorts below ""
    if isinstance(f, Exists):
        return False
    if isinstance(f, Not):
        return always_matches(f.item)
    if isinstance(f, Or):
        return all(never_matches(item) for item in f.items)
    return any(never_matches(item) for item in f.items) or _contradiction(f.items)


def always_matches(f: Filter | None) -> bool:
    """True only for filters every document passes (e.g. $nin [], f or not f); False whenever unsure."""
    if f is None:
        return True
    if isinstance(f, Member):
        return f.negate and not f.values  # $nin []
    if isinstance(f, Compare | Exists):
        return False
    if isinstance(f, Not):
        return never_matches(f.item)
    if isinstance(f, And):
        return all(always_matches(item) for item in f.items)
    return any(always_matches(item) for item in f.items) or _tautology(f.items)


def _positive(f: Filter) -> frozenset[ValueKey] | None:
    """For "some value at the path is in P" ($eq, $in): P."""
    if isinstance(f, Compare) and f.op == "eq":
        return frozenset([f.key])
    if isinstance(f, Member) and not f.negate:
        return f.keys
    return None


def _negative(f: Filter) -> frozenset[ValueKey] | None:
    """For "no value at the path is in N" ($ne, $nin): N."""
    if isinstance(f, Compare) and f.op == "ne":
        return frozenset([f.key])
    if isinstance(f, Member) and f.negate:
        return f.keys
    return None


def _needs_a_value(f: Filter, absent: set[Path]) -> bool:
    """f can only hold for a document with a value at one of the `absent` paths."""
    if isinstance(f, And):
        return any(_needs_a_value(item, absent) for item in f.items)
    if isinstance(f, Or):
        return all(_needs_a_value(item, absent) for item in f.items)
    if isinstance(f, Not) or f.path not in absent:
        return False
    return (isinstance(f, Compare) and f.op != "ne") or (isinstance(f, Member) and not f.negate) or (
        isinstance(f, Exists) and f.present)


def _contradiction(items: Sequence[Filter]) -> bool:
    """All of `items` cannot hold: f and not f; no value at p in N and some value at p in P ⊆ N; no value at p
    at all and a condition (or an $or of conditions) that needs one."""
    present = set(items)
    if any(isinstance(item, Not) and item.item in present for item in items):
        return True
    leaves = [item for item in items if isinstance(item, Compare | Member | Exists)]
    excluded: dict[Path, set[ValueKey]] = {}
    for leaf in leaves:
        negative = _negative(leaf)
        if negative is not None:
            excluded.setdefault(leaf.path, set()).update(negative)
    absent = {leaf.path for leaf in leaves if isinstance(leaf, Exists) and not leaf.present}
    if absent and any(_needs_a_value(item, absent) for item in items):
        return True
    for leaf in leaves:
        positive = _positive(leaf)
        if positive is not None and positive <= excluded.get(leaf.path, set()):
            return True
    return False


def _tautology(items: Sequence[Filter]) -> bool:
    """One of `items` always holds: f or not f; some value at p in P or none in N ⊆ P (the P of all $eq/$in on p);
    p has a value or a condition any document without one meets ($exists false, $ne, $nin)."""
    present = set(items)
    if any(isinstance(item, Not) and item.item in present for item in items):
        return True
    leaves = [item for item in items if isinstance(item, Compare | Member | Exists)]
    allowed: dict[Path, set[ValueKey]] = {}
    for leaf in leaves:
        positive = _positive(leaf)
        if positive is not None:
            allowed.setdefault(leaf.path, set()).update(positive)
    exists = {leaf.path for leaf in leaves if isinstance(leaf, Exists) and leaf.present}
    for leaf in leaves:
        negative = _negative(leaf)
        met_without_a_value = negative is not None or (isinstance(leaf, Exists) and not leaf.present)
        if leaf.path in exists and met_without_a_value:
            return True
        if negative is not None and negative <= allowed.get(leaf.path, set()):
            return True
    return False
