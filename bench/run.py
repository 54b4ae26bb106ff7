"""`python -m bench.run [--quick] [--only SECTION,…]`: every benchmark, side by side.

Prints tables of ratios against baselines measured in the same run and writes
`bench/results/latest.json` and `bench/results/latest.md`.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from . import core, headers, http, loadtime, scaling, spacetimedb, tables

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("core", "tables", "load", "scaling", "headers", "http", "spacetimedb")

FULL = {
    "core": {"rounds": 5, "min_seconds": 1.0, "chunk_seconds": 0.1},
    "tables": {"quick": False},
    "load": {"sizes": (10, 100, 1000, 5000), "repeats": 3},
    "scaling": {"sizes": (1_000, 10_000, 100_000), "rounds": 5, "min_seconds": 1.0,
                "chunk_seconds": 0.1},
    "headers": {"sizes": (1024, 64 * 1024, 1024 * 1024), "rounds": 3, "min_seconds": 1.0,
                "chunk_seconds": 0.1},
    "http": {"workers": (1, 2), "connections": (1, 4, 16), "seconds": 3.0, "rounds": 5},
    "spacetimedb": {"subscriptions": 10_000, "big_rows": 100_000, "deltas": 300,
                    "rounds": 5, "min_seconds": 1.0, "chunk_seconds": 0.1},
}
QUICK = {
    "core": {"rounds": 1, "min_seconds": 0.05, "chunk_seconds": 0.01},
    "tables": {"quick": True},
    "load": {"sizes": (10, 100, 1000), "repeats": 1},
    "scaling": {"sizes": (1_000, 10_000), "rounds": 1, "min_seconds": 0.05,
                "chunk_seconds": 0.01},
    "headers": {"sizes": (1024, 64 * 1024), "rounds": 1, "min_seconds": 0.05,
                "chunk_seconds": 0.01},
    "http": {"workers": (1,), "connections": (1, 16), "seconds": 1.0, "rounds": 1},
    "spacetimedb": {"subscriptions": 1_000, "big_rows": 10_000, "deltas": 50,
                    "rounds": 1, "min_seconds": 0.05, "chunk_seconds": 0.01},
}
MODERATE_CONNECTIONS = 4


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("komm-policy", "lark", "msgspec", "starlette", "uvicorn", "uvloop",
                    "httptools", "cel-python", "common-expression-language", "cedarpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "packages": versions}


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the benchmark issue, with the figure measured in this run."""
    out = []
    if "core" in results:
        rows = {r["name"]: r for r in results["core"]["rows"]}
        komm = rows["komm-policy (in-memory directory)"]
        out.append({"target": "core decision ≤ 3× hand-written Python",
                    "measured": f"{komm['ratio']:.2f}×", "met": komm["ratio"] <= 3.0})
        peers = [r for r in rows.values() if not r["name"].startswith(("komm", "hand"))]
        if peers:
            slowest_gap = min(r["median_us"] / komm["median_us"] for r in peers)
            out.append({"target": "faster than every peer engine",
                        "measured": f"fastest peer is {slowest_gap:.1f}× slower",
                        "met": slowest_gap > 1.0})
    if "tables" in results:
        out.extend(tables_targets(results["tables"]))
    if "load" in results:
        rows = {r["rules"]: r for r in results["load"]["rows"]}
        if 1000 in rows:
            out.append({"target": "1,000 rules load in < 1 s",
                        "measured": f"{rows[1000]['total_s']:.3f} s",
                        "met": rows[1000]["total_s"] < 1.0})
        sizes = sorted(s for s in rows if s >= 100)
        if len(sizes) >= 2:
            growth = rows[sizes[-1]]["us_per_rule"] / rows[sizes[0]]["us_per_rule"]
            out.append({"target": "load time grows linearly",
                        "measured": f"µs/rule at {sizes[-1]:,} = {growth:.2f}× µs/rule at "
                                    f"{sizes[0]:,}", "met": growth <= 1.5})
    if "scaling" in results:
        memory = [r for r in results["scaling"]["rows"] if r["name"].startswith("in-memory")]
        if len(memory) >= 2:
            growth = memory[-1]["median_us"] / memory[0]["median_us"]
            out.append({"target": "decision time flat in directory size",
                        "measured": f"{memory[-1]['name'].split(', ')[1]}: {growth:.2f}× "
                                    f"{memory[0]['name'].split(', ')[1]}",
                        "met": growth <= 1.25})
    if "headers" in results:
        rows = results["headers"]["rows"]
        if len(rows) >= 2:
            growth = rows[-1]["us_per_kb"] / rows[1 if len(rows) > 2 else 0]["us_per_kb"]
            out.append({"target": "header decision time linear in header size",
                        "measured": f"µs/KB at {rows[-1]['name']} = {growth:.2f}× µs/KB at "
                                    f"{rows[1 if len(rows) > 2 else 0]['name']}",
                        "met": growth <= 1.5})
    if "http" in results and "rows" in results["http"]:
        rows = results["http"]["rows"]
        worst = min(rows, key=lambda r: r["ratio"])
        out.append({"target": "hook throughput ≥ 0.8× no-op endpoint",
                    "measured": f"lowest {worst['ratio']:.2f}× (workers={worst['workers']}, "
                                f"connections={worst['connections']})",
                    "met": worst["ratio"] >= 0.8})
        sink_rows = [r for r in rows if "ratio_stdb" in r]
        if sink_rows:
            worst = min(sink_rows, key=lambda r: r["ratio_stdb"])
            out.append({"target": "hook throughput ≥ 0.8× no-op, SpacetimeDB sink on",
                        "measured": f"lowest {worst['ratio_stdb']:.2f}× (workers="
                                    f"{worst['workers']}, connections={worst['connections']})",
                        "met": worst["ratio_stdb"] >= 0.8})
        moderate = [r for r in rows if r["connections"] == MODERATE_CONNECTIONS
                    and r["workers"] == 1] or [r for r in rows if r["connections"] == 1]
        if moderate:
            p99 = moderate[0]["komm_p99_ms"]
            out.append({"target": "p99 < 5 ms at moderate load",
                        "measured": f"{p99:.2f} ms ({moderate[0]['connections']} "
                                    "connections, 1 worker)", "met": p99 < 5.0})
    if "spacetimedb" in results:
        stdb = results["spacetimedb"]
        out.append({"target": "SpacetimeDB replica lookups ≤ 1.1× in-memory",
                    "measured": f"{stdb['lookup_ratio']:.2f}×",
                    "met": stdb["lookup_ratio"] <= 1.1})
        out.append({"target": "committed delta visible within 50 ms at p99",
                    "measured": f"p99 {stdb['delta_ms']['p99']:.1f} ms",
                    "met": stdb["delta_ms"]["p99"] <= 50})
        big = stdb["big"]
        out.append({"target": f"1-row delta into {big['rows']:,} rows ≤ 1 ms",
                    "measured": f"{big['delta_1_row_ms_median']:.3f} ms median, "
                                f"{big['delta_1_row_ms_p99']:.3f} ms p99",
                    "met": big["delta_1_row_ms_median"] <= 1.0})
    return out


