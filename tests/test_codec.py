"""Unit tests of the pure codecs and validators (no Redis, no FAISS)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from api.errors import field_name
from api.strict_json import loads
from common import codec, jobs, keys
from common.errors import InvalidInput


def test_vectors_round_trip_exactly() -> None:
    rng = np.random.default_rng(0)
    m = rng.standard_normal((17, 5)).astype(np.float32)
    out = codec.decode_vectors(codec.encode_vectors(m), 5)
    assert out.dtype == np.float32 and np.array_equal(out, m)


def test_decode_refuses_partial_rows() -> None:
    with pytest.raises(InvalidInput):
        codec.decode_vectors(b"\x00" * 12, 4)


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ([], "vectors"),
        ([[1, 2], [1]], "vectors[1]"),
        ([[1, "2"]], "vectors[0][1]"),
        ([[1, True]], "vectors[0][1]"),
        ([[1, float("nan")]], "vectors[0][1]"),
        ([[1, float("inf")]], "vectors[0][1]"),
        ([[1, 1e39]], "vectors[0]"),
        ("nope", "vectors"),
    ],
)
def test_vectors_from_json_names_the_field(value: object, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        codec.vectors_from_json(value, 2)
    assert info.value.field == field


def test_normalized_does_not_touch_input_and_keeps_zero_rows() -> None:
    m = np.array([[3, 4], [0, 0]], dtype=np.float32)
    before = m.copy()
    n = codec.normalized(m)
    assert np.array_equal(m, before)
    assert np.allclose(n[0], [0.6, 0.8]) and np.array_equal(n[1], [0, 0])


def test_ids_checks() -> None:
    assert codec.check_ids(["a", "b"], 2, 10) == ["a", "b"]
    with pytest.raises(InvalidInput, match="duplicate") as info:
        codec.check_ids(["a", "b", "a"], 3, 10)
    assert info.value.field == "ids[2]"
    with pytest.raises(InvalidInput):
        codec.check_ids(["a"], 2, 10)
    with pytest.raises(InvalidInput):
        codec.check_ids(["x" * 11], 1, 10)


def test_metadata_serialized_and_bounded() -> None:
    assert codec.check_metadata([{"a": 1}, None], 2, 100) == ['{"a":1}', None]
    with pytest.raises(InvalidInput) as info:
        codec.check_metadata([{"a": "x" * 200}], 1, 100)
    assert info.value.field == "metadata[0]"
    with pytest.raises(InvalidInput):
        codec.check_metadata([[1]], 1, 100)


def test_generated_ids_are_stable_per_job() -> None:
    job = "0" * 31 + "1"
    assert codec.generated_ids(job, 0, 3) == codec.generated_ids(job, 0, 3)
    assert codec.generated_ids(job, 2, 1)[0] == codec.generated_ids(job, 0, 3)[2]
    assert len(set(codec.generated_ids(job, 0, 1000))) == 1000


def test_lsn_order_is_numeric() -> None:
    assert codec.lsn_at_least("10-0", "9-5")
    assert not codec.lsn_at_least("9-5", "10-0")
    assert codec.max_lsn(["9-1", "10-0", "10-2"]) == "10-2"
    with pytest.raises(InvalidInput):
        codec.lsn_key("abc")


def test_keys_refuse_traversal_and_separators() -> None:
    assert keys.collection("docs") == "vecq:col:docs"
    for bad in ["../x", "a:b", "", "x" * 65, "é", "a b", "-lead"]:
        with pytest.raises(keys.InvalidName):
            keys.collection(bad)
    with pytest.raises(keys.InvalidName):
        keys.job("abc:def")


@pytest.mark.parametrize("text", ['{"a": NaN}', '{"a": Infinity}', '{"a": 1, "a": 2}', "[" * 100_000])
def test_strict_json_refuses(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        loads(text)


def test_strict_json_accepts_plain() -> None:
    assert loads(b'{"v": [[1, 2.5e3]]}') == {"v": [[1, 2500.0]]}


def test_field_names() -> None:
    assert field_name(("body", "vectors", 3, 7)) == "vectors[3][7]"
    assert field_name(("query", "wait")) == "wait"
    assert field_name(("body", "params", "nprobe")) == "params.nprobe"


def test_batch_messages_round_trip_with_raw_values() -> None:
    hits = json.dumps({"results": [[{"id": "\u00e9\n{", "score": 0.5}]], "lsn": "1-0"}, ensure_ascii=False)
    error = json.dumps({"code": "invalid", "message": "bad\nk", "field": "k"})
    outcomes = [("j1", "succeeded", "result", hits), ("j2", "failed", "error", error),
                ("j3", "succeeded", "result", "[]")]
    batch_id, members = jobs.parse_batch_message(jobs.batch_message("b1", outcomes))
    assert batch_id == "b1"
    assert [(m.job_id, m.status, m.field, m.raw.decode()) for m in members] == outcomes
    assert jobs.parse_batch_message(jobs.batch_message("b2", [])) == ("b2", [])
    for broken in (b'{"job_id":"x"}', b'{"batch":"b","outcomes":[["j","succeeded","result",5]]}\n[]'):
        with pytest.raises(ValueError):
            jobs.parse_batch_message(broken)
