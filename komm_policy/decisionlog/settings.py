"""How the decision log behaves (`LogSettings`, the `[log]` options) and what it reports
(`LogStatus`, shown in /metrics and /readyz)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class LogSettings:
    """How the decision log behaves (the `[log]` options in the README)."""

    spool: str = "var/spool"
    fsync_interval: float = 0.2
    """Seconds between fsyncs of the spool (0: never; the OS writes back)."""
    segment_bytes: int = 64 * 1024 * 1024
    on_spool_error: Literal["tempfail", "accept"] = "tempfail"
    queue_max: int = 10_000
    """Entries held in memory while the spool fails (on_spool_error = accept)."""
    spool_keep: float = 0.0
    """Seconds to keep segments every sink has taken (0: remove them at once)."""
    max_backlog_records: int = 100_000
    max_backlog_age: float = 60.0
    """/readyz turns 503 when a sink is this far behind (records or seconds)."""
    writer_stall: float = 30.0
    """A writer without a heartbeat this long is killed and restarted."""
    writer_nice: int = 10
    """CPU priority of the writer process below the service's (0: the same)."""
    writer_sched_idle: bool = False
    """Run the writer under SCHED_IDLE (Linux; instead of `writer_nice`): it gets a CPU
    only when nothing else wants it.  Off until measured under load; a writer starved
    this way is not taken for a hung one (`liveness.starved`)."""
    poll: float = 0.05
    """Seconds the writer waits when it has caught up (records reach the sinks within)."""


CONFIGURED = {"spool": "log_spool", "fsync_interval": "log_spool_fsync_interval",
              "on_spool_error": "log_on_spool_error", "queue_max": "log_queue_max",
              "spool_keep": "log_spool_keep", "max_backlog_records": "log_max_backlog_records",
              "max_backlog_age": "log_max_backlog_age",
              "writer_sched_idle": "log_writer_sched_idle"}
"""The settings a `[log]` option sets: `LogSettings` field → `config.Config` field (whose
default is the `LogSettings` one); the others are fixed."""


@dataclass
class LogStatus:
    alive: bool
    restarts: int
    next_seq: int
    held: int
    spool_errors: int
    spool_failing: str | None
    tempfails: int
    unrecordable: int
    dropped: int
    backlog: dict[str, int] = field(default_factory=dict)
    oldest_age: dict[str, float] = field(default_factory=dict)
    sink_errors: dict[str, int] = field(default_factory=dict)
    failing_sinks: dict[str, str] = field(default_factory=dict)
    blocked_sinks: dict[str, str] = field(default_factory=dict)
    """Sinks that refuse records until their configuration is fixed (`SinkBlocked`)."""
    sink_counters: dict[str, dict[str, int]] = field(default_factory=dict)
    """A sink's own counters (e.g. `dead_letters`), as its last write left them."""
    spool_skipped_bytes: int = 0  # no intact frame there, and the records it held:
    spool_lost_records: int = 0  # as the writer counted them (`spool_reader`)
    spool_corruption: str | None = None  # the last loss, while recent (/readyz)
    """Also a corrupt `state.json` set aside, while recent (`recovery.note_losses`)."""
    state_recoveries: int = 0  # corrupt `state.json` files set aside (and kept)