def tables_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issues #10 and #11: table lookups and policy functions ≤ 2× hand-written Python,
    flat from 1k to 100k rows, a 1-row change ≤ 1 ms at 100k rows."""
    out = []
    workload = result.get("workload")
    if workload:
        out.append({"target": "table lookups (20-rule workload) ≤ 2× hand-written",
                    "measured": f"{workload['ratio']:.2f}×", "met": workload["ratio"] <= 2.0})
        out.append({"target": "lookups as policy functions over tables ≤ 2× hand-written",
                    "measured": f"{workload['functions_ratio']:.2f}×",
                    "met": workload["functions_ratio"] <= 2.0})
    scale = result.get("scaling")
    if scale:
        out.append({"target": "table lookups flat from 1k to 100k rows",
                    "measured": f"100k rows = {scale['ratio_100k_to_1k']:.2f}× 1k rows",
                    "met": scale["ratio_100k_to_1k"] <= 1.25})
    change = result.get("one_row_change")
    if change:
        out.append({"target": f"1-row change at {change['rows']:,} rows ≤ 1 ms",
                    "measured": f"{change['refresh_median_ms']:.3f} ms median (replica "
                                "refresh), snapshot update "
                                f"{change['snapshot_apply_median_ms']:.3f} ms",
                    "met": change["refresh_median_ms"] <= 1.0})
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Benchmark results ({report['started']})", "",
             f"Machine: {report['machine']['cpu']}, {report['machine']['cpus']} CPUs, "
             f"Python {report['machine']['python']}; mode: {report['mode']}.", ""]
    measured = report.get("measured", {})
    if any(when < report["started"] for when in measured.values()):  # a partial run
        lines += ["Sections measured at: " + ", ".join(
            f"{section} {when}" for section, when in measured.items()) + ".", ""]
    lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |"
              for t in report["targets"]]
    results = report["results"]
    if "core" in results:
        lines += ["", "## Core decision (20-rule RCPT workload)", "",
                  f"Reference: {results['core']['reference']}.", "",
                  "| engine | µs/decision median | min | max | ratio | probes failed |",
                  "|---|---:|---:|---:|---:|---|"]
        for r in results["core"]["rows"]:
            lines.append(f"| {r['name']} | {r['median_us']:.2f} | {r['min_us']:.2f} | "
                         f"{r['max_us']:.2f} | {r['ratio']:.2f}× | "
                         f"{', '.join(r['probes_failed']) or 'none'} |")
        for name, why in results["core"]["skipped"].items():
            lines.append(f"\nNot reported: {name} ({why}).")
    if "tables" in results:
        lines += tables_markdown(results["tables"])
    if "load" in results:
        lines += ["", "## Load time (parse + check + compile)", "",
                  "| rules | lines | parse s | check s | compile s | total s | µs/rule |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for r in results["load"]["rows"]:
            lines.append(f"| {r['rules']:,} | {r['lines']:,} | {r['parse_s']:.3f} | "
                         f"{r['check_s']:.3f} | {r['compile_s']:.3f} | {r['total_s']:.3f} | "
                         f"{r['us_per_rule']:.0f} |")
    if "scaling" in results:
        lines += ["", "## Directory scaling (20-rule workload)", "",
                  "| directory | µs/decision median | min | max |", "|---|---:|---:|---:|"]
        for r in results["scaling"]["rows"]:
            lines.append(f"| {r['name']} | {r['median_us']:.2f} | {r['min_us']:.2f} | "
                         f"{r['max_us']:.2f} |")
        sizes = ", ".join(f"{int(k):,} subscriptions: {v / 1e6:.1f} MB"
                          for k, v in results["scaling"]["index_bytes"].items())
        lines.append(f"\nIn-memory index size: {sizes}.")
    if "headers" in results:
        lines += ["", "## Header reading (Subject, From and To of N bytes each)", "",
                  "| fields | µs/decision median | min | max | µs per KB |",
                  "|---|---:|---:|---:|---:|"]
        for r in results["headers"]["rows"]:
            lines.append(f"| {r['name']} | {r['median_us']:,.1f} | {r['min_us']:,.1f} | "
                         f"{r['max_us']:,.1f} | {r['us_per_kb']:.2f} |")
    if "http" in results:
        http_results = results["http"]
        if "rows" not in http_results:
            lines += ["", "## HTTP", "", f"Skipped: {http_results['skipped']}"]
        else:
            lines += ["", f"## HTTP (wrk, {http_results['seconds']:g} s × "
                      f"{http_results['rounds']} rounds, `{http_results['request']}`)", "",
                      "| workers | connections | komm req/s | p50 ms | p99 ms | no-op req/s | "
                      "p50 ms | p99 ms | ratio | komm, log off: req/s | ratio | "
                      "komm + SpacetimeDB sink: req/s | ratio |",
                      "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for r in http_results["rows"]:
                sink = (f"{r['komm_stdb_rps']:,.0f} | {r['ratio_stdb']:.2f}"
                        if "ratio_stdb" in r else "– | –")
                lines.append(
                    f"| {r['workers']} | {r['connections']} | {r['komm_rps']:,.0f} | "
                    f"{r['komm_p50_ms']:.2f} | {r['komm_p99_ms']:.2f} | {r['noop_rps']:,.0f} | "
                    f"{r['noop_p50_ms']:.2f} | {r['noop_p99_ms']:.2f} | {r['ratio']:.2f} | "
                    f"{r['komm_nolog_rps']:,.0f} | {r['ratio_nolog']:.2f} | {sink} |")
    if "spacetimedb" in results:
        stdb = results["spacetimedb"]
        lines += ["", "## SpacetimeDB replica (double on loopback)", "",
                  "| directory | µs/decision median | min | max |", "|---|---:|---:|---:|"]
        for r in stdb["lookups"]:
            lines.append(f"| {r['name']} | {r['median_us']:.2f} | {r['min_us']:.2f} | "
                         f"{r['max_us']:.2f} |")
        d, big = stdb["delta_ms"], stdb["big"]
        lines.append(f"\nDelta visible (POST to the double's control route until a lookup "
                     f"sees it; {d['count']} transactions into a table the policies read): "
                     f"p50 {d['p50']:.2f} ms, p99 {d['p99']:.2f} ms, max {d['max']:.2f} ms.  "
                     f"{big['rows']:,}-row table: "
                     f"snapshot load {big['load_s']:.2f} s, {big['memory_bytes'] / 1e6:.0f} MB "
                     f"(tracemalloc); 1-row delta {big['delta_1_row_ms_median']:.3f} ms median.")
    return "\n".join(lines) + "\n"


def tables_markdown(result: dict[str, Any]) -> list[str]:
    lines = ["", "## Table lookups (bench/tables.py)", ""]
    workload = result.get("workload")
    if workload and "rows" in workload:
        lines += ["| engine | µs/decision median | min | max | ratio |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['name']} | {r['median_us']:.2f} | {r['min_us']:.2f} | "
                  f"{r['max_us']:.2f} | {r['ratio']:.2f}× |" for r in workload["rows"]]
    scale = result.get("scaling")
    if scale:
        lines.append(f"\nOne `exists` (network) and one `lookup` (address) per decision: "
                     f"{scale['1000_rows_us']:.2f} µs at 1k rows, {scale['10000_rows_us']:.2f} "
                     f"at 10k, {scale['100000_rows_us']:.2f} at 100k.")
    built = result.get("build")
    if built:
        lines.append(f"\nIndex build, {built['rows']:,} rows ({built['note']}): "
                     f"{built['build_s']:.2f} s, {built['memory_mb']:.1f} MB "
                     f"({built['bytes_per_row']} bytes a row, tracemalloc).")
    change = result.get("one_row_change")
    if change:
        lines.append(f"\n1-row UPDATE at {change['rows']:,} rows: replica refresh "
                     f"{change['refresh_median_ms']:.3f} ms median "
                     f"(max {change['refresh_max_ms']:.3f}), snapshot update alone "
                     f"{change['snapshot_apply_median_ms']:.3f} ms.")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections ({', '.join(SECTIONS)})")
    parser.add_argument("--output", default=str(RESULTS), help="results directory")
    args = parser.parse_args(argv)
    sections = [s for s in args.only.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    settings = QUICK if args.quick else FULL
    output = Path(args.output)
    suffix = "" if not args.quick else "-quick"
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "mode": "quick" if args.quick else "full",
        "machine": machine(), "settings": settings, "results": {}, "measured": {},
    }
    previous = output / f"latest{suffix}.json"
    if set(sections) != set(SECTIONS) and previous.exists():
        # A partial run updates its sections and keeps the others (with their dates).
        kept = json.loads(previous.read_text())
        report["results"] = kept.get("results", {})
        report["measured"] = kept.get("measured", {})
    runners = {"core": core.run, "tables": tables.run, "load": loadtime.run,
               "scaling": scaling.run,
               "headers": headers.run, "http": http.run, "spacetimedb": spacetimedb.run}
    for section in sections:
        print(f"== {section}", flush=True)
        started = time.monotonic()
        report["results"][section] = runners[section](**settings[section])
        report["measured"][section] = time.strftime("%Y-%m-%d %H:%M:%S %z")
        print(f"   ({time.monotonic() - started:.0f} s)", flush=True)
    report["targets"] = targets(report["results"])
    text = markdown(report)
    print()
    print(text)
    output.mkdir(parents=True, exist_ok=True)
    (output / f"latest{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
    (output / f"latest{suffix}.md").write_text(text)
    print(f"written: {output / f'latest{suffix}.json'}, {output / f'latest{suffix}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
