"""Unit tests of the metadata filter language, common/filters.py (pure: no Redis, no FAISS)."""

from __future__ import annotations

import json
import operator
import random
import re
import time
from pathlib import Path
from typing import Any

import pytest

from bench.filtered import random_doc, random_filter
from common import filters
from common.errors import InvalidInput
from common.filters import And, Compare, Exists, Member, Not, Or

# ------------------------------------------------------------------------------------------ malformed

MALFORMED: list[tuple[Any, str]] = [
    ([1], "filter"),
    ("lang", "filter"),
    (5, "filter"),
    ({"$and": {}}, "filter.$and"),
    ({"$and": []}, "filter.$and"),
    ({"$or": "x"}, "filter.$or"),
    ({"$or": [{"a": 1}, 5]}, "filter.$or[1]"),
    ({"$or": [{"a": 1}, {}]}, "filter.$or[1]"),
    ({"$not": []}, "filter.$not"),
    ({"$not": {}}, "filter.$not"),
    ({"$nor": [{"a": 1}]}, "filter.$nor"),
    ({"$eq": 1}, "filter.$eq"),
    ({"year": {"$foo": 1}}, "filter.year.$foo"),
    ({"$or": [{"a": 1}, {"lang": {"$regex": "^e"}}]}, "filter.$or[1].lang.$regex"),
    ({"year": {"$gt": [1]}}, "filter.year.$gt"),
    ({"year": {"$gte": True}}, "filter.year.$gte"),
    ({"year": {"$lt": None}}, "filter.year.$lt"),
    ({"year": {"$lte": {"x": 1}}}, "filter.year.$lte"),
    ({"year": {"$lt": float("inf")}}, "filter.year.$lt"),
    ({"year": {"$in": 5}}, "filter.year.$in"),
    ({"year": {"$nin": "abc"}}, "filter.year.$nin"),
    ({"year": {"$in": [1, None]}}, "filter.year.$in[1]"),
    ({"year": {"$nin": [1, [2]]}}, "filter.year.$nin[1]"),
    ({"year": {"$in": [1, {"a": 1}]}}, "filter.year.$in[1]"),
    ({"year": {"$in": list(range(filters.MAX_IN_VALUES + 1))}}, "filter.year.$in"),
    ({"a": {"$exists": "yes"}}, "filter.a.$exists"),
    ({"a": {"$exists": 1}}, "filter.a.$exists"),
    ({"a": None}, "filter.a"),
    ({"a": {"$eq": None}}, "filter.a.$eq"),
    ({"a": {"$ne": [1]}}, "filter.a.$ne"),
    ({"a": [1, 2]}, "filter.a"),
    ({"a": {}}, "filter.a"),
    ({"a": float("nan")}, "filter.a"),
    ({"a": b"bytes"}, "filter.a"),
    ({"a": "\ud800"}, "filter.a"),
    ({"a\ud800": 1}, "filter.a\\ud800"),
    ({"a": {"$x\udc00": 1}}, "filter.a.$x\\udc00"),
    ({"author": {"name": "ann"}}, "filter.author.name"),
    ({"a": {"$gt": 1, "b": 2}}, "filter.a.b"),
    ({"a": {"$eq": {"$gt": 1}}}, "filter.a.$eq"),
    ({"a": {"$not": {"$gt": 1}}}, "filter.a.$not"),
    ({"a": {"$and": [{"$gt": 1}]}}, "filter.a.$and"),
    ({"": 1}, "filter."),
    ({"a..b": 1}, "filter.a..b"),
    ({"a.": 1}, "filter.a."),
    ({".a": 1}, "filter..a"),
    ({"a.$b": 1}, "filter.a.$b"),
    ({1: 2}, "filter.1"),
    ({"$and": [{"$or": [{"a": {"$in": "x"}}]}]}, "filter.$and[0].$or[0].a.$in"),
    ({"$not": {"a": {"$ne": [1]}}}, "filter.$not.a.$ne"),
    ({"ok": 1, "$and": [{"b": 2}, {"c": {"$exists": None}}]}, "filter.$and[1].c.$exists"),
]


