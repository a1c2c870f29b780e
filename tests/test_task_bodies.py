"""Task bodies called as plain functions, without Celery: a real redis-server (a Stack with Redis only), a real
registry over a temp segment store, and the jobs they would enqueue collected in a list."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from common import blobs, collections, formats, jobs, keys, scripts, wal
from common.celery_app import SEAL
from common.codec import encode_vectors
from common.errors import InvalidInput, NotFound
from common.settings import Settings
from vecq.stack import Stack
from worker import ingest, runner, tasks
from worker.registry import Registry
from worker.state import ProcessState


@pytest.fixture(scope="module")
def redis_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    s = Stack(data_dir=tmp_path_factory.mktemp("bodies"))
    try:
        client = redis.Redis.from_url(s.start_redis())
        yield client
        client.close()
    finally:
        s.stop()


@pytest.fixture
def st(redis_only: redis.Redis, tmp_path: Path) -> ProcessState:
    sent: list[tuple[str, dict[str, Any]]] = []
    settings = Settings(seal_every_rows=50, data_dir=tmp_path)
    state = ProcessState(settings=settings, r=redis_only, registry=Registry(redis_only, tmp_path / "segments"),
                         worker="test-1", send=lambda name, kwargs: sent.append((name, kwargs)))
    state.sent = sent  # type: ignore[attr-defined]
    return state


def new_name() -> str:
    return f"b-{uuid.uuid4().hex[:10]}"


def test_write_then_read_through_the_bodies(st: ProcessState) -> None:
    name = new_name()
    made = tasks.create_collection(st, uuid.uuid4().hex, name=name, dim=4)
    assert made["name"] == name and made["count"] == 0
    uid = collections.get(st.r, name).uid
    data = np.arange(40, dtype=np.float32).reshape(10, 4)
    ids = [f"v{i}" for i in range(10)]
    added = tasks.add(st, "job-add", collection=name, vectors_b64=encode_vectors(data), ids=ids, uid=uid,
                      metadata=[{"even": i % 2 == 0} for i in range(10)])
    assert added["count"] == 10 and added["ids"] == ids and added["lsn"] != "0-0"
    assert tasks.count(st, "job-count", collection=name, uid=uid) == {"count": 10, "lsn": added["lsn"]}
    even = json.dumps({"even": True})
    assert tasks.count(st, "job-count2", collection=name, filter=even)["count"] == 5
    got = tasks.get_vector(st, "job-get", collection=name, id="v3", uid=uid)
    assert got["vector"] == data[3].tolist() and got["metadata"] == {"even": False}
    hit = tasks.search(st, "job-search", collection=name, vectors_b64=encode_vectors(data[7:8]), k=2, uid=uid)
    assert hit["results"][0][0]["id"] == "v7"
    members = [{"job_id": "m1", "n": 1, "k": 1}, {"job_id": "m2", "n": 2, "k": 3, "offset": 1}]
    batch = tasks.search_batch(st, "batch-1", collection=name, vectors_b64=encode_vectors(data[[1, 2, 5]]),
                               members=members, uid=uid, k=99)
    assert [h["id"] for h in batch[0]["results"][0]] == ["v1"]
    assert [len(q) for q in batch[1]["results"]] == [3, 3] and batch[1]["results"][0][0]["id"] != "v2"  # offset 1
    deleted = tasks.delete(st, "job-del", collection=name, ids=["v1", "v2", "nope"], uid=uid)
    assert deleted["deleted"] == 2
    assert tasks.count(st, "job-count3", collection=name)["count"] == 8
    assert st.sent == []  # type: ignore[attr-defined]  # 10 rows: no seal due at 50


def test_add_enqueues_a_seal_once_due(st: ProcessState) -> None:
    name = new_name()
    tasks.create_collection(st, uuid.uuid4().hex, name=name, dim=2)
    uid = collections.get(st.r, name).uid
    tasks.add(st, "a1", collection=name, vectors=[[float(i), 0.0] for i in range(30)])
    assert st.sent == []  # type: ignore[attr-defined]
    tasks.add(st, "a2", collection=name, vectors=[[float(i), 1.0] for i in range(30)])
    assert st.sent == [(SEAL, {"collection": name, "uid": uid})]  # type: ignore[attr-defined]


def test_bodies_refuse_bad_input_and_gone_collections(st: ProcessState) -> None:
    with pytest.raises(InvalidInput) as err:
        tasks.create_collection(st, uuid.uuid4().hex, name=new_name(), dim=0)
    assert err.value.field == "dim"
    name = new_name()
    tasks.create_collection(st, uuid.uuid4().hex, name=name, dim=2)
    with pytest.raises(InvalidInput) as err:
        tasks.delete(st, "d", collection=name, ids=["a"], filter='{"x": 1}')
    assert err.value.field == "ids"
    with pytest.raises(NotFound):
        tasks.add(st, "a", collection=name, vectors=[[1.0, 2.0]], uid="another-incarnation")
    with pytest.raises(NotFound):
        tasks.get_vector(st, "g", collection=name, id="missing", uid=collections.get(st.r, name).uid)


def test_registry_holds_one_copy_per_collection_and_forgets_by_incarnation(st: ProcessState) -> None:
    name = new_name()
    tasks.create_collection(st, uuid.uuid4().hex, name=name, dim=2)
    uid = collections.get(st.r, name).uid
    tasks.add(st, "a", collection=name, vectors=[[1.0, 2.0]], ids=["x"])
    col = collections.get(st.r, name)
    copy = st.registry.ready(col)
    assert st.registry.held(name, uid) is copy and st.registry.held(name, "other") is None
    st.registry.forget(name, uid="other")
    assert st.registry.held(name, uid) is copy
    tasks.purge(st, "p", collection=name, uid=uid, dim=2)
    assert st.registry.held(name, uid) is None and name not in st.registry.summary()


def test_check_inputs_names_the_bad_argument() -> None:
    runner.check_inputs(tasks.count, {"collection": "c", "filter": None})
    for inputs in ({"collection": "c", "colour": "red"}, {}):
        with pytest.raises(InvalidInput) as err:
            runner.check_inputs(tasks.count, inputs)
        assert ("colour" if inputs else "collection") in err.value.message


def test_attempt_turns_exceptions_into_job_errors() -> None:
    assert runner.attempt(lambda: 7, "j", "t") == (7, None)

    def invalid() -> None:
        raise InvalidInput("no", "k")

    def broken() -> None:
        raise KeyError("x")

    assert runner.attempt(invalid, "j", "t") == (None, {"code": "invalid", "message": "no", "field": "k"})
    result, error = runner.attempt(broken, "j", "t")
    assert result is None and error is not None and error["code"] == "internal" and "KeyError" in error["message"]


def test_every_task_is_registered_once_with_its_job_type() -> None:
    names = {fn.name: fn.job_type for fn in runner.FUNCTIONS.values()}
    assert names["vecq.add"] == "add" and names["vecq.search"] == "search" and names["vecq.seal"] == "seal"
    assert runner.FUNCTIONS["vecq.search"].batch is tasks.search_batch
    assert runner.FUNCTIONS["vecq.create_collection"].collection({"name": "n"}) == "n"
    assert not runner.FUNCTIONS["vecq.add"].listed({"parent": "p"}) and runner.FUNCTIONS["vecq.add"].listed({})
    assert jobs.Claim.RUN  # the claim outcomes run_job branches on


def test_add_batch_appends_members_in_order_and_fails_a_bad_member_alone(st: ProcessState) -> None:
    name = new_name()
    tasks.create_collection(st, uuid.uuid4().hex, name=name, dim=2)
    uid = collections.get(st.r, name).uid
    rows = np.array([[1, 0], [2, 0], [3, 0], [4, 0], [5, 0]], dtype=np.float32)
    members = [{"job_id": "w1", "n": 1, "ids": ["same"], "metadata": [{"v": 1}]},
               {"job_id": "w2", "n": 2, "ids": ["", "x"]},  # an empty id: this member alone fails
               {"job_id": "w3", "n": 1, "ids": ["same"], "metadata": [{"v": 3}]},  # the later upsert wins
               {"job_id": "w4", "n": 1, "id_prefix": "p-", "id_start": 7}]
    results = tasks.add_batch(st, "batch-w", collection=name, uid=uid, vectors_b64=encode_vectors(rows),
                              members=members)
    assert isinstance(results[1], InvalidInput) and results[1].field == "ids[0]"
    ok = [results[0], results[2], results[3]]
    assert all(isinstance(res, dict) for res in ok)
    assert [res["ids"] for res in ok] == [["same"], ["same"], ["p-7"]]  # type: ignore[index]
    lsns = [tuple(int(part) for part in res["lsn"].split("-")) for res in ok]  # type: ignore[index]
    # One entry until an id comes again: w3 upserts w1's id, so it starts the batch's second entry, w4 joins it.
    assert lsns[0] < lsns[1] == lsns[2]
    assert st.r.xlen(keys.wal(name, uid)) == 2
    assert tasks.count(st, "c", collection=name, uid=uid)["count"] == 2
    got = tasks.get_vector(st, "g", collection=name, id="same", uid=uid)
    assert got["vector"] == [4.0, 0.0] and got["metadata"] == {"v": 3}  # w3's row (w2's two rows came before)
    again = tasks.add_batch(st, "batch-w", collection=name, uid=uid, vectors_b64=encode_vectors(rows),
                            members=members)  # a redelivery appends nothing twice
    assert [res["lsn"] for res in again if isinstance(res, dict)] == [res["lsn"] for res in ok]  # type: ignore[index]
    assert tasks.count(st, "c2", collection=name, uid=uid)["count"] == 2


def test_a_poisoned_seal_or_compaction_gives_its_lock_back(st: ProcessState) -> None:
    """Every delivery of a seal (or a compaction) was killed while it held its lock: the poisoned job's on_fail
    releases it, so the next one runs instead of waiting for the lock's TTL while the log grows."""
    from common import segments
    from common.errors import Poisoned

    name = new_name()
    tasks.create_collection(st, uuid.uuid4().hex, name=name, dim=2)
    col = collections.get(st.r, name)
    where = {"collection": name, "uid": col.uid}
    assert segments.lock(st.r, col, 3600, owner="seal-1")  # its killed deliveries held it
    assert not segments.lock(st.r, col, 3600, owner="seal-2", defer=True)  # a seal meanwhile: refused, asks again
    runner.FUNCTIONS["vecq.seal"].on_fail(st, "seal-1", Poisoned("gave up").to_dict(), where)  # type: ignore[misc]
    assert st.sent == [(SEAL, where)]  # type: ignore[attr-defined]
    assert segments.lock(st.r, col, 3600, owner="seal-3")  # free again
    segments.unlock(st.r, col, "seal-3")
    # An error the body saw itself (its `finally` let the lock go) leaves the lock to whoever holds it now.
    assert segments.lock(st.r, col, 3600, owner="seal-4")
    runner.FUNCTIONS["vecq.seal"].on_fail(st, "seal-9", {"code": "internal", "message": "x", "field": None},  # type: ignore[misc]
                                          where)
    assert not segments.lock(st.r, col, 3600, owner="seal-5")
    # A compaction's lock is its own: held, it refuses another compaction and leaves seals alone.
    assert segments.lock(st.r, col, 3600, owner="compact-1", kind="compact")
    assert not segments.lock(st.r, col, 3600, owner="compact-2", kind="compact")
    runner.FUNCTIONS["vecq.compact"].on_fail(st, "compact-1", Poisoned("gave up").to_dict(), where)  # type: ignore[misc]
    assert segments.lock(st.r, col, 3600, owner="compact-2", kind="compact")
    assert st.sent == [(SEAL, where)]  # type: ignore[attr-defined]  # a compaction owes no seal


