"""The markdown of the latency section (bench/latency.py): goals, the budget of a lone search, its stages, the
Redis calls, where the CPU goes, the API's CPU per search at c=64 against a bare FastAPI endpoint."""

from __future__ import annotations

from typing import Any

from bench.report import goals_table


def _v(x: Any) -> str:
    return "-" if x is None else str(x)


def _pct(part: float | None, whole: float | None) -> str:
    return f"{100 * part / whole:.0f}%" if part is not None and whole else "-"


def render(res: dict[str, Any]) -> str:
    cfg, m, lone = res["config"], res["machine"], res["lone"]
    floor, noop, search = lone["floor"], lone["celery_noop"], lone["search"]
    p50 = search["p50_ms"]
    lines = [
        "## Latency budget of a lone search (issue #18)",
        "",
        f"`{res.get('command', 'python -m bench --only latency')}`: {res['duration_s']} s, started "
        f"{res.get('started_at')}. Machine: {m.get('cpu')}, {m.get('nproc')} cores, {m.get('ram_gb')} GB RAM, "
        f"Python {m.get('python')}, Celery {m.get('celery')}, FastAPI {m.get('fastapi')}, uvicorn "
        f"{m.get('uvicorn')}, {m.get('redis_server')}. Load average before {res['load_before'][0]:.2f}, after "
        f"{res['load_after'][0]:.2f}: the cores are shared, so every figure is read against references measured "
        "in the same run.",
        "",
        f"Stack as `vecq up` starts it: embedded Redis, {cfg['workers']} workers (prefork, concurrency 1), 1 API "
        f"process, coalescing at its defaults. Collection `tiny`: 2 vectors of dimension {cfg['tiny_dim']} (Flat); "
        "a search is `POST /v1/collections/tiny/search?wait=30` with one vector and k=1 (strong consistency). "
        f"{cfg['requests']} sequential calls of each kind on one keep-alive connection, in {cfg['rounds']} "
        "alternating rounds (floor, Celery no-op, search).",
        "",
    ]
    lines += goals_table(res["goals"])
    lines += [
        "",
        "### The budget",
        "",
        "| | p50 ms | p99 ms | mean ms | % of lone p50 |",
        "|---|---|---|---|---|",
        f"| HTTP floor (`GET /healthz` on the vecq API) | {floor['p50_ms']} | {floor['p99_ms']} | "
        f"{floor['mean_ms']} | {_pct(floor['p50_ms'], p50)} |",
        f"| bare Celery no-op (`delay().get()`, prefork c=1, Redis broker + backend) | {noop['p50_ms']} | "
        f"{noop['p99_ms']} | {noop['mean_ms']} | {_pct(noop['p50_ms'], p50)} |",
        f"| **lone vecq search** | **{p50}** | {search['p99_ms']} | {search['mean_ms']} | 100% |",
        f"| vecq's own = lone - floor - Celery no-op | {lone['vecq_own_ms']} | | | "
        f"{_pct(lone['vecq_own_ms'], p50)} |",
        f"| goal: floor + Celery no-op + {0.7} ms | {round(floor['p50_ms'] + noop['p50_ms'] + 0.7, 3)} | | | |",
        f"| the worker's search itself (`took_ms` in the answers) | {lone['worker_search_took']['p50_ms']} | "
        f"{lone['worker_search_took']['p99_ms']} | | {_pct(lone['worker_search_took']['p50_ms'], p50)} |",
        "",
        "CPU per lone search (/proc, over the search rounds): " + ", ".join(
            f"{k} {v} ms" for k, v in lone["cpu_ms_per_search"].items()) + ".",
    ]
    lines += stages_section(res)
    lines += redis_section(res)
    lines += profile_section(res)
    lines += load_section(res)
    lines += [
        "",
        "### Reproduce",
        "",
        "`make bench BENCH_ARGS=\"--only latency\"` (or `python -m bench --only latency`; `--quick` for a smoke run; "
        "`--lat-profile` also writes py-spy flamegraphs `latency-{api,worker1,worker2}.svg` next to this file). "
        "The code: bench/latency.py (the run), bench/redis_trace.py (stages from MONITOR), bench/spy.py (py-spy "
        "attribution), bench/bare.py (the references).",
    ]
    return "\n".join(lines) + "\n"


