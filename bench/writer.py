"""The decision-log writer's CPU per record (`python -m bench.writer [--quick]`).

A spool is filled with real compact entries: the shipped policies decide the Stalwart
RCPT fixture (`tests/fixtures/stalwart/derived-rcpt-1.json`) against the demo directory
and the answer path's own packer (`entries.EntryPacker`) packs the decision, with a new
record id and an answer time 250 µs later for each entry (4,000 answers a second).
`SpoolWriter.step()` then moves it, batch by batch (200 records: one 50 ms poll at 1
connection; 2,000: the writer's largest batch), into the two default sinks, the JSONL
file and the SQLite store's `mta_log`, in a fresh temporary directory each round.  The
writer's clock advances one poll (50 ms) per step, as under load.

Measured: CPU time (`time.process_time`) of the steps, per record, against a baseline
measured in the same rounds: the bare msgspec work on the same entries (msgpack decode,
JSON encode: what no writer can avoid).  Variants are interleaved round by round; the
minimum and the median over the rounds are reported.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "stalwart" / "derived-rcpt-1.json"
POLICIES = ROOT / "policies"
POLL = 0.05


def entries(count: int, start: float = 1_796_000_000.0) -> list[bytes]:
    """`count` compact spool entries of the shipped RCPT decision (distinct ids, times
    250 µs apart)."""
    from komm_policy.decisionlog.entries import EntryPacker
    from komm_policy.decisionlog.records import RecordIds
    from komm_policy.demo import DEMO_TABLES
    from komm_policy.directory.memory import InMemoryDirectory
    from komm_policy.directory.schema import load_schema
    from komm_policy.policyset import load_policy_set
    from komm_policy.runtime import decide
    from komm_policy.wire import decode_request

    policy_set = load_policy_set(POLICIES)
    directory = InMemoryDirectory(DEMO_TABLES)
    directory.require(load_schema(POLICIES / "schema.toml"), policy_set.needs)
    request = decode_request(FIXTURE.read_bytes())
    decision = decide(policy_set, request, directory)
    packer = EntryPacker()
    ids = RecordIds()
    return [packer.pack(request, decision, 0.42, start + i * 0.00025, ids.prefix,
                        next(ids.numbers)) for i in range(count)]


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Writer:
    """A writer to measure: `make(spool, sinks, clock, batch)` gives an object with
    `step()` and `close()`; `sinks(directory)` the sink specs."""

    name: str
    make: Callable[..., Any]
    sinks: Callable[[Path], Sequence[Any]]
    rounds_us: dict[int, list[float]] = field(default_factory=dict)


def current_writer() -> Writer:
    """This tree's writer with its default sinks (JSONL and SQLite)."""
    from komm_policy.decisionlog.mta_log import SqliteSpec
    from komm_policy.decisionlog.sinks import JsonlSpec
    from komm_policy.decisionlog.writer import SAVE_EVERY, SpoolWriter

    def make(spool: Path, sinks: Sequence[Any], clock: _Clock, batch: int) -> Any:
        # As the writer process runs it (`writer_main`): positions saved every SAVE_EVERY.
        return SpoolWriter(spool, sinks, clock=clock, batch=batch, save_every=SAVE_EVERY)

    def sinks(directory: Path) -> list[Any]:
        return [JsonlSpec(str(directory / "decisions.jsonl")),
                SqliteSpec(str(directory / "store.sqlite"))]
    return Writer("writer", make, sinks)


def _fill(directory: Path, data: list[bytes]) -> Path:
    from komm_policy.decisionlog.spool import SpoolAppender
    from komm_policy.demo import DEMO_TABLES
    from komm_policy.directory.sqlite import create_database

    spool = directory / "spool"
    appender = SpoolAppender(spool, fsync_interval=0)
    try:
        for start in range(0, len(data), 1000):
            appender.append_batch(data[start:start + 1000])
    finally:
        appender.close()
    create_database(directory / "store.sqlite", DEMO_TABLES)
    return spool


def writer_us(writer: Writer, data: list[bytes], batch: int) -> float:
    """CPU µs per record of one writer moving `data` from a fresh spool into fresh sinks,
    `batch` records a step."""
    with tempfile.TemporaryDirectory(prefix="komm-bench-writer-") as name:
        directory = Path(name)
        spool = _fill(directory, data)
        clock = _Clock()
        instance = writer.make(spool, writer.sinks(directory), clock, batch)
        gc.collect()
        try:
            start = time.process_time()
            while instance.step():
                clock.now += POLL
            used = time.process_time() - start
        finally:
            instance.close()
        lines = (directory / "decisions.jsonl").read_bytes().count(b"\n")
        assert lines == len(data), (writer.name, lines, len(data))
        return used / len(data) * 1e6


def baseline_us(data: list[bytes]) -> float:
    """CPU µs per entry of msgspec alone: msgpack decode, JSON encode."""
    decode, encode = msgspec.msgpack.decode, msgspec.json.encode
    gc.collect()
    start = time.process_time()
    for entry in data:
        encode(decode(entry))
    return (time.process_time() - start) / len(data) * 1e6


def run(*, rounds: int = 7, batches: tuple[int, ...] = (200, 2000), records: int = 10_000,
        writers: Sequence[Writer] | None = None, log: Any = print) -> dict[str, Any]:
    """Interleaved rounds (baseline, then each writer at each batch size); per writer and
    batch size: min and median µs/record and the median ratio to the baseline."""
    writers = list(writers or [current_writer()])
    data = entries(records)
    base: list[float] = []
    for _ in range(rounds):
        base.append(baseline_us(data))
        for batch in batches:
            for writer in writers:
                writer.rounds_us.setdefault(batch, []).append(writer_us(writer, data, batch))
    base_median = statistics.median(base)
    rows = [{"name": "msgspec decode + encode (baseline)", "min_us": min(base),
             "median_us": base_median, "ratio": 1.0}]
    log(f"  baseline (msgspec decode + encode): min {min(base):.2f}, median "
        f"{base_median:.2f} µs/record")
    for writer in writers:
        for batch in batches:
            series = writer.rounds_us[batch]
            median = statistics.median(series)
            rows.append({"name": f"{writer.name}, batches of {batch}", "batch": batch,
                         "min_us": min(series), "median_us": median,
                         "ratio": median / base_median, "rounds_us": series})
            log(f"  {writer.name}, batches of {batch}: min {min(series):.1f}, median "
                f"{median:.1f} µs/record ({median / base_median:.1f}× baseline)")
    return {"records": records, "rounds": rounds, "rows": rows}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2,000 records")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    result = run(rounds=2 if args.quick else args.rounds,
                 records=2_000 if args.quick else 10_000)
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
