"""The decision log: one versioned record per answered hook request, never lost.

Public entry: `DecisionLog` (the service's side: spool each decision before answering,
supervise the writer process), configured by `LogSettings` and the sink specs
(`JsonlSpec`, `SqliteSpec`).  The record itself (`DecisionRecord`, `make_record`,
`encode_record`) is documented in docs/decision-record.md.

Modules: `records` (the schema, version `RECORD_VERSION`), `spool` (the append-only
journal), `writer` (the process feeding the sinks from the spool), `sinks` (the sink
interface, JSON lines), `mta_log` (the SQLite sink), `log` (the service's side).
"""

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
    line_from_raw,
    make_record,
    raw_entry,
)
from .sinks import JsonlSink, JsonlSpec, Sink, SinkSpec, SpooledRecord

__all__ = [
    "RECORD_VERSION", "DecisionLog", "DecisionRecord", "JsonlSink", "JsonlSpec", "LogSettings",
    "LogStatus", "ModificationSummary", "RecordIds", "Sink", "SinkSpec", "SpooledRecord",
    "SqliteSink", "SqliteSpec", "Timestamps", "decode_record", "encode_record",
    "line_from_raw", "make_record", "raw_entry",
]
