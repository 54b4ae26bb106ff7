"""Table lookups: the 20-rule workload written with `lookup`/`exists`, and with its lookups
as the policy functions of the shipped directory file, against hand-written Python; lookup
time from 1k to 100k rows; a 1-row change applied at 100k rows; index build time and
memory for 100k rows.

    .venv/bin/python -m bench.tables [--quick] [--only workload,scaling,build,change]
    .venv/bin/python -m bench.run --only tables      # the same, with its targets

Prints one JSON object.  The machine is shared: ratios measured side by side hold,
absolute figures move between runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import sqlite3
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from komm_policy.builtins import DEFAULT_BUILTINS
from komm_policy.directory.memory import InMemoryDirectory
from komm_policy.directory.schema import load_schema
from komm_policy.directory.snapshot import IndexSpec, Needs, TablesSnapshot
from komm_policy.directory.sqlite import SqliteDirectory, create_database
from komm_policy.ipset import IP
from komm_policy.policyset import PolicySet, Source, compile_sources, compile_text
from komm_policy.runtime import decide

from .engines import hand_written
from .measure import interleaved
from .workload import (
    BENCH_REQUEST,
    POLICY,
    PROBES,
    ReferenceIndex,
    directory_rows,
    make_data,
    probe_fields,
    stalwart_request,
)

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = load_schema(ROOT / "policies" / "schema.toml")
DIRECTORY_FILES = (ROOT / "policies" / "00-directory.policy",
                   ROOT / "examples" / "shipped-directory" / "00-directory.policy")
"""The shipped directory functions (`ip_blocked`, `category`, `subscribed`, …): in
policies/ once the engine's built-ins of those names are gone, in examples/ before."""
HELPERS = frozenset({"ip_blocked", "category", "account", "is_admin", "subscribed"})

TABLES_POLICY = POLICY.replace(
    "when ip_blocked(client.ip)",
    'when exists("blocked_ips", ip = client.ip, active = true)').replace(
    "when category(rcpt) == none",
    'when lookup("message_categories", email_address = rcpt, active = true) == none').replace(
    "when not subscribed(sender, category(rcpt))",
    'when not exists("subscriptions", subscriber_account_id = lookup("account", '
    'email = sender, is_active = true).id, category_id = lookup("message_categories", '
    'email_address = rcpt, active = true).id, active = true)')


def compile_tables(text: str = TABLES_POLICY) -> PolicySet:
    result = compile_text(text, "bench/tables.policy", schema=SCHEMA)
    if result.policy_set is None:
        raise RuntimeError("\n".join(str(d) for d in result.diagnostics))
    return result.policy_set


def compile_functions() -> PolicySet:
    """The workload as written (`ip_blocked(client.ip)`, `category(rcpt)`, …) over the
    shipped directory file's functions, the engine's helpers of those names left out."""
    path = next(p for p in DIRECTORY_FILES if p.exists())
    builtins = {name: b for name, b in DEFAULT_BUILTINS.items() if name not in HELPERS}
    result = compile_sources([Source(path.name, path.read_text()),
                              Source("bench/workload.policy", POLICY)],
                             builtins=builtins, schema=SCHEMA)
    if result.policy_set is None:
        raise RuntimeError("\n".join(str(d) for d in result.diagnostics))
    return result.policy_set


def workload(quick: bool) -> dict[str, Any]:
    """The 20-rule workload, side by side: hand-written Python (the reference), table
    lookups written inline, and lookups as the shipped directory functions."""
    rows = directory_rows(make_data())
    tables_set, functions_set = compile_tables(), compile_functions()
    directory = InMemoryDirectory(rows)
    directory.require(SCHEMA, Needs(tables_set.needs.indexes | functions_set.needs.indexes))
    reference = hand_written(ReferenceIndex(make_data()))
    for label, changes, expected in PROBES:
        request = stalwart_request(probe_fields(changes))
        for policy_set in (tables_set, functions_set):
            got = decide(policy_set, request, directory).action
            assert got == expected, (label, got)
        assert reference.decide(request) == expected, label
    request = stalwart_request(BENCH_REQUEST)
    series = interleaved(
        [("hand-written Python", reference.decide, request),
         ("komm-policy, table lookups", lambda r: decide(tables_set, r, directory).action,
          request),
         ("komm-policy, lookups in policy functions (policies' 00-directory.policy)",
          lambda r: decide(functions_set, r, directory).action, request)],
        rounds=2 if quick else 5, min_seconds=0.2 if quick else 1.0,
        chunk_seconds=0.05 if quick else 0.2)
    hand, tables, functions = (s.median for s in series)

    def paired(other: Any) -> float:
        """The median of the rounds' own ratios (each round's cases ran back to back, so
        a burst of load on the shared machine hits both sides of a ratio alike)."""
        return round(statistics.median(
            o / h for o, h in zip(other.rounds_us, series[0].rounds_us, strict=True)), 2)
    return {"rows": [s.as_dict() | {"ratio": round(s.median / hand, 2)} for s in series],
            "hand_written_us": round(hand, 2), "table_lookups_us": round(tables, 2),
            "ratio": round(tables / hand, 2), "functions_us": round(functions, 2),
            "functions_ratio": round(functions / hand, 2), "target_ratio": 2.0,
            "paired_ratio": paired(series[1]), "paired_functions_ratio": paired(series[2])}


def _blocked_rows(n: int) -> list[dict[str, Any]]:
    return [{"ip": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "reason": "r",
             "blocked_at": 0, "active": True} for i in range(n)]


def _account_rows(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "identity": "", "name": f"m{i}", "email": f"member{i}@example.net",
             "is_active": True, "last_synced": None} for i in range(1, n + 1)]