@pytest.mark.parametrize(("raw", "field"), MALFORMED)
def test_malformed_filters_name_the_path(raw: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        filters.parse(raw)
    assert info.value.field == field
    assert info.value.status == 422 and info.value.message
    json.dumps(info.value.to_dict(), ensure_ascii=False).encode()  # the error body itself is valid UTF-8


def test_enough_malformed_cases() -> None:
    assert len(MALFORMED) >= 30


def test_error_messages_say_what_to_do() -> None:
    cases = [
        ({"a": None}, "$exists"),
        ({"a": {"$foo": 1}}, "unknown operator $foo"),
        ({"$foo": 1}, "unknown operator $foo"),
        ({"a": {"$in": list(range(2000))}}, "at most 1,024 values, got 2,000"),
        ({"a": [1, 2]}, "$in"),
        ({"author": {"name": "x"}}, '"author.name"'),
    ]
    for raw, text in cases:
        with pytest.raises(InvalidInput) as info:
            filters.parse(raw)
        assert text in info.value.message, (raw, info.value.message)


def test_field_prefix_is_the_callers() -> None:
    with pytest.raises(InvalidInput) as info:
        filters.parse({"$or": [{"a": 1}, {"b": None}]}, field="queries[2].filter")
    assert info.value.field == "queries[2].filter.$or[1].b"


def test_error_record_shape() -> None:
    with pytest.raises(InvalidInput) as info:
        filters.parse({"year": {"$gt": [1]}})
    assert info.value.to_dict() == {"code": "invalid", "message": "$gt takes a number or a string",
                                    "field": "filter.year.$gt"}


# ------------------------------------------------------------------------------------------ limits


def nested(levels: int) -> dict[str, Any]:
    raw: dict[str, Any] = {"a": 1}
    for _ in range(levels - 1):
        raw = {"$and": [raw, {"b": 2}]}
    return raw


def test_depth_limit() -> None:
    assert filters.parse(nested(filters.MAX_DEPTH)) is not None
    with pytest.raises(InvalidInput, match="32 levels") as info:
        filters.parse(nested(filters.MAX_DEPTH + 1))
    assert info.value.field == "filter" + ".$and[0]" * filters.MAX_DEPTH
    deep_not: dict[str, Any] = {"a": 1}
    for _ in range(filters.MAX_DEPTH):
        deep_not = {"$not": deep_not}
    with pytest.raises(InvalidInput) as info:
        filters.parse(deep_not)
    assert info.value.field == "filter" + ".$not" * filters.MAX_DEPTH


def test_depth_limit_holds_far_beyond_the_recursion_limit() -> None:
    with pytest.raises(InvalidInput):
        filters.parse(nested(5000))


def test_size_limit_counts_json_values() -> None:
    # root object + the $or list + (object + value) per item: 2 + 2n values
    n = (filters.MAX_NODES - 2) // 2
    assert isinstance(filters.parse({"$or": [{"a": i} for i in range(n)]}), Member | Or)
    with pytest.raises(InvalidInput, match="4,096") as info:
        filters.parse({"$or": [{"a": i} for i in range(n + 1)]})
    assert info.value.field == "filter"
    with pytest.raises(InvalidInput, match="too large") as info:
        filters.parse({f"f{i}": {"$in": list(range(1000))} for i in range(5)}, field="f")
    assert info.value.field == "f"


def test_in_list_limit_is_inclusive() -> None:
    f = filters.parse({"a": {"$in": list(range(filters.MAX_IN_VALUES))}})
    assert isinstance(f, Member) and len(f.values) == filters.MAX_IN_VALUES


def test_largest_filter_is_cheap() -> None:
    raw = {"$and": [{"$or": [{f"p{i}": {"$in": list(range(100))}}, {f"q{i}.x": {"$gt": i}}]} for i in range(37)]}
    start = time.perf_counter()
    f = filters.parse(raw)
    text = filters.canonical(f)
    filters.never_matches(f)
    filters.matches(f, {"p1": 5})
    assert time.perf_counter() - start < 1.0
    assert filters.parse(json.loads(text)) == f
    wide = {"$and": [{f"p{i}": {"$exists": False}} for i in range(600)]
            + [{"$or": [{f"p{i}": {"$gt": 1}} for i in range(600)]}]}
    start = time.perf_counter()
    assert filters.never_matches(filters.parse(wide))  # each $or branch needs a value none of the p_i has
    assert time.perf_counter() - start < 1.0


# ------------------------------------------------------------------------------------------ semantics

DOCS: dict[str, dict[str, Any] | None] = {
    "null": None,
    "empty": {},
    "en": {"lang": "en", "year": 2021, "score": 0.5, "draft": False, "tags": ["a", "b"],
           "author": {"name": "ann", "age": 40}},
    "fr": {"lang": "fr", "year": 2019.0, "score": 1, "draft": True, "tags": [], "author": {"name": "bob"}},
    "many": {"lang": ["en", "de"], "year": "2020", "score": True, "tags": ["c", 1, None, ["a"]],
             "author": [{"name": "cy"}, {"name": ["dee", "ed"]}]},
    "nulls": {"lang": None, "year": None, "tags": None, "author": None},
}
ALL = set(DOCS)

SEMANTICS: list[tuple[dict[str, Any], set[str]]] = [
    # $eq and its shorthand; a list field matches if any element does
    ({"lang": "en"}, {"en", "many"}),
    ({"lang": {"$eq": "en"}}, {"en", "many"}),
    ({"lang": "EN"}, set()),
    # $ne: a missing field, null, and null metadata match
    ({"lang": {"$ne": "en"}}, {"null", "empty", "fr", "nulls"}),
    ({"missing": {"$ne": 1}}, ALL),
    # $in / $nin
    ({"lang": {"$in": ["fr", "de"]}}, {"fr", "many"}),
    ({"lang": {"$nin": ["fr", "de"]}}, {"null", "empty", "en", "nulls"}),
    ({"lang": {"$in": []}}, set()),
    ({"lang": {"$nin": []}}, ALL),
    ({"missing.deep": {"$nin": [1]}}, ALL),
    # $exists: null, [] and objects hold no value
    ({"lang": {"$exists": True}}, {"en", "fr", "many"}),
    ({"lang": {"$exists": False}}, {"null", "empty", "nulls"}),
    ({"tags": {"$exists": True}}, {"en", "many"}),
    ({"tags": {"$exists": False}}, {"null", "empty", "fr", "nulls"}),
    ({"author": {"$exists": True}}, set()),
    ({"author.age": {"$exists": False}}, ALL - {"en"}),
    ({"lang.x": {"$exists": True}}, set()),
    # ints and floats by value; bool never a number
    ({"year": 2019}, {"fr"}),
    ({"year": 2019.0}, {"fr"}),
    ({"score": 1}, {"fr"}),
    ({"score": 1.0}, {"fr"}),
    ({"score": True}, {"many"}),
    ({"draft": False}, {"en"}),
    ({"draft": 0}, set()),
    ({"score": {"$in": [1, 0.5]}}, {"en", "fr"}),
    ({"score": {"$in": [True]}}, {"many"}),
    ({"score": {"$nin": [True, 0.5]}}, {"null", "empty", "fr", "nulls"}),
    # ranges: numbers with numbers, strings with strings, booleans never
    ({"year": {"$gt": 2019}}, {"en"}),
    ({"year": {"$gte": 2019}}, {"en", "fr"}),
    ({"year": {"$lt": 2021}}, {"fr"}),
    ({"year": {"$lte": 2021.0}}, {"en", "fr"}),
    ({"year": {"$gt": "2000"}}, {"many"}),
    ({"year": {"$gte": 2020, "$lt": 2022}}, {"en"}),
    ({"score": {"$gt": 0}}, {"en", "fr"}),
    ({"score": {"$gte": 0.5, "$lte": 0.5}}, {"en"}),
    ({"draft": {"$gte": 0}}, set()),
    ({"tags": {"$gt": "a"}}, {"en", "many"}),
    ({"tags": {"$lt": ""}}, set()),
    ({"tags": {"$gte": ""}}, {"en", "many"}),
    # lists: each condition may be met by a different element
    ({"tags": "a"}, {"en"}),
    ({"tags": 1}, {"many"}),
    ({"tags": {"$ne": "a"}}, ALL - {"en"}),
    ({"tags": {"$nin": ["a", "c"]}}, {"null", "empty", "fr", "nulls"}),
    ({"$and": [{"tags": "a"}, {"tags": "b"}]}, {"en"}),
    ({"tags": {"$gt": "a", "$lt": "b"}}, {"en"}),
    # nested paths, through lists of objects
    ({"author.name": "ann"}, {"en"}),
    ({"author.name": "dee"}, {"many"}),
    ({"author.name": {"$gte": "b"}}, {"fr", "many"}),
    ({"author.age": {"$lt": 50}}, {"en"}),
    # logic
    ({"lang": "en", "draft": False}, {"en"}),
    ({"$or": [{"lang": "fr"}, {"year": {"$gt": 2020}}]}, {"en", "fr"}),
    ({"$not": {"year": {"$gt": 2020}}}, ALL - {"en"}),
    ({"$not": {"lang": "en"}}, {"null", "empty", "fr", "nulls"}),
    ({"$and": [{"lang": "en"}, {"$or": [{"draft": True}, {"tags": 1}]}]}, {"many"}),
    ({"$not": {"$or": [{"lang": "en"}, {"lang": "fr"}]}}, {"null", "empty", "nulls"}),
]


@pytest.mark.parametrize(("raw", "expected"), SEMANTICS)
def test_semantics_table(raw: dict[str, Any], expected: set[str]) -> None:
    f = filters.parse(raw)
    assert {name for name, doc in DOCS.items() if filters.matches(f, doc)} == expected
    assert {name for name, doc in DOCS.items() if naive(raw, doc)} == expected
    again = filters.parse(json.loads(filters.canonical(f)))
    assert {name for name, doc in DOCS.items() if filters.matches(again, doc)} == expected


def test_no_filter_matches_everything() -> None:
    assert filters.parse(None) is None and filters.parse({}) is None
    assert all(filters.matches(None, doc) for doc in DOCS.values())


def test_int_and_float_compare_by_exact_value() -> None:
    big = 2**53 + 1
    f = filters.parse({"n": big})
    assert filters.matches(f, {"n": big})
    assert not filters.matches(f, {"n": float(2**53)})
    assert filters.matches(filters.parse({"n": {"$gt": float(2**53)}}), {"n": big})


def test_values_at() -> None:
    doc = {"a": 1, "b": [1, "x", None, [2], {"c": 3}, True, float("nan")], "o": {"p": {"q": "deep"}},
           "l": [{"m": 1}, {"m": [2, 3]}, {"n": 4}, 5], "z": None, "e": {}}
    assert filters.values_at(doc, ("a",)) == [1]
    assert filters.values_at(doc, ("b",)) == [1, "x", True]
    assert filters.values_at(doc, ("b", "c")) == [3]
    assert filters.values_at(doc, ("o", "p", "q")) == ["deep"]
    assert filters.values_at(doc, "o.p.q") == ["deep"]
    assert filters.values_at(doc, ("o",)) == []
    assert filters.values_at(doc, ("l", "m")) == [1, 2, 3]
    assert filters.values_at(doc, ("z",)) == filters.values_at(doc, ("e",)) == []
    assert filters.values_at(doc, ("missing", "x")) == []
    assert filters.values_at(doc, ("a", "x")) == []
    assert filters.values_at(None, ("a",)) == []
    assert filters.values_at({"a.b": 1}, ("a", "b")) == []  # a dotted key is not reachable by a path


def test_fields() -> None:
    f = filters.parse({"a": 1, "$or": [{"b.c": {"$gt": 1}}, {"$not": {"d": {"$exists": True}}}], "e": {"$in": []}})
    assert filters.fields(f) == {("a",), ("b", "c"), ("d",), ("e",)}
    assert filters.fields(None) == set()


# ------------------------------------------------------------------------------------ normal form


def test_shorthand_and_operators_parse_to_one_ast() -> None:
    eq = Compare(("lang",), "eq", "en")
    assert filters.parse({"lang": "en"}) == filters.parse({"lang": {"$eq": "en"}}) == eq
    assert filters.parse({"$and": [{"lang": "en"}]}) == eq
    assert filters.parse({"$or": [{"lang": "en"}, {"lang": "en"}]}) == eq
    assert filters.parse({"lang": {"$in": ["en"]}}) == eq
    assert filters.parse({"lang": {"$nin": ["en"]}}) == Compare(("lang",), "ne", "en")
    assert filters.parse({"$not": {"$not": {"lang": "en"}}}) == eq
    assert filters.parse({"$not": {"lang": "en"}}) == Compare(("lang",), "ne", "en")
    assert filters.parse({"$not": {"a": {"$exists": True}}}) == Exists(("a",), False)
    assert filters.parse({"$not": {"a": {"$in": [1, 2]}}}) == Member(("a",), (1, 2), negate=True)
    assert filters.parse({"$not": {"a": {"$gt": 1}}}) == Not(Compare(("a",), "gt", 1))
    assert filters.parse({"author.name": "x"}) == Compare(("author", "name"), "eq", "x")


def test_several_keys_and_operators_are_one_flat_and() -> None:
    a = filters.parse({"a": 1, "b": {"$gte": 2, "$lt": 5}})
    b = filters.parse({"$and": [{"b": {"$lt": 5}}, {"$and": [{"a": 1}, {"b": {"$gte": 2}}]}]})
    assert a == b
    assert isinstance(a, And) and len(a.items) == 3
    assert all(isinstance(item, Compare) for item in a.items)


def test_bool_and_number_stay_apart_int_and_float_merge() -> None:
    assert filters.parse({"a": True}) != filters.parse({"a": 1})
    assert filters.parse({"a": False}) != filters.parse({"a": 0})
    assert filters.parse({"a": 2.0}) == filters.parse({"a": 2})
    assert filters.canonical(filters.parse({"a": 2.0})) == '{"a":{"$eq":2}}'
    assert filters.canonical(filters.parse({"a": -0.0})) == '{"a":{"$eq":0}}'
    m = filters.parse({"a": {"$in": [1, 1.0, True, "1", False, 0, "b", "a", 2.5]}})
    assert isinstance(m, Member) and m.values == (False, True, 0, 1, 2.5, "1", "a", "b")
    assert filters.parse({"a": {"$in": [True, 2]}}) != filters.parse({"a": {"$in": [1, 2]}})


def test_canonical_format() -> None:
    raw = {"year": {"$lt": 2024, "$gte": 2020.0}, "lang": "en", "$or": [{"tags": {"$in": ["b", "a"]}},
                                                                      {"draft": {"$exists": False}}]}
    assert filters.canonical(filters.parse(raw)) == (
        '{"$and":[{"$or":[{"draft":{"$exists":false}},{"tags":{"$in":["a","b"]}}]},'
        '{"lang":{"$eq":"en"}},{"year":{"$gte":2020}},{"year":{"$lt":2024}}]}')
    assert filters.canonical(None) == "{}"
    assert filters.parse(json.loads(filters.canonical(None))) is None
    assert filters.canonical(filters.parse({"t": "é"})) == '{"t":{"$eq":"é"}}'


def test_canonical_normalizes_a_hand_built_ast() -> None:
    a, b = Compare(("a",), "eq", 1), Compare(("b",), "gt", 2.0)
    built = And((b, And((a, a)), Not(Not(Member(("c",), ("x",))))))
    f = filters.parse({"a": 1, "b": {"$gt": 2}, "c": "x"})
    assert filters.canonical(built) == filters.canonical(f)
    assert filters.normalize(built) == f
    with pytest.raises(ValueError):
        Compare(("a",), "like", 1)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ random filters

# random_filter and random_doc (bench/filtered.py, imported above) are the generators the filtered-search
# benchmark uses too: numbers vs booleans, 1 vs 1.0, lists, lists of objects, nested paths, null.


def shuffled(raw: Any, rng: random.Random) -> Any:
    """The same filter written in another order: object keys, $and/$or items and $in values shuffled, 2 -> 2.0."""
    if isinstance(raw, dict):
        items = list(raw.items())
        rng.shuffle(items)
        return {key: shuffled(value, rng) for key, value in items}
    if isinstance(raw, list):
        out = [shuffled(v, rng) for v in raw]
        rng.shuffle(out)
        return out
    if isinstance(raw, int) and not isinstance(raw, bool) and rng.random() < 0.5:
        return float(raw)
    return raw


_RANGE_OPS = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}


