"""Lua scripts: the one place that loads them into Redis and calls them by digest. Owns no keys.

Each module that owns a family of keys writes its own scripts as `Lua(source)` constants; this module only
runs them. Why not redis-py's `register_script`: a Script built per call hashed its source every time (0.15 ms
a search in the worker's profile), and a pipeline carrying one sends SCRIPT EXISTS before every execute: one
more round trip per search batch and per write batch. Here the digest is computed once, calls go out as EVALSHA,
and a script Redis lost (a restart empties its script cache) is loaded when Redis says NOSCRIPT, then run again.

In a pipeline (`Lua.queue` + `execute`), the other commands have already run when Redis answers NOSCRIPT: only
the scripts that failed are run again, after them (a MULTI block that Redis refuses whole, EXECABORT, is sent
again whole once its scripts are loaded). So a pipeline must not rely on a script running before the
plain commands queued after it (none does: the finishes publish and count what their script recorded).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aredis
import redis.exceptions
from redis.client import Pipeline

Arg = str | bytes | int | float


class Lua:
    """A script, its digest computed once."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        _BY_SHA[self.sha] = self

    def __call__(self, client: redis.Redis | aredis.Redis, keys: Sequence[str] = (),
                 args: Sequence[Arg] = ()) -> Any:
        """Run it now: one round trip (two more, once, after Redis lost it). An async client gets a coroutine."""
        if isinstance(client, aredis.Redis):
            return self._acall(client, keys, args)
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)

    async def _acall(self, client: aredis.Redis, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)

    def queue(self, pipe: Pipeline, keys: Sequence[str] = (), args: Sequence[Arg] = ()) -> None:
        """Queue it on `pipe` by digest alone; run the pipeline with `execute`, which loads it if Redis lost it."""
        pipe.evalsha(self.sha, len(keys), *keys, *args)


_BY_SHA: dict[str, Lua] = {}


def execute(pipe: Pipeline) -> list[Any]:
    """`pipe.execute()` for a pipeline that carries `Lua.queue`d scripts: no SCRIPT EXISTS before it. Replies in
    order; the first error is raised, as redis-py does, once every script Redis did not know has run."""
    queued = list(pipe.command_stack)
    stack = [args for args, _options in queued]
    try:
        replies = pipe.execute(raise_on_error=False)
    except redis.exceptions.NoScriptError:
        # Refused while queued in MULTI (a server that looks scripts up then): EXECABORT, nothing ran. Load every
        # script of the pipeline and send it all again.
        client = redis.Redis(connection_pool=pipe.connection_pool)
        for sha in {str(args[1]) for args in stack if str(args[0]).upper() == "EVALSHA"}:
            client.script_load(_BY_SHA[sha].source)
        for args, options in queued:
            pipe.execute_command(*args, **options)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        replies = pipe.execute(raise_on_error=False)
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, redis.exceptions.NoScriptError)]
    if missing:
        client = redis.Redis(connection_pool=pipe.connection_pool)
        for i in missing:
            sha, numkeys, *rest = stack[i][1:]
            replies[i] = _BY_SHA[str(sha)](client, rest[:int(numkeys)], rest[int(numkeys):])
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return list(replies)