def add_rows(st: ProcessState, name: str, job_id: str, data: np.ndarray, ids: list[str]) -> None:
    tasks.add(st, job_id, collection=name, vectors_b64=encode_vectors(data), ids=ids)


def brute_force_ids(rows: dict[str, np.ndarray], query: np.ndarray, k: int) -> list[str]:
    ids = sorted(rows)
    scores = ((np.array([rows[i] for i in ids], dtype=np.float64) - query) ** 2).sum(1)
    return [ids[j] for j in np.argsort(scores, kind="stable")[:k]]


def test_a_seal_runs_while_a_compaction_builds_and_the_compaction_commits_onto_it(st: ProcessState) -> None:
    """A compaction may rebuild a large HNSW graph for minutes; seals (which let the log be trimmed) must not wait
    for it. Here a compaction is built, then seals commit and trim the log while it holds its lock, and then it
    commits: the merged segment replaces the segments it read, the seals made meanwhile stay after it, and every
    search equals a brute force over the live rows (with deletes and upserts of rows in every segment)."""
    from common import segments, wal
    from worker import sealing, segment_files

    rng = np.random.default_rng(41)
    name = new_name()
    tasks.create_collection(st, uuid.uuid4().hex, name=name, dim=4)
    col = collections.get(st.r, name)
    live: dict[str, np.ndarray] = {}

    def write(job_id: str, ids: list[str]) -> None:
        data = rng.standard_normal((len(ids), 4)).astype(np.float32)
        add_rows(st, name, job_id, data, ids)
        live.update(zip(ids, data, strict=True))

    def drop(job_id: str, ids: list[str]) -> None:
        tasks.delete(st, job_id, collection=name, ids=ids)
        for vid in ids:
            live.pop(vid)

    store = segment_files.root(st.settings)
    write("w1", [f"a{i}" for i in range(30)])
    assert tasks.seal(st, "s1", collection=name)["sealed"]
    write("w2", [f"b{i}" for i in range(30)])
    drop("d1", ["a1", "a2"])
    assert tasks.seal(st, "s2", collection=name)["sealed"]
    assert segments.lock(st.r, col, 600, owner="compact-1", kind="compact")  # the compaction job, running
    merge = sealing.build_merge(st.settings, st.registry.ready(col, "strong"), store)
    assert merge is not None and len(merge.base.segments) == 2 and merge.merged is not None
    assert merge.merged.rows == 58

    write("w3", ["a3", "b3", "c0", "c1"])  # upserts of rows in both merged segments, and new rows
    drop("d2", ["a4", "b4"])  # deletes of rows in both
    sealed = tasks.seal(st, "s3", collection=name)  # not held back by the compaction's lock
    assert sealed["sealed"] and sealed["segments"] == 3
    assert st.r.xlen(keys.wal(name, col.uid)) <= 1  # the log trimmed to the seal while the compaction built
    write("w4", ["c2", "a5"])  # the growing part after the last seal

    committed = sealing.commit_merge(st.r, store, col, merge)
    segments.unlock(st.r, col, "compact-1", "compact")
    assert [s.id for s in committed.segments] == [merge.merged.id, segments.read(st.r, col).segments[1].id]
    assert committed.sealed_lsn == sealed["sealed_lsn"] == segments.read(st.r, col).sealed_lsn
    assert wal.last_lsn(st.r, col) > committed.sealed_lsn

    assert tasks.count(st, "n", collection=name)["count"] == len(live)
    queries = rng.standard_normal((20, 4)).astype(np.float32)
    found = tasks.search(st, "q", collection=name, vectors_b64=encode_vectors(queries), k=8)["results"]
    assert [[h["id"] for h in hits] for hits in found] == [brute_force_ids(live, q, 8) for q in queries]
    for vid in ("a3", "b3", "a5"):  # upserted: the newest vector
        assert tasks.get_vector(st, "g", collection=name, id=vid)["vector"] == live[vid].tolist()

    # A second compaction merges the first's segment and the seal made meanwhile: one segment, same answers.
    assert tasks.compact(st, "compact-2", collection=name)["compacted"]
    assert len(segments.read(st.r, col).segments) == 1
    again = tasks.search(st, "q2", collection=name, vectors_b64=encode_vectors(queries), k=8)["results"]
    assert again == found


