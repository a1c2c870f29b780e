"""The markdown section of `python -m bench.filtered`: goals, the HNSW table, the threshold sweep, Flat."""

from __future__ import annotations

from typing import Any

from bench.report import goals_table


def _plans(plans: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(plans.items())) or "-"


def _v(x: Any) -> str:
    return "-" if x is None else f"{x:,}" if isinstance(x, int) else str(x)


def render(res: dict[str, Any]) -> str:
    cfg, m = res["config"], res["machine"]
    k = cfg["k"]
    lines = [
        "## Filtered search (issue #15)",
        "",
        f"`python -m bench.filtered{' --quick' if cfg.get('quick') else ''}`: {res['duration_s']} s. Machine: "
        f"{m.get('cpu')}, {m.get('nproc')} cores, {m.get('ram_gb')} GB RAM, Python {m.get('python')}, faiss-cpu "
        f"{m.get('faiss_cpu')}, numpy {m.get('numpy')}. Load average before {res['load_before'][0]:.2f}, after "
        f"{res['load_after'][0]:.2f}: other processes may have shared the cores (the `others` column: cores they "
        f"took during each level).",
        "",
        f"Stack: embedded Redis, {cfg['workers']} workers, {cfg['api_processes']} API process(es). HNSW: "
        f"{cfg['n']:,} x {cfg['dim']} {cfg['spec']} (efSearch {cfg['ef_search']}), clustered data (bench/data.py, "
        f"seed {cfg['seed']}), metadata `{{\"tag\": t}}` with t a shuffled i % {cfg['tag_values']:,}, sealed into "
        f"one segment (ingest {res['hnsw_build']['ingest_s']} s, seal {res['hnsw_build']['seal_s']} s). Recall@{k} "
        f"against a float64 brute force over the matching rows, {cfg['queries']} queries per filter; a query is "
        f"*short* when it has fewer than min({k}, matching rows) hits.",
        "",
    ]
    lines += goals_table(res["goals"])
    run = res["goals_run"]
    base, wbase = run["none"]["p50_ms"], run["none"].get("worker_p50_ms")
    c = cfg["qps_concurrency"]
    lines += [
        "",
        f"### HNSW, `VECQ_FILTER_EXACT_BELOW={res['default_threshold']}` (the default)",
        "",
        f"p50/p99: single synchronous searches at c=1 (HTTP to answer), {cfg['latency_requests']} per filter and "
        f"round, {cfg['latency_rounds']} alternating rounds, the median round. Worker p50: the search inside the "
        f"worker (`took_ms`), over the recall queries sent one at a time. "
        + (f"QPS: closed loop at c={c} for at most {cfg['qps_seconds']} s." if cfg.get("qps", True) else
           "QPS not measured (--quick)."),
        "",
        f"| Filter | Matching rows | Recall@{k} | Short | Plans | p50 ms | p99 ms | p50 / unfiltered | Worker p50 ms "
        f"| Worker p50 / unfiltered | QPS c={c} | others |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in run.values():
        ratio = round(r["p50_ms"] / base, 2) if base and r.get("p50_ms") else None
        wratio = round(r["worker_p50_ms"] / wbase, 2) if wbase and r.get("worker_p50_ms") else None
        others = max((lv.get("others_cores") or 0) for lv in r["c1_rounds"]) if r.get("c1_rounds") else None
        lines.append(f"| `{_filter(r['filter'])}` | {r['matching']:,} | {_v(r['recall'])} | {r['short']} | "
                     f"{_plans(r['plans'])} | {_v(r.get('p50_ms'))} | {_v(r.get('p99_ms'))} | {_v(ratio)} | "
                     f"{_v(r.get('worker_p50_ms'))} | {_v(wratio)} | {_v(r.get(f'c{c}', {}).get('qps'))} | "
                     f"{_v(others)} |")
    rec = res["recommendation"]
    sw = res["sweep"]
    lines += [
        "",
        "### `VECQ_FILTER_EXACT_BELOW`: the index path against the exact path",
        "",
        f"The same sealed collection, the workers restarted with `VECQ_FILTER_EXACT_BELOW={sw['index']['threshold']}` "
        f"(index path: HNSW with an IDSelectorBitmap; the exact plan only where it returns fewer than k) and "
        f"`={sw['exact']['threshold']:,}` (every filtered search scores its matching rows one by one). p50: "
        f"{cfg['sweep_requests']} single searches at c=1, HTTP to answer; worker p50: the search inside the worker, "
        f"over the {cfg['queries']} recall queries one at a time.",
        "",
        f"| Filter | Matching rows | Index: recall@{k} | plans | short | worker p50 ms | p50 ms | Exact: recall@{k} "
        f"| worker p50 ms | p50 ms | Faster in the worker |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, i in sorted(sw["index"]["levels"].items(), key=lambda kv: kv[1]["matching"]):
        e = sw["exact"]["levels"][key]
        wi, we = i.get("worker_p50_ms"), e.get("worker_p50_ms")
        faster = "-" if wi is None or we is None else "exact" if we <= wi else "index"
        lines.append(f"| {key} `{_filter(i['filter'])}` | {i['matching']:,} | {_v(i['recall'])} | "
                     f"{_plans(i['plans'])} | {i['short']} | {_v(wi)} | {_v(i['p50_ms'])} | {_v(e['recall'])} | "
                     f"{_v(we)} | {_v(e['p50_ms'])} | {faster} |")
    w, h = rec["worker"], rec["end_to_end"]
    lines += [
        "",
        f"Latency crossover inside the worker: {w['where']}" + (f", about {w['rows']:,} rows" if w["rows"] else "")
        + f"; end to end (HTTP p50): {h['where']}" + (f", about {h['rows']:,} rows" if h["rows"] else "") + ". "
        + (f"With threshold {sw['index']['threshold']}, the index path misses recall 0.95 or k hits, or falls back to "
           f"the exact plan for most queries, at {', '.join(f'{x:,}' for x in rec['index_path_weak_at'])} matching "
           "rows: those should go exact. " if rec["index_path_weak_at"] else
           "The index path keeps recall >= 0.95 and k hits, mostly without the exact fallback, at every measured "
           "count. ")
        + f"**Recommended `VECQ_FILTER_EXACT_BELOW`: {rec['value']:,}**: the larger of the worker crossover "
        f"(rounded up to 1, 2 or 5 x 10^n) and the smallest measured count from which the index path is good "
        f"enough ({rec['recall_bound_rows']:,}). It holds for this dim, efSearch and segment size: the exact path "
        f"costs grow with rows x dim, the index path's recall with efSearch and the filter's share of the segment.",
    ]
    fl = res["flat"]
    col = fl["collection"]
    lines += [
        "",
        "### Flat: random filters against a brute force",
        "",
        f"{fl['n']:,} x {fl['dim']} Flat, {col.get('sealed_rows'):,} rows in {col.get('segments')} sealed segment(s) "
        f"and {col.get('growing_rows'):,} rows written since in the growing one (the rest, then {fl['upserted']} "
        f"upserts and {fl['deleted']} deletes of sealed rows); metadata: {fl['distinct_docs']:,} random documents "
        f"(lists, nested objects, null, booleans vs numbers) spread over the rows. {fl['filters']:,} random filters "
        f"over every operator, one query each, "
        f"k={k}: the hit ids against a numpy float64 brute force over the rows `common.filters.matches` accepts, "
        f"and `/count` against their number. Matching rows: median {fl['matching_median']:,}, {fl['matching_none']} "
        f"filters match nothing, {fl['matching_fewer_than_k']} fewer than k. Plans: {_plans(fl['plans'])}.",
        "",
        f"**{fl['mismatches']} id mismatches** ({fl['tie_mismatches']} of them equal distances in another order), "
        f"**{fl['count_mismatches']} wrong counts**, {fl['errors']} errors, of {fl['filters']:,} filters "
        f"({fl['seconds']} s).",
    ]
    if fl["samples"]:
        lines += ["", "First failures:", "", *(f"- `{s}`" for s in fl["samples"])]
    return "\n".join(lines) + "\n"


def _filter(f: Any) -> str:
    import json

    return "none" if f is None else json.dumps(f, separators=(",", ":"))
