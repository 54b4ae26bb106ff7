"""Every service option once (`OPTIONS`): its `Config` field, TOML section and key,
environment variable, parser and help text.  `config.load_config` reads the sources through
it.  A parser raises ValueError saying what it expected."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .spacetimedb.limits import MESSAGE_BYTES_MAX


@dataclass(frozen=True)
class Option:
    name: str
    section: str
    key: str
    env: str
    parse: Callable[[Any], Any]
    help: str


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _int(value: Any) -> int:
    if isinstance(value, bool | float):
        raise ValueError(f"expected a {'whole ' if isinstance(value, float) else ''}number, "
                         f"got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"expected a whole number, got {value!r}") from None


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise ValueError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):  # float("inf"), "nan", "1e999"
        raise ValueError(f"expected a finite number, got {value!r}")
    return number


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {value!r}")
    return value


DAY = 86_400.0
"""The largest interval or timeout any option takes, in seconds: larger values are typing
mistakes, and `inf` or `1e300` would overflow the timers that wait for them."""

MAXIMA: dict[str, float] = {
    "workers": 1024, "max_body_bytes": 2**30, "max_body_buffer_bytes": 2**36,
    "max_connections": 2**20, "max_concurrency": 2**20, "max_header_bytes": 2**24,
    "max_headers": 100_000, "linger_timeout": 60.0, "linger_bytes": 2**36,
    "max_message_headers": 1_000_000,
    "log_jsonl_max_bytes": 2**40, "log_jsonl_backups": 100_000,
    "log_queue_max": 10_000_000, "log_spacetimedb_batch": 100_000,
    "log_spacetimedb_max_dead_letters": 1_000_000,
    "spacetimedb_max_message_bytes": MESSAGE_BYTES_MAX,
    # retention, not waiting: up to ten years
    "log_spool_keep": 3650 * DAY, "log_jsonl_max_age": 3650 * DAY,
    "log_sqlite_max_age": 3650 * DAY,
}
"""The largest value of a numeric option (`limit`); every other seconds option takes at
most `DAY`, every other whole-number option SQLite's largest integer."""


def limit(option: Option) -> float | None:
    """The largest value `option` takes (None: not a number)."""
    if option.name in MAXIMA:
        return MAXIMA[option.name]
    if option.parse is _float:
        return DAY
    if option.parse is _int:
        return 2**63 - 1
    return None