def stages_section(res: dict[str, Any]) -> list[str]:
    tr = res["trace"]
    if not tr.get("traced"):
        return ["", "### Stages", "", "No search could be traced (MONITOR saw no complete batch)."]
    lines = [
        "",
        "### Stages of a lone search (Redis MONITOR)",
        "",
        f"{tr['searches']} more lone searches with Redis's MONITOR on: every hop of a search batch is a Redis "
        "command that names the batch, stamped by Redis's clock (the machine's), and the client stamps each "
        "request; the differences are the stages (bench/redis_trace.py). This pass's p50 was "
        f"{tr['search']['p50_ms']} ms, the clean rounds' {res['lone']['search']['p50_ms']} ms (MONITOR costs Redis "
        "a little; the shared machine moves a pass more). "
        f"{tr['traced']} searches had every hop; the means add up to their mean, {tr['total_mean_ms']} ms.",
        "",
        "| Stage (from → to) | p50 ms | mean ms | % of the mean |",
        "|---|---|---|---|",
    ]
    lines += [f"| {s['label']} | {s['p50_ms']} | {s['mean_ms']} | {100 * s['share_of_mean']:.0f}% |"
              for s in tr["stages"].values()]
    lines += ["", f"Of the catch-up + search + encode stage, the FAISS search itself (`took_ms`) was "
              f"{res['lone']['worker_search_took']['p50_ms']} ms at p50."]
    return lines


def redis_section(res: dict[str, Any]) -> list[str]:
    rc, tr = res["redis"], res["trace"]
    lines = [
        "",
        "### Redis calls per lone search",
        "",
        f"INFO commandstats over the search rounds, divided by the searches, less what the idle stack sends over "
        f"as long ({rc['idle_per_s']} commands/s, measured for {rc['idle_s']} s before the rounds). Commands run "
        "by a Lua script and MULTI/EXEC count, as Redis counts them. The bare Celery no-op, measured the same "
        "way, for reference.",
        "",
        "| Command | per lone search | per Celery no-op |",
        "|---|---|---|",
    ]
    names = list(rc["per_search"]) + [n for n in rc["per_noop"] if n not in rc["per_search"]]
    lines += [f"| {n} | {_v(rc['per_search'].get(n))} | {_v(rc['per_noop'].get(n))} |" for n in names]
    lines += [f"| **total** | **{rc['per_search_total']}** | **{rc['per_noop_total']}** |"]
    if tr.get("searches"):
        lines += [
            "",
            f"From MONITOR: {tr['round_trips_per_search']} round trips per search (a pipeline or MULTI/EXEC block "
            "counted once); commands sent by clients per search, by process: " + ", ".join(
                f"{k} {v}" for k, v in tr["client_commands_by_process"].items()) + "; by name: " + ", ".join(
                f"{k} {v}" for k, v in tr["client_commands_per_search"].items()) + ".",
        ]
    return lines


def _functions(rows: list[dict[str, Any]], limit: int) -> list[str]:
    return [f"| `{r['function']}` | {r['ms_per_search']} | {100 * r['share']:.1f}% |" for r in rows[:limit]]


