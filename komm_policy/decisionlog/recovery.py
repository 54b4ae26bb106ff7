"""When the sinks' saved positions are lost: a corrupt `state.json`, or a position that no
longer fits the spool.

Nothing is lost and nothing written twice: the corrupt file is set aside for the operator
(`state.json.corrupt-<UTC time>`, the newest `KEEP_CORRUPT` kept), said loudly (a warning
naming the file and the parse error, a count in /metrics, a notice in /readyz for
`NOTICE_SECONDS`), and each sink resumes where it can tell it stopped.  Re-sending
everything from the oldest segment is safe only for a sink that keeps every record id
(`mta_log`'s unique index, a SpacetimeDB reducer keyed by id); the JSONL sink recognises
only the ids in its last `sinks.TAIL_BYTES` (current and newest rotated file), so with
segments kept (`spool_keep`) or small rotated files it would write records twice.  A sink
that can name the records it holds (`held_ids()`) therefore resumes right after the newest
spool entry among them (`resume_after`): a sink takes the spool in order, so every entry
before that one is in it too.  When none of them is in the spool, the sink holds none of
the spool's records and starts at the oldest segment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .entries import record_from_raw
from .records import Timestamps
from .settings import LogStatus
from .sink_state import SinkState
from .spool import Position
from .spool_reader import SpoolReader, corruption_summary

log = logging.getLogger(__name__)

CORRUPT_PREFIX = "state.json.corrupt-"
KEEP_CORRUPT = 10
"""Corrupt state files kept in the spool directory (older ones are removed): enough to
show a pattern, bounded if something corrupts every write."""
NOTICE_SECONDS = 600.0
"""Seconds /readyz says "degraded" after a corrupt `state.json` was set aside."""


def set_aside(directory: Path, problem: str, now: float) -> dict[str, Any]:
    """Rename the unusable `state.json` to `state.json.corrupt-<UTC time>` (kept for the
    operator; the newest `KEEP_CORRUPT` stay), log a warning naming it and `problem`, and
    return what the writer's status reports: {"count": corrupt files kept, "kept": the
    name (None when it could not be renamed), "error": problem, "at": now (time.time())}."""
    state = directory / "state.json"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    kept: Path | None = directory / f"{CORRUPT_PREFIX}{stamp}"
    number = 1
    while kept is not None and kept.exists():  # two in one second: keep both
        number += 1
        kept = directory / f"{CORRUPT_PREFIX}{stamp}-{number}"
    try:
        os.replace(state, kept)  # type: ignore[arg-type]
    except OSError as exc:
        log.error("decision log: cannot set %s aside: %s", state, exc.strerror or exc)
        kept = None
    found = sorted(directory.glob(f"{CORRUPT_PREFIX}*"), key=lambda p: p.stat().st_mtime)
    for old in found[:-KEEP_CORRUPT]:
        with contextlib.suppress(OSError):
            old.unlink()
    log.warning("decision log: %s %s; set aside as %s, the sinks' positions are "
                "recovered from the spool and the sinks (nothing lost, nothing stored "
                "twice)", state, problem, kept.name if kept else "(not renamed)")
    return {"count": min(len(found), KEEP_CORRUPT), "kept": kept.name if kept else None,
            "error": problem, "at": now}


def resume_after(reader: SpoolReader, held: set[str], batch: int,
                 beat: Callable[[], None] = lambda: None) -> tuple[Position | None, int]:
    """The position right after the newest spool entry whose record id is in `held`, and
    that entry's seq; (None, -1) when none is (start at the oldest segment).  Reads the
    whole spool once, `batch` entries at a time, calling `beat` after each (a long spool
    must not look like a hung writer); time linear in the spool, memory in `batch`."""
    timestamps = Timestamps()
    found: tuple[Position | None, int, int] | None = None  # batch start, count, seq
    position: Position | None = None
    while True:
        entries, after = reader.read(position, batch)
        for index, (seq, payload) in enumerate(entries):
            try:
                record_id = record_from_raw(payload, timestamps)[0].id
            except Exception:  # undecodable: the writer counts it when it delivers
                continue
            if record_id in held:
                found = (position, index + 1, seq)
        beat()
        if not entries or after == position:
            break
        position = after
    if found is None:
        return None, -1
    start, count, seq = found
    return reader.read(start, count)[1], seq


def resume(state: SinkState, reader: SpoolReader, batch: int,
           beat: Callable[[], None]) -> None:
    """Find the lost position of `state`'s sink (opened): right after the newest spool
    entry it holds (`resume_after`), or the oldest segment (None) for a sink that cannot
    tell (no `held_ids`) and stores each record id once by itself."""
    held_ids = getattr(state.sink, "held_ids", None)
    if held_ids is None:
        state.position = None
        log.warning("decision log sink %s starts again at the oldest segment (it stores "
                    "each record id once)", state.name)
        return
    state.position, seq = resume_after(reader, held_ids(), batch, beat)
    if state.position is None:
        log.warning("decision log sink %s holds none of the spool's records: it starts at "
                    "the oldest segment", state.name)
    else:
        log.warning("decision log sink %s resumes after spool entry %d, the newest record "
                    "it holds", state.name, seq)


def recovery_summary(saved: object, now: float) -> tuple[int, str | None]:
    """(corrupt state files set aside, a /readyz sentence while the last is less than
    `NOTICE_SECONDS` old) from what the writer saved (`set_aside`'s dict)."""
    if not isinstance(saved, dict):
        return 0, None
    try:
        count, at = int(saved.get("count", 0)), float(saved.get("at", 0.0))
    except (TypeError, ValueError):
        return 0, None
    if now - at >= NOTICE_SECONDS:
        return count, None
    return count, (f"decision log: the spool's state.json {saved.get('error')} "
                   f"({now - at:.0f}s ago); set aside as {saved.get('kept')}, the sinks "
                   "resumed from the records they hold")


def note_losses(status: LogStatus, state: dict[str, Any], now: float) -> None:
    """Fill `status` (the service's view) with what the writer saved in `state`: the spool
    corruption it met (`spool_reader.corruption_summary`) and the corrupt `state.json`
    files it set aside; `spool_corruption` is the /readyz notice of either, while recent."""
    (status.spool_skipped_bytes, status.spool_lost_records,
     status.spool_corruption) = corruption_summary(state.get("corruption"), now)
    status.state_recoveries, notice = recovery_summary(state.get("state_recovered"), now)
    status.spool_corruption = status.spool_corruption or notice