OPTIONS: tuple[Option, ...] = (
    Option("host", "server", "host", "KOMM_HOST", _str, "address to listen on"),
    Option("port", "server", "port", "KOMM_PORT", _int, "port to listen on"),
    Option("workers", "server", "workers", "KOMM_WORKERS", _int, "worker processes"),
    Option("token", "server", "token", "KOMM_TOKEN", _str,
           "require this token (Bearer, or the Basic password)"),
    Option("max_body_bytes", "server", "max_body_bytes", "KOMM_MAX_BODY_BYTES", _int,
           "largest hook request body accepted"),
    Option("max_body_buffer_bytes", "server", "max_body_buffer_bytes",
           "KOMM_MAX_BODY_BUFFER_BYTES", _int,
           "bytes of request bodies held at once per process (0: 4 x max_body_bytes); "
           "a request beyond it gets 503 at once"),
    Option("shadow", "server", "shadow", "KOMM_SHADOW", _bool,
           "always answer accept; log the decision that would have been made"),
    Option("header_timeout", "server", "header_timeout", "KOMM_HEADER_TIMEOUT", _float,
           "seconds a client has to send a complete request header (else 408, closed)"),
    Option("body_timeout", "server", "body_timeout", "KOMM_BODY_TIMEOUT", _float,
           "seconds a client has to send the body after its header (else 408, closed)"),
    Option("idle_timeout", "server", "idle_timeout", "KOMM_IDLE_TIMEOUT", _float,
           "seconds an idle keep-alive connection stays open"),
    Option("write_timeout", "server", "write_timeout", "KOMM_WRITE_TIMEOUT", _float,
           "seconds a client may leave its answers unread (write buffer full) before it is "
           "closed"),
    Option("max_connections", "server", "max_connections", "KOMM_MAX_CONNECTIONS", _int,
           "open connections per process (0: the descriptor limit less 64); beyond it the "
           "least recently active idle connection is closed"),
    Option("max_concurrency", "server", "max_concurrency", "KOMM_MAX_CONCURRENCY", _int,
           "requests in progress per process; beyond it requests get 503 at once"),
    Option("max_header_bytes", "server", "max_header_bytes", "KOMM_MAX_HEADER_BYTES", _int,
           "largest request line and header fields together (else 431, closed)"),
    Option("max_headers", "server", "max_headers", "KOMM_MAX_HEADERS", _int,
           "most header fields in a request (else 431, closed)"),
    Option("linger_timeout", "server", "linger_timeout", "KOMM_LINGER_TIMEOUT", _float,
           "seconds a connection answered before its request was read whole (413, 401, "
           "503, 431, 400) still reads and drops the rest, so the client reads the answer "
           "instead of a reset (0: close at once)"),
    Option("linger_bytes", "server", "linger_bytes", "KOMM_LINGER_BYTES", _int,
           "the most bytes read and dropped then (0: max_body_bytes, at least 64 MiB)"),
    Option("max_message_headers", "server", "max_message_headers",
           "KOMM_MAX_MESSAGE_HEADERS", _int,
           "most header fields of the message in a data-stage request (else 400)"),
    Option("shutdown_timeout", "server", "shutdown_timeout", "KOMM_SHUTDOWN_TIMEOUT", _float,
           "seconds SIGTERM waits for requests in progress before cancelling them"),
    Option("status_auth", "server", "status_auth", "KOMM_STATUS_AUTH", _bool,
           "require the token for /metrics and /readyz too (/healthz stays open)"),
    Option("policies", "policies", "path", "KOMM_POLICIES", lambda v: Path(_str(v)),
           "directory of *.policy files"),
    Option("watch", "policies", "watch", "KOMM_WATCH", _bool,
           "reload the policies when their files change"),
    Option("directory", "directory", "url", "KOMM_DIRECTORY", _str,
           "sqlite:PATH, spacetimedb://HOST:PORT/DB, spacetimedb+https://HOST/DB, "
           "memory:demo or memory:empty"),
    Option("spacetimedb_token", "directory", "token", "KOMM_SPACETIMEDB_TOKEN", _str,
           "SpacetimeDB token (prefer [directory] token_file or KOMM_SPACETIMEDB_TOKEN_FILE)"),
    Option("refresh_interval", "directory", "refresh_interval", "KOMM_REFRESH_INTERVAL",
           _float, "seconds between checks for directory changes"),
    Option("max_staleness", "directory", "max_staleness", "KOMM_MAX_STALENESS", _float,
           "seconds the directory may be unreadable before lookups fail"),
    Option("spacetimedb_max_message_bytes", "directory", "max_message_bytes",
           "KOMM_SPACETIMEDB_MAX_MESSAGE_BYTES", _int,
           "largest SpacetimeDB subscription message (snapshot or transaction) accepted; a "
           "larger one drops the connection (1009), counted in "
           "komm_directory_oversized_messages"),
    Option("log_jsonl", "log", "jsonl", "KOMM_LOG_JSONL", _str,
           "decision log file (JSON lines); empty to disable"),
    Option("log_jsonl_max_bytes", "log", "jsonl_max_bytes", "KOMM_LOG_JSONL_MAX_BYTES", _int,
           "rotate the decision log file at this size"),
    Option("log_jsonl_backups", "log", "jsonl_backups", "KOMM_LOG_JSONL_BACKUPS", _int,
           "rotated decision log files to keep"),
    Option("log_sqlite", "log", "sqlite", "KOMM_LOG_SQLITE", _bool,
           "also write decisions to the mta_log table of the SQLite store"),
    Option("redact_client_ip", "log", "redact_client_ip", "KOMM_REDACT_CLIENT_IP", _bool,
           "leave client IP addresses out of the decision log"),
    Option("log_spool", "log", "spool", "KOMM_LOG_SPOOL", _str,
           "directory of the decision log's append-only spool"),
    Option("log_spool_fsync_interval", "log", "spool_fsync_interval",
           "KOMM_LOG_SPOOL_FSYNC_INTERVAL", _float,
           "seconds between fsyncs of the spool (0: leave it to the OS)"),
    Option("log_on_spool_error", "log", "on_spool_error", "KOMM_LOG_ON_SPOOL_ERROR", _str,
           "when the spool cannot be written: tempfail (451 4.3.0) or accept"),
    Option("log_queue_max", "log", "queue_max", "KOMM_LOG_QUEUE_MAX", _int,
           "records held in memory while the spool fails (on_spool_error = accept)"),
    Option("log_spool_keep", "log", "spool_keep", "KOMM_LOG_SPOOL_KEEP", _float,
           "seconds to keep spool segments every sink has taken"),
    Option("log_jsonl_max_age", "log", "jsonl_max_age", "KOMM_LOG_JSONL_MAX_AGE", _float,
           "remove rotated decision log files older than this many seconds (0: never)"),
    Option("log_sqlite_max_age", "log", "sqlite_max_age", "KOMM_LOG_SQLITE_MAX_AGE", _float,
           "delete mta_log rows older than this many seconds (0: never)"),
    Option("log_sqlite_max_rows", "log", "sqlite_max_rows", "KOMM_LOG_SQLITE_MAX_ROWS", _int,
           "keep at most this many mta_log rows (0: no limit)"),
    Option("log_max_backlog_records", "log", "max_backlog_records",
           "KOMM_LOG_MAX_BACKLOG_RECORDS", _int,
           "/readyz is 503 when a sink is more records behind"),
    Option("log_max_backlog_age", "log", "max_backlog_age", "KOMM_LOG_MAX_BACKLOG_AGE",
           _float, "/readyz is 503 when a sink's oldest unwritten record is older (s)"),
    Option("log_writer_sched_idle", "log", "writer_sched_idle",
           "KOMM_LOG_WRITER_SCHED_IDLE", _bool,
           "run the log writer under SCHED_IDLE (Linux) instead of nice 10"),
    Option("log_spacetimedb", "log", "spacetimedb", "KOMM_LOG_SPACETIMEDB", _str,
           "also send decisions to a SpacetimeDB reducer: spacetimedb://HOST:PORT/DB or "
           "spacetimedb+https://HOST/DB (empty: off)"),
    Option("log_spacetimedb_reducer", "log", "spacetimedb_reducer",
           "KOMM_LOG_SPACETIMEDB_REDUCER", _str, "the reducer that takes decision records"),
    Option("log_spacetimedb_args", "log", "spacetimedb_args", "KOMM_LOG_SPACETIMEDB_ARGS",
           _str, "batch: reducer(records: Vec<DecisionRecord>); record: reducer(id, record), "
           "one record per call"),
    Option("log_spacetimedb_batch", "log", "spacetimedb_batch", "KOMM_LOG_SPACETIMEDB_BATCH",
           _int, "records per reducer call (spacetimedb_args = batch)"),
    Option("log_spacetimedb_token", "log", "spacetimedb_token", "KOMM_LOG_SPACETIMEDB_TOKEN",
           _str, "token for the reducer calls (prefer [log] spacetimedb_token_file or "
           "KOMM_LOG_SPACETIMEDB_TOKEN_FILE; default: the [directory] token when the log "
           "goes to the same server)"),
    Option("log_spacetimedb_dead_letter", "log", "spacetimedb_dead_letter",
           "KOMM_LOG_SPACETIMEDB_DEAD_LETTER", _str,
           "file (JSON lines) for records the reducer refused (530)"),
    Option("log_spacetimedb_max_dead_letters", "log", "spacetimedb_max_dead_letters",
           "KOMM_LOG_SPACETIMEDB_MAX_DEAD_LETTERS", _int,
           "records the reducer may refuse (530) in a row, each dead-lettered; one more "
           "blocks the sink, keeping the records in the spool (0: block at the first)"),
)