def test_a_finished_write_batch_is_never_run_again(st: ProcessState) -> None:
    """A write batch's delivery key says `done` once it finished (for the redelivery window), so a redelivery whose
    ack was lost with its worker is skipped, and the log's dedup records of the batch may go at the next seal."""
    batch = f"batch-{uuid.uuid4().hex}"
    assert jobs.claim_delivery(st.r, batch, max_attempts=3, ttl=60) is jobs.Claim.RUN
    assert jobs.finished(st.r, [batch]) == [False]
    with st.r.pipeline(transaction=False) as pipe:
        jobs.finish_members(pipe, batch, [({"job_id": f"m-{batch}"}, {"count": 1}, None)], reply_to=None,
                            started_at=0.0, worker="test-1", hold_s=5, keep_done_s=600)
        scripts.execute(pipe)
    assert jobs.claim_delivery(st.r, batch, max_attempts=3, ttl=60) is jobs.Claim.SKIP
    assert jobs.finished(st.r, [batch, "never-seen"]) == [True, False]
    assert 590 < st.r.ttl(keys.delivery(batch)) <= 600
    search_batch = f"batch-{uuid.uuid4().hex}"  # without keep_done_s (searches): the key goes, a redelivery runs
    jobs.claim_delivery(st.r, search_batch, max_attempts=3, ttl=60)
    with st.r.pipeline(transaction=False) as pipe:
        jobs.finish_members(pipe, search_batch, [], reply_to=None, started_at=0.0, worker="test-1", hold_s=5)
        scripts.execute(pipe)
    assert not st.r.exists(keys.delivery(search_batch))


