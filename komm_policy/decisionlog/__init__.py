"""The decision log: one versioned record per answered hook request, never lost.

Public entry: `DecisionLog` (the service's side: spool each decision before answering,
supervise the writer process), configured by `LogSettings` and the sink specs
(`JsonlSpec`, `SqliteSpec`, `ReducerSpec` for a SpacetimeDB reducer).  The record itself
(`DecisionRecord`, `make_record`, `encode_record`) is documented in
docs/decision-record.md.

Modules: `records` (the schema, version `RECORD_VERSION`), `entries` (what the
answer path packs into the spool, and its record), `spool` (the append-only
journal), `writer` (the process feeding the sinks from the spool), `sinks` (the sink
interface, JSON lines), `mta_log` (the SQLite sink), `spacetimedb_sink` (a reducer),
`log` (the service's side).
"""

from .entries import line_from_raw, raw_entry
from .log import DecisionLog, LogSettings, LogStatus
from .mta_log import SqliteSink, SqliteSpec
from .records import (
    RECORD_VERSION,
    DecisionRecord,
    ModificationSummary,
    RecordIds,
    Timestamps,
    decode_record,
    encode_record,
    make_record,
)
from .sinks import JsonlSink, JsonlSpec, Sink, SinkBlocked, SinkSpec, SpooledRecord
from .spacetimedb_sink import ReducerSink, ReducerSpec

__all__ = [
    "RECORD_VERSION", "DecisionLog", "DecisionRecord", "JsonlSink", "JsonlSpec", "LogSettings",
    "LogStatus", "ModificationSummary", "RecordIds", "ReducerSink", "ReducerSpec", "Sink",
    "SinkBlocked", "SinkSpec", "SpooledRecord",
    "SqliteSink", "SqliteSpec", "Timestamps", "decode_record", "encode_record",
    "line_from_raw", "make_record", "raw_entry",
]
