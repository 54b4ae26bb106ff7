"""SpacetimeDB replica: lookups against the in-memory directory, delta latency, 1-row delta
cost at 100k rows, snapshot load time and memory (the SpacetimeDB double on loopback)."""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
import tracemalloc
from typing import Any

from komm_policy.directory.schema import parse_schema
from komm_policy.directory.snapshot import IndexSpec, Needs
from komm_policy.directory.spacetimedb import SpacetimeDirectory
from komm_policy.runtime import decide
from komm_policy.spacetimedb import Endpoint
from komm_policy.spacetimedb.protocol import TableRows
from tests.spacetimedb_double import DoubleServer
from tests.spacetimedb_double.samples import directory_spec

from .engines import SCHEMA, compile_workload
from .measure import interleaved
from .workload import directory_rows, make_data, memory_directory, probe_fields, stalwart_request

BIG = {"columns": [["id", "U32"], ["email", "String"], ["note", "String"]],
       "primary_key": ["id"]}
BIG_SCHEMA = parse_schema({"tables": {"big": {"primary_key": ["id"], "columns": {
    "id": "integer", "email": "address", "note": "text"}}}})
BIG_NEEDS = Needs({IndexSpec("big", ("email",))})


def _open(server: DoubleServer, **options: Any) -> SpacetimeDirectory:
    return SpacetimeDirectory(Endpoint.parse(f"spacetimedb://127.0.0.1:{server.port}/komm"),
                              server.owner_token, startup_wait=60, **options)


def _settle(pending: Any) -> None:
    """Finish a replica handler's work (a big message's is done in a worker thread)."""
    if pending is not None:
        asyncio.run(pending)


def run(*, subscriptions: int, big_rows: int, deltas: int, rounds: int, min_seconds: float,
        chunk_seconds: float, log: Any = print) -> dict[str, Any]:
    data = make_data(subscriptions=subscriptions)
    rows = directory_rows(data)
    # account.identity is an Identity in the module: an account without one gets its id
    rows = {**rows, "account": [{**a, "identity": a["identity"] or f"{a['id']:064x}"}
                                for a in rows["account"]]}
    spec = directory_spec(rows)
    spec["tables"]["big"] = {**BIG, "rows": [[i, f"user{i}@example.org", "x" * 20]
                                             for i in range(big_rows)]}
    results: dict[str, Any] = {}
    with DoubleServer({"databases": {"komm": spec}}) as server:
        # 1. lookups: the 20-rule decision on the replica vs the in-memory directory
        policy_set = compile_workload()
        request = stalwart_request(probe_fields({}))
        replica = _open(server)
        replica.require(SCHEMA, policy_set.needs, timeout=120)
        memory = memory_directory(data)
        memory.require(SCHEMA, policy_set.needs)
        assert decide(policy_set, request, replica).action == "accept"
        cases = [(f"in-memory, {subscriptions:,} subscriptions",
                  lambda r: decide(policy_set, r, memory).action, request),
                 (f"SpacetimeDB replica, {subscriptions:,} subscriptions",
                  lambda r: decide(policy_set, r, replica).action, request)]
        series = interleaved(cases, rounds=rounds, min_seconds=min_seconds,
                             chunk_seconds=chunk_seconds)
        results["lookups"] = [s.as_dict() for s in series]
        results["lookup_ratio"] = series[1].median / series[0].median
        log(f"  replica / in-memory decision: {results['lookup_ratio']:.2f}×")

        # 2. a committed delta, from the transaction's POST to visible in a lookup: a
        #    table the policy set reads (snapshot builder)
        control = server.control()
        replica.require(BIG_SCHEMA, BIG_NEEDS, timeout=120)
        spec_email = IndexSpec("big", ("email",))
        tables_ms: list[float] = []
        for i in range(deltas):
            email = f"delta{i}@example.org"
            started = time.perf_counter()
            control.tx("komm", "big", inserts=[[big_rows + i, email, "d"]])
            while replica.snapshot().tables.first(spec_email, (email,)) is None:  # type: ignore[union-attr]
                time.sleep(0.0002)
            tables_ms.append((time.perf_counter() - started) * 1000)
        for name, values in (("delta_ms", tables_ms),):
            values.sort()
            results[name] = {"p50": statistics.median(values),
                             "p99": values[max(0, int(len(values) * 0.99) - 1)],
                             "max": values[-1], "count": len(values)}
        log(f"  delta visible (tables): p50 {results['delta_ms']['p50']:.2f} ms, p99 "
            f"{results['delta_ms']['p99']:.2f} ms (incl. the control POST)")
        replica.close()

        # 3. snapshot load time and memory, and a 1-row delta, for a table of `big_rows`
        big = _open(server)
        big.require(BIG_SCHEMA, BIG_NEEDS, timeout=120)
        table = server.state.databases["komm"].tables["big"]
        strings = server.state.databases["komm"].encode_rows(table, table.rows, "object")
        def snapshot() -> tuple[TableRows, ...]:  # the replica consumes a message's rows
            return (TableRows("big", table.table_id, [], list(strings)),)
        gc.collect()
        tracemalloc.start()
        started = time.perf_counter()
        _settle(big.on_snapshot(snapshot()))
        load_s = time.perf_counter() - started
        memory_bytes = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        # again without tracemalloc's overhead, for the time
        gc.collect()
        started = time.perf_counter()
        _settle(big.on_snapshot(snapshot()))
        load_s = min(load_s, time.perf_counter() - started)
        one = []
        for i in range(200):
            row = f'[{big_rows + i},"new{i}@example.org","y"]'
            started = time.perf_counter()
            _settle(big.on_update((TableRows("big", table.table_id, [], [row]),)))
            one.append((time.perf_counter() - started) * 1000)
        big.close()
        results["big"] = {"rows": big_rows, "load_s": load_s, "memory_bytes": memory_bytes,
                          "delta_1_row_ms_median": statistics.median(one),
                          "delta_1_row_ms_p99": sorted(one)[int(len(one) * 0.99) - 1]}
        log(f"  {big_rows:,} rows: snapshot {load_s:.2f} s, {memory_bytes / 1e6:.0f} MB; "
            f"1-row delta {results['big']['delta_1_row_ms_median']:.3f} ms median")
    return results
