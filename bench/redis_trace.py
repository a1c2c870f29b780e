"""A lone search's path read from Redis's own log of commands (MONITOR), without touching vecq's code.

Every hop of a search batch leaves a command in Redis, stamped by the server's clock (the same clock as
`time.time()` on this machine), and each names the batch: the API's LPUSH of the Celery message (headers `id`),
the worker main process's QoS pipeline (HSET of the message into `unacked`), the worker child's claim (EVALSHA on
`vecq:delivery:<id>`), its WAL catch-up (the next command on that connection: the same MULTI block when the
claim rides on it), the finish (EVALSHA on `vecq:batch:<id>`, after SCRIPT EXISTS if the client sends one) and
the reply (PUBLISH of `{"batch": "<id>", ...}`). With the client's own stamps around each request, the
differences are the stages. MONITOR slows Redis a little (every command is copied to
the monitoring client), so the section measures it in a pass of its own and reports that pass's p50 beside the
clean one.

`Monitor` collects the raw log on a socket of its own (a thread that only copies bytes); `parse`, `stages` and
`round_trips` read it afterwards.
"""

from __future__ import annotations

import contextlib
import re
import socket
import statistics
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

LINE = re.compile(r'^\+(\d+\.\d+) \[\d+ ([^\]]+)\] "([^"]*)"(.*)$')
# the Celery message's task id = vecq's batch id; compact JSON from api/publish.py, kombu's own in `unacked`
MESSAGE_ID = re.compile(r'\\"id\\": ?\\"([0-9a-f]{32})\\"')
DELIVERY = re.compile(r"vecq:delivery:([0-9a-f]{32})")
BATCH_KEY = re.compile(r"vecq:batch:([0-9a-f]{32})")
PUBLISHED = re.compile(r'\\"batch\\":\\"([0-9a-f]{32})')
# Pipelined commands reach Redis together and run back to back (5-20 µs apart under MONITOR); a command sent after
# a reply came back trails the one before by a loopback round trip plus Python's work, 60 µs at the very least.
PIPELINE_GAP_S = 40e-6


@dataclass(frozen=True)
class Command:
    at: float  # Redis's clock, seconds since the epoch
    client: str  # "127.0.0.1:port", or "lua" for a command a script ran
    name: str
    args: str


class Monitor:
    """MONITOR on a raw socket: a thread appends whatever arrives; nothing is parsed while the search runs."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=5)
        self.sock.settimeout(None)
        self.chunks: list[bytes] = []
        self.thread = threading.Thread(target=self._read, name="redis-monitor", daemon=True)

    def __enter__(self) -> Monitor:
        self.sock.sendall(b"MONITOR\r\n")
        self.thread.start()
        return self

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            self.chunks.append(data)

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(5)
        self.sock.close()

    def commands(self) -> list[Command]:
        return parse(b"".join(self.chunks).decode("utf-8", errors="replace"))


def parse(text: str) -> list[Command]:
    out = []
    for line in text.split("\r\n"):
        m = LINE.match(line)
        if m:
            out.append(Command(float(m.group(1)), m.group(2), m.group(3).upper(), m.group(4)))
    return out


def port_of(client: str) -> int | None:
    host, _, port = client.rpartition(":")
    return int(port) if host and port.isdigit() else None


@dataclass
class Batch:
    """One search batch's commands: when each hop reached Redis."""

    lpush: float | None = None
    qos: float | None = None
    claim: float | None = None
    catch_up: float | None = None
    finish: float | None = None
    publish: float | None = None
    clients: dict[str, str] = field(default_factory=dict)  # hop -> connection