@pytest.mark.parametrize("segment_bytes", [64, 1 << 20])
def test_upload_parts_copied_by_redis_log_what_loaded_parts_log(st: ProcessState, monkeypatch: pytest.MonkeyPatch,
                                                                  segment_bytes: int) -> None:
    """A part of a checked float32 .npy has Redis copy its rows into the log (tasks.add_copied, never loading them);
    a float64 one loads, converts and sends them (tasks.add). Both log the same ids, vectors and metadata, in the
    same entries, whether or not a part's bytes straddle the blob's segments (64 bytes: every row does)."""
    data = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    logged = {}
    real_load = ingest.load
    for dtype in ("<f4", "<f8"):
        def load(*args: Any, _dtype: str = dtype, **kwargs: Any) -> Any:
            assert _dtype != "<f4", "a float32 part loaded its rows"
            return real_load(*args, **kwargs)

        monkeypatch.setattr(ingest, "load", load)
        name = new_name()
        tasks.create_collection(st, uuid.uuid4().hex, name=name, dim=4)
        col = collections.get(st.r, name)
        buf = io.BytesIO()
        np.save(buf, data.astype(dtype))
        raw = buf.getvalue()
        layout = formats.npy_layout(raw, complete=True)
        assert layout is not None
        parent = uuid.uuid4().hex
        jobs.create(st.r, parent, "ingest", name, ttl=600, total=10)
        blob = blobs.put(st.r, raw, ttl=600, segment_bytes=segment_bytes, format="npy", offset=layout.offset,
                         dtype=dtype, rows=10, cols=4, parts=2)
        for rows in ([0, 6], [6, 10]):
            out = tasks.add(st, ingest.child_id(parent, rows[0]), collection=name, uid=col.uid, blob=blob, rows=rows,
                            parent=parent, id_prefix="", chunk_rows=4)
            assert out["count"] == rows[1] - rows[0]
        _, entries = wal.read_after(st.r, col, "0-0", 64)
        logged[dtype] = [(e.op, e.ids, e.vectors, e.metadata) for e in entries]
        assert jobs.public(jobs.get(st.r, parent) or {})["status"] == "succeeded"
    assert logged["<f4"] == logged["<f8"]
    assert [len(ids) for _, ids, _, _ in logged["<f4"]] == [4, 2, 4]
    assert b"".join(v for _, _, v, _ in logged["<f4"]) == data.tobytes()
