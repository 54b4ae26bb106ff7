"""Directory scaling: decision time and index memory with 1k / 10k / 100k subscriptions."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

from komm_policy.directory.memory import InMemoryDirectory
from komm_policy.directory.snapshot import Needs, TablesSnapshot
from komm_policy.directory.sqlite import SqliteDirectory
from komm_policy.runtime import decide

from .engines import SCHEMA, compile_workload, sqlite_file
from .measure import interleaved
from .workload import directory_rows, make_data, probe_fields, stalwart_request


def index_bytes(rows: Any, needs: Needs) -> int:
    gc.collect()
    tracemalloc.start()
    index = TablesSnapshot.build(SCHEMA, needs, {t: rows[t] for t in needs.tables})
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del index
    return size


def run(*, sizes: tuple[int, ...], rounds: int, min_seconds: float, chunk_seconds: float,
        log: Any = print) -> dict[str, Any]:
    policy_set = compile_workload()
    request = stalwart_request(probe_fields({}))
    cases = []
    memory: dict[int, int] = {}
    for size in sizes:
        rows = directory_rows(make_data(subscriptions=size))
        memory[size] = index_bytes(rows, policy_set.needs)
        for label, directory in (("in-memory", InMemoryDirectory(rows)),
                                 ("SQLite replica", SqliteDirectory(sqlite_file(rows),
                                                                    start=False))):
            directory.require(SCHEMA, policy_set.needs)
            assert decide(policy_set, request, directory).action == "accept"

            def one(req: Any, directory: Any = directory) -> str:
                return decide(policy_set, req, directory).action
            cases.append((f"{label}, {size:,} subscriptions", one, request))
        log(f"  {size:>7,} subscriptions: index {memory[size] / 1e6:.1f} MB")
    series = interleaved(cases, rounds=rounds, min_seconds=min_seconds,
                         chunk_seconds=chunk_seconds)
    return {"rows": [s.as_dict() for s in series],
            "index_bytes": {str(k): v for k, v in memory.items()}}