def same(x: Any, y: Any) -> bool:
    return isinstance(x, bool) == isinstance(y, bool) and isinstance(x, str) == isinstance(y, str) and x == y


def naive(raw: dict[str, Any], doc: dict[str, Any] | None) -> bool:
    """docs/filters.md read literally, on the raw JSON: no AST, no normalization."""
    for key, value in raw.items():
        if key == "$and":
            ok = all(naive(item, doc) for item in value)
        elif key == "$or":
            ok = any(naive(item, doc) for item in value)
        elif key == "$not":
            ok = not naive(value, doc)
        else:
            ops = value if isinstance(value, dict) else {"$eq": value}
            found = filters.values_at(doc, key)
            ok = all(naive_operator(op, arg, found) for op, arg in ops.items())
        if not ok:
            return False
    return True


def naive_operator(op: str, arg: Any, found: list[Any]) -> bool:
    if op == "$eq":
        return any(same(x, arg) for x in found)
    if op == "$ne":
        return not any(same(x, arg) for x in found)
    if op == "$in":
        return any(same(x, a) for x in found for a in arg)
    if op == "$nin":
        return not any(same(x, a) for x in found for a in arg)
    if op == "$exists":
        return bool(found) == arg
    kind = str if isinstance(arg, str) else (int, float)
    return any(isinstance(x, kind) and not isinstance(x, bool) and _RANGE_OPS[op](x, arg) for x in found)