NET = IndexSpec("blocked_ips", ("ip",), "net", (("active", True),))
EMAIL = IndexSpec("account", ("email",), "eq", (("is_active", True),))
"""The partial indexes the workload's calls read (`active = true` folded in)."""


def scaling(quick: bool) -> dict[str, Any]:
    """One `exists` on a network column and one `lookup` on an address column, in a
    decision, at 1k, 10k and 100k rows of each table."""
    policy_set = compile_tables(
        'stage rcpt {\n rule a: when exists("blocked_ips", ip = client.ip, active = true) '
        'reject\n rule b: when lookup("account", email = sender, is_active = true) == none '
        'reject\n default accept\n}\n')
    request = stalwart_request({**BENCH_REQUEST, "sender": "member500@example.net"})
    result = {}
    for n in (1_000, 10_000, 100_000):
        directory = InMemoryDirectory(tables={"blocked_ips": _blocked_rows(n),
                                              "account": _account_rows(n)})
        directory.require(SCHEMA, policy_set.needs)
        assert decide(policy_set, request, directory).action == "accept"
        (series,) = interleaved([(f"{n}", lambda r, d=directory: decide(policy_set, r, d),
                                  request)], rounds=2 if quick else 3,
                                min_seconds=0.2 if quick else 0.5, chunk_seconds=0.05)
        result[f"{n}_rows_us"] = round(series.median, 2)
    result["ratio_100k_to_1k"] = round(result["100000_rows_us"] / result["1000_rows_us"], 2)
    return result


def build(n: int = 100_000) -> dict[str, Any]:
    """Index build time and memory for n rows of each table (the network index, an
    address index): timed on its own, memory (what the snapshot keeps) under tracemalloc
    in a second build."""
    needs = Needs({NET, EMAIL})
    rows = {"blocked_ips": _blocked_rows(n), "account": _account_rows(n)}
    gc.collect()
    started = time.perf_counter()
    snapshot = TablesSnapshot.build(SCHEMA, needs, rows)
    seconds = time.perf_counter() - started
    assert snapshot.exists(NET, (IP.parse("10.0.1.2"),))
    del snapshot
    gc.collect()
    tracemalloc.start()
    snapshot = TablesSnapshot.build(SCHEMA, needs, rows)
    current, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert snapshot.first(EMAIL, ("member7@example.net",)) is not None
    return {"rows": 2 * n, "build_s": round(seconds, 2),
            "memory_mb": round(current / 2**20, 1),
            "bytes_per_row": round(current / (2 * n)),
            "note": f"{n:,} blocked_ips (network index) + {n:,} accounts (address index)"}


def one_row_change(n: int = 100_000, repeats: int = 20) -> dict[str, Any]:
    """A 1-row UPDATE in a table of n rows: what the SQLite replica's refresh costs to
    apply it (read the change log, re-read the row, update the snapshot), and the
    snapshot update alone."""
    folder = Path(tempfile.mkdtemp())
    path = folder / "bench.sqlite3"
    create_database(path)
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany("INSERT INTO account (id, identity, name, email, is_active) "
                         "VALUES (?, '', ?, ?, 1)",
                         [(i, f"m{i}", f"member{i}@example.net") for i in range(1, n + 1)])
    directory = SqliteDirectory(path, start=False)
    directory.require(SCHEMA, Needs({EMAIL}))
    own = TablesSnapshot.build(SCHEMA, Needs({EMAIL}), {"account": _account_rows(n)})
    """changed in a chain of its own: a change applied to the directory's snapshot would
    make the directory's next one a fork (a copy, `versioned.fork`)"""
    refresh_ms = []
    apply_ms = []
    for k in range(repeats):
        with conn:
            conn.execute("UPDATE account SET name = ? WHERE id = ?", (f"x{k}", 500 + k))
        started = time.perf_counter()
        directory.refresh()
        refresh_ms.append((time.perf_counter() - started) * 1000)
        tables = directory.snapshot().tables
        row = tables.first(EMAIL, (f"member{500 + k}@example.net",))
        assert row is not None and row.name == f"x{k}"
        started = time.perf_counter()
        own = own.apply({"account": ([{"id": 900 + k}], [
            {"id": 900 + k, "identity": "", "name": "y",
             "email": f"member{900 + k}@example.net", "is_active": True,
             "last_synced": None}])})
        apply_ms.append((time.perf_counter() - started) * 1000)
    directory.close()
    conn.close()
    return {"rows": n, "refresh_median_ms": round(statistics.median(refresh_ms), 3),
            "refresh_max_ms": round(max(refresh_ms), 3),
            "snapshot_apply_median_ms": round(statistics.median(apply_ms), 3),
            "target_ms": 1.0,
            "note": "refresh = change-log read + row re-read + snapshot update + publish "
                    "(every policy set: the helpers are functions over tables, no index is "
                    "rebuilt whole)"}


def run(*, quick: bool = False, sections: tuple[str, ...] = ("workload", "scaling", "build",
                                                              "change"),
        log: Any = print) -> dict[str, Any]:
    """Every part (bench.run's `tables` section)."""
    report: dict[str, Any] = {}
    if "workload" in sections:
        report["workload"] = workload(quick)
    if "scaling" in sections:
        report["scaling"] = scaling(quick)
    if "build" in sections:
        report["build"] = build(10_000 if quick else 100_000)
    if "change" in sections:
        report["one_row_change"] = one_row_change(10_000 if quick else 100_000)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="workload,scaling,build,change")
    args = parser.parse_args(argv)
    report = run(quick=args.quick, sections=tuple(args.only.split(",")))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