def batches(commands: list[Command]) -> dict[str, Batch]:
    """Every batch's hops, by batch id."""
    found: dict[str, Batch] = defaultdict(Batch)
    by_client: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(commands):
        by_client[c.client].append(i)
    position = {i: n for indexes in by_client.values() for n, i in enumerate(indexes)}

    def neighbour(i: int, step: int) -> Command | None:
        own = by_client[commands[i].client]
        n = position[i] + step
        return commands[own[n]] if 0 <= n < len(own) else None

    for i, c in enumerate(commands):
        if c.name == "LPUSH" and (m := MESSAGE_ID.search(c.args)):
            found[m.group(1)].lpush = c.at
            found[m.group(1)].clients["lpush"] = c.client
        elif c.name == "HSET" and '"unacked"' in c.args[:12] and (m := MESSAGE_ID.search(c.args)):
            found[m.group(1)].qos = c.at
            found[m.group(1)].clients["qos"] = c.client
        elif c.name == "EVALSHA" and (m := DELIVERY.search(c.args)):
            b = found[m.group(1)]
            b.claim, b.clients["claim"] = c.at, c.client
            nxt = neighbour(i, 1)
            b.catch_up = nxt.at if nxt is not None else None
        elif c.name == "EVALSHA" and (m := BATCH_KEY.search(c.args)):
            prev = neighbour(i, -1)
            # redis-py checks a pipeline's scripts (SCRIPT EXISTS) before sending it: the finish starts there
            found[m.group(1)].finish = prev.at if prev is not None and prev.name == "SCRIPT" else c.at
        elif c.name == "PUBLISH" and (m := PUBLISHED.search(c.args)):
            found[m.group(1)].publish = c.at
    return dict(found)


def round_trips(commands: list[Command], since: float, until: float) -> tuple[int, Counter[str]]:
    """Round trips in [since, until): a client's commands that arrive within PIPELINE_GAP_S of its previous one
    (a pipeline, a MULTI/EXEC block) count once; a script's own commands extend its caller's. Also the commands
    clients sent (scripts' inner commands not counted), by name."""
    last: dict[str, float] = {}
    caller = ""
    trips = 0
    sent: Counter[str] = Counter()
    for c in commands:
        if not since <= c.at < until:
            continue
        if c.client == "lua":
            last[caller] = c.at
            continue
        caller = c.client
        sent[c.name] += 1
        if c.at - last.get(c.client, float("-inf")) > PIPELINE_GAP_S:
            trips += 1
        last[c.client] = c.at
    return trips, sent


STAGES = [  # (key, label, from hop, to hop); "sent" and "received" are the client's own stamps
    ("api_in", "client → API publishes (HTTP parse, validate, collection lookup, coalescing, message, LPUSH)",
     "sent", "lpush"),
    ("broker", "broker → worker main (BRPOP wakes, kombu decodes, QoS pipeline)", "lpush", "qos"),
    ("handoff", "prefork hand-off (QoS round trip, pipe to the child, Celery's trace, claim sent)", "qos", "claim"),
    ("claim", "claim round trip, if not folded into the catch-up's (then about 0)", "claim", "catch_up"),
    ("work", "catch-up round trip (carrying the claim) + decode + search + encode", "catch_up", "finish"),
    ("finish", "finish (EVALSHA pipeline, PUBLISH)", "finish", "publish"),
    ("reply", "reply → API wakes → response → client", "publish", "received"),
]


def stages(requests: list[tuple[float, float, str]], found: dict[str, Batch]) -> dict[str, Any]:
    """Per stage, the median and mean ms over the requests whose every hop was seen. `requests`: the client's
    (sent, received, batch id) per search."""
    rows: dict[str, list[float]] = {key: [] for key, *_ in STAGES}
    totals: list[float] = []
    for sent, received, batch_id in requests:
        b = found.get(batch_id)
        if b is None:
            continue
        hops = {"sent": sent, "received": received, "lpush": b.lpush, "qos": b.qos, "claim": b.claim,
                "catch_up": b.catch_up, "finish": b.finish, "publish": b.publish}
        if any(v is None for v in hops.values()):
            continue
        order = [hops[h] for h in ("sent", "lpush", "qos", "claim", "catch_up", "finish", "publish", "received")]
        if order != sorted(order):
            continue  # clocks disagree (should not happen on one machine): skip rather than report nonsense
        for key, _label, start, end in STAGES:
            rows[key].append((float(hops[end]) - float(hops[start])) * 1000)  # type: ignore[arg-type]
        totals.append((received - sent) * 1000)
    if not totals:
        return {"traced": 0}
    mean_total = statistics.fmean(totals)
    return {
        "traced": len(totals),
        "total_p50_ms": round(statistics.median(totals), 3),
        "total_mean_ms": round(mean_total, 3),
        "stages": {key: {"label": label, "p50_ms": round(statistics.median(rows[key]), 3),
                         "mean_ms": round(statistics.fmean(rows[key]), 3),
                         "share_of_mean": round(statistics.fmean(rows[key]) / mean_total, 3)}
                   for key, label, _s, _e in STAGES},
    }