def test_random_filters_round_trip_and_agree_with_the_naive_reading() -> None:
    rng = random.Random(15)
    docs = [random_doc(rng) for _ in range(120)]
    matched = 0
    for _ in range(600):
        raw = random_filter(rng)
        f = filters.parse(raw)
        text = filters.canonical(f)
        again = filters.parse(json.loads(text))
        assert again == f, raw
        assert filters.canonical(again) == text
        assert filters.canonical(filters.parse(shuffled(raw, rng))) == text, raw
        results = [filters.matches(f, doc) for doc in docs]
        assert results == [naive(raw, doc) for doc in docs], raw
        matched += any(results)
    assert matched > 300  # the random filters are not all empty


def test_never_and_always_matches_are_sound_on_random_filters() -> None:
    rng = random.Random(1515)
    docs = [random_doc(rng) for _ in range(250)] + list(DOCS.values())
    never = always = 0
    for _ in range(1500):
        f = filters.parse(random_filter(rng))
        results = [filters.matches(f, doc) for doc in docs]
        if filters.never_matches(f):
            never += 1
            assert not any(results), filters.canonical(f)
        if filters.always_matches(f):
            always += 1
            assert all(results), filters.canonical(f)
    assert never > 100 and always > 10  # the checks do fire


NEVER = [
    {"a": {"$in": []}},
    {"b": 1, "$and": [{"a": {"$in": []}}, {"c": 2}]},
    {"$or": [{"a": {"$in": []}}, {"b": {"$lt": ""}}]},
    {"a": 1, "$not": {"a": 1}},
    {"a": {"$eq": 1, "$nin": [0, 1]}},
    {"a": {"$in": [1, 2], "$nin": [1, 2, 3]}},
    {"a": {"$in": [1, 2], "$ne": 1}, "$and": [{"a": {"$ne": 2}}]},
    {"a": {"$exists": False, "$gt": 1}},
    {"a": {"$exists": False}, "$or": [{"a": "x"}, {"a": {"$in": [1, 2]}}]},
    {"a": {"$exists": False}, "$and": [{"a": {"$exists": True}}]},
    {"$not": {"a": {"$nin": []}}},
    {"x": {"$gt": 1}, "$not": {"x": {"$gt": 1}}},
    {"$not": {"$or": [{"a": {"$exists": True}}, {"a": {"$exists": False}}]}},
    {"$not": {"$or": [{"a": {"$in": [1, 2]}}, {"a": {"$nin": [1]}}]}},
    {"$not": {"$or": [{"a": {"$exists": True}}, {"a": {"$ne": 3}}]}},
]