def profile_section(res: dict[str, Any]) -> list[str]:
    pr = res.get("profile") or {}
    if not pr:
        return []
    lines = [
        "",
        "### Where the CPU goes (py-spy)",
        "",
        f"{pr['searches']} more lone searches with py-spy sampling the API, both worker main processes and their "
        f"pool children at {pr['rate']} Hz, without pausing them (`--nonblocking`); only threads the OS shows "
        "running or runnable are sampled, so samples / rate is CPU time plus time spent waiting for a core on a "
        "busy machine; shown per search. CPU per search from /proc over the same pass: " + ", ".join(
            f"{k} {v} ms" for k, v in pr.get("proc_cpu_ms_per_search", {}).items())
        + f". This pass's p50: {pr['search']['p50_ms']} ms (py-spy takes CPU too). A sample goes to the category "
        "of the innermost frame on its stack that is one of its markers (bench/spy.py); shares are what to read.",
    ]
    for key, title in (("api", "API process"), ("worker_child", "worker pool children (the job)"),
                       ("worker_main", "worker main processes (kombu consumer)")):
        part = pr[key]
        lines += ["", f"**{title}**: {part['cpu_ms_per_search']} ms sampled per search ({part['samples']} samples); "
                  f"{100 * part.get('handoff_share', 0):.0f}% of them parked in a socket or pipe write/read or a "
                  "poll (a hop to another process: preempted by the one it woke, or woken and waiting for a core).",
                  "",
                  "| Category | ms per search | share |", "|---|---|---|"]
        lines += [f"| {name} | {c['ms_per_search']} | {100 * c['share']:.0f}% |"
                  for name, c in part["categories"].items()]
        lines += ["", "| Top functions, self time | ms per search | share |", "|---|---|---|"]
        lines += _functions(part["top_self"], 8)
        if part["top_vecq_inclusive"]:
            lines += ["", "| Top vecq functions, inclusive | ms per search | share |", "|---|---|---|"]
            lines += _functions(part["top_vecq_inclusive"], 8)
    return lines


def load_section(res: dict[str, Any]) -> list[str]:
    ld = res["load"]
    lines = [
        "",
        f"### API CPU per search at c={ld['concurrency']}",
        "",
        f"Closed loop at c={ld['concurrency']} (bench/loadgen.py: aiohttp in a process of its own), "
        f"{res['config']['load_rounds']} alternating round(s) of at most {res['config']['load_seconds']} s each: "
        f"vecq searches (k={ld['k']}) on a {ld['n']:,} x {ld['dim']} Flat collection, and a bare FastAPI endpoint "
        "(bench/bare.py: a pydantic body `{vector, k}`, k hits back, uvicorn with api/serve.py's options) fed the "
        "same bodies. CPU of the API process (or the bare server) from /proc over the measured window, per "
        "request; the median round.",
        "",
        "| | API CPU ms / request | QPS | ratio |",
        "|---|---|---|---|",
        f"| vecq search | {ld['vecq_api_cpu_ms']} | {ld['vecq_qps']} | **{ld['ratio']}x** |",
        f"| bare FastAPI JSON endpoint | {ld['bare_api_cpu_ms']} | {ld['bare_qps']} | 1x |",
    ]
    prof = ld.get("api_profile")
    if prof and prof.get("samples"):
        lines += [
            "",
            f"Where the vecq API's time goes at c={ld['concurrency']}: py-spy on the API during one more round "
            f"({prof['requests']} searches at {prof['qps']} QPS, not one of the measured rounds), "
            f"{prof['samples']} samples, {prof['cpu_ms_per_search']} ms sampled per search; "
            f"{100 * prof.get('handoff_share', 0):.0f}% parked in a socket write/read or a poll.",
            "",
            "| Category | ms per search | share |",
            "|---|---|---|",
        ]
        lines += [f"| {name} | {c['ms_per_search']} | {100 * c['share']:.0f}% |"
                  for name, c in prof["categories"].items()]
        lines += ["", "| Top functions, self time | ms per search | share |", "|---|---|---|"]
        lines += _functions(prof["top_self"], 10)
        lines += ["", "| Top vecq functions, inclusive | ms per search | share |", "|---|---|---|"]
        lines += _functions(prof["top_vecq_inclusive"], 10)
    return lines
