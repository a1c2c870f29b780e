"""common/scripts.py: scripts run by digest, and a script Redis lost (SCRIPT FLUSH, as after a restart) is loaded
and run again, alone or in a pipeline, without a SCRIPT EXISTS before each pipeline."""

from __future__ import annotations

import uuid

import pytest
import redis

from common import scripts
from common.scripts import Lua

_INCR = Lua("return redis.call('INCRBY', KEYS[1], ARGV[1])")


def test_a_lost_script_is_loaded_and_run_once(r: redis.Redis) -> None:
    key = f"test:scripts:{uuid.uuid4().hex}"
    try:
        assert _INCR(r, keys=[key], args=[2]) == 2
        r.script_flush()
        assert _INCR(r, keys=[key], args=[3]) == 5
    finally:
        r.delete(key)


def test_a_pipeline_runs_each_command_once_even_after_a_flush(r: redis.Redis) -> None:
    key, other = f"test:scripts:{uuid.uuid4().hex}", f"test:scripts:{uuid.uuid4().hex}"
    try:
        r.script_flush()
        with r.pipeline(transaction=False) as pipe:
            _INCR.queue(pipe, keys=[key], args=[1])
            pipe.incr(other)
            _INCR.queue(pipe, keys=[key], args=[10])
            assert scripts.execute(pipe) == [1, 1, 11]
        r.script_flush()
        with r.pipeline(transaction=True) as pipe:
            _INCR.queue(pipe, keys=[key], args=[100])
            pipe.incr(other)
            assert scripts.execute(pipe) == [111, 2]
        assert int(r.get(key) or 0) == 111 and int(r.get(other) or 0) == 2
    finally:
        r.delete(key, other)


def test_a_pipeline_still_raises_other_errors(r: redis.Redis) -> None:
    key = f"test:scripts:{uuid.uuid4().hex}"
    try:
        r.set(key, "not a number")
        with r.pipeline(transaction=False) as pipe:
            _INCR.queue(pipe, keys=[key], args=[1])
            with pytest.raises(redis.ResponseError):
                scripts.execute(pipe)
    finally:
        r.delete(key)


def test_a_transaction_refused_whole_is_sent_again_whole(r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that looks a script up when it is queued in MULTI (so refuses the block: EXECABORT, nothing ran)
    is simulated here: the first execute raises NOSCRIPT as redis-py does then."""
    key, other = f"test:scripts:{uuid.uuid4().hex}", f"test:scripts:{uuid.uuid4().hex}"
    real = redis.client.Pipeline.execute
    calls = []

    def refuse_once(self: redis.client.Pipeline, raise_on_error: bool = True) -> list[object]:
        calls.append(len(self.command_stack))
        if len(calls) == 1:
            self.reset()
            raise redis.exceptions.NoScriptError("No matching script. Please use EVAL.")
        return real(self, raise_on_error)

    try:
        r.script_flush()
        monkeypatch.setattr(redis.client.Pipeline, "execute", refuse_once)
        with r.pipeline(transaction=True) as pipe:
            _INCR.queue(pipe, keys=[key], args=[5])
            pipe.incr(other)
            assert scripts.execute(pipe) == [5, 1]
        assert calls == [2, 2]
    finally:
        monkeypatch.undo()
        r.delete(key, other)