# Each with a document that matches it: never_matches must say False.
SATISFIABLE = [
    ({"a": 1, "$and": [{"a": 2}]}, {"a": [1, 2]}),
    ({"a": {"$gt": 5, "$lt": 3}}, {"a": [1, 10]}),
    ({"a": {"$gt": "b", "$lt": 1}}, {"a": ["c", 0]}),
    ({"a": {"$ne": 1, "$in": [1, 2]}}, {"a": 2}),
    ({"a": {"$nin": [1, 2], "$exists": True}}, {"a": 3}),
    ({"a": {"$exists": False}, "a.b": 1}, {"a": {"b": 1}}),
    ({"a": {"$lte": ""}}, {"a": ""}),
    ({"a": {"$gt": 1e308}}, {"a": 10**400}),
    ({"a": {"$exists": False, "$ne": 1}}, {}),
    ({"$not": {"$or": [{"a": 1}, {"a": {"$ne": 2}}]}}, {"a": 2}),
]


@pytest.mark.parametrize("raw", NEVER)
def test_never_matches_flags(raw: dict[str, Any]) -> None:
    f = filters.parse(raw)
    assert filters.never_matches(f)
    assert not any(filters.matches(f, doc) for doc in DOCS.values())


@pytest.mark.parametrize(("raw", "witness"), SATISFIABLE)
def test_never_matches_spares_satisfiable_filters(raw: dict[str, Any], witness: dict[str, Any]) -> None:
    f = filters.parse(raw)
    assert filters.matches(f, witness)
    assert not filters.never_matches(f)


def test_always_matches() -> None:
    assert filters.always_matches(None) and not filters.never_matches(None)
    for raw in [{"a": {"$nin": []}}, {"$or": [{"a": 1}, {"a": {"$ne": 1}}]}, {"$not": {"a": {"$in": []}}},
                {"$or": [{"a": {"$exists": True}}, {"a": {"$nin": [4, 5]}}]}]:
        assert filters.always_matches(filters.parse(raw)), raw
    for raw in [{"a": {"$ne": 1}}, {"a": {"$exists": False}}, {"$or": [{"a": 1}, {"a": {"$ne": 2}}]}]:
        assert not filters.always_matches(filters.parse(raw)), raw


# ------------------------------------------------------------------------------------ docs/filters.md

DOC = (Path(__file__).resolve().parent.parent / "docs" / "filters.md").read_text()
ROW = re.compile(r"^\| `(\{.*\})` \| (.+?) \|(?: (.+) \|)?$", re.MULTILINE)


def test_docs_examples_table_is_true() -> None:
    docs = {row["id"]: row["metadata"] for row in map(json.loads, re.findall(r'^\{"id".*\}$', DOC, re.MULTILINE))}
    assert len(docs) == 4
    section = DOC[DOC.index("Examples, for these documents"):DOC.index("## Limits")]
    rows = ROW.findall(section)
    assert len(rows) >= 12
    for raw, names, _ in rows:
        names = names.split(" (")[0]
        expected = set() if names == "none" else set(names.split(", "))
        f = filters.parse(json.loads(raw))
        assert {name for name, doc in docs.items() if filters.matches(f, doc)} == expected, raw


def test_docs_errors_table_is_true() -> None:
    section = DOC[DOC.index("## Errors"):DOC.index("## Canonical form")]
    rows = ROW.findall(section)
    assert len(rows) >= 8
    for raw, field, message in rows:
        with pytest.raises(InvalidInput) as info:
            filters.parse(json.loads(raw))
        assert info.value.field == field.strip("`")
        assert info.value.message.startswith(message.strip("`").split("…")[0].rstrip()), raw
