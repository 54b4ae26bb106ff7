"""The writer saves its positions every `SAVE_EVERY` seconds (or sooner after
`SAVE_RECORDS` records / `SAVE_BYTES` bytes), not after every batch: what a writer killed
between two saves delivered again must be stored once (JSONL: the ids in its tail,
`sinks.TAIL_BYTES`; `mta_log`: its unique index).  Real writer processes, SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from komm_policy.decisionlog import JsonlSpec, writer
from komm_policy.decisionlog.entries import raw_entry
from komm_policy.decisionlog.sinks import JsonlSink
from komm_policy.decisionlog.spool import SpoolAppender, read_state
from komm_policy.decisionlog.writer import SpoolWriter

from .logstore import jsonl_ids
from .test_decisionlog import FakeClock, decided, spooled
from .test_decisionlog_process import assert_all_stored, open_log, paths  # noqa: F401


def _fill(spool: Path, count: int) -> None:
    request, decision = decided("derived-rcpt-1")
    appender = SpoolAppender(spool, fsync_interval=0)
    try:
        appender.append_batch([raw_entry(request, decision, 0.3, time.time(), f"r-{n}")
                               for n in range(count)])
    finally:
        appender.close()


def _saved_seq(spool: Path, name: str) -> int:
    position = read_state(spool).get("positions", {}).get(name)
    return position[2] if position else 0


def test_positions_are_saved_every_save_every_seconds_or_after_save_records(
        tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    _fill(spool, 450)
    clock = FakeClock()
    jsonl = tmp_path / "decisions.jsonl"
    spool_writer = SpoolWriter(spool, [JsonlSpec(str(jsonl))], clock=clock, batch=100,
                               save_every=0.5)
    try:
        assert spool_writer.step()
        assert spool_writer.unsaved and _saved_seq(spool, "jsonl") == 0
        clock.advance(0.2)
        assert spool_writer.step()
        assert _saved_seq(spool, "jsonl") == 0  # 0.2 s: not yet
        clock.advance(0.3)
        assert spool_writer.step()
        assert _saved_seq(spool, "jsonl") == 300 and not spool_writer.unsaved
        assert spool_writer.step()
        assert spool_writer.step()
        assert not spool_writer.step()  # caught up: the process saves now (`unsaved`)
        assert spool_writer.unsaved and _saved_seq(spool, "jsonl") == 300
        spool_writer.save()
        assert _saved_seq(spool, "jsonl") == 450
    finally:
        spool_writer.close()
    clock = FakeClock()
    _fill(tmp_path / "spool2", writer.SAVE_RECORDS + 10)
    spool_writer = SpoolWriter(tmp_path / "spool2", [JsonlSpec(str(tmp_path / "2.jsonl"))],
                               clock=clock, batch=writer.SAVE_RECORDS // 2, save_every=60)
    try:
        assert spool_writer.step() and spool_writer.unsaved
        assert spool_writer.step()  # SAVE_RECORDS delivered: saved although < 60 s
        assert _saved_seq(tmp_path / "spool2", "jsonl") == writer.SAVE_RECORDS
    finally:
        spool_writer.close()


def test_the_jsonl_sink_skips_a_repeat_of_several_batches_across_a_rotation(
        tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    lines = [json.dumps({"id": f"r-{n}", "pad": "x" * 200}).encode() for n in range(60)]
    records = spooled(*lines)
    sink = JsonlSink(path, max_bytes=40 * 230)  # rotates after about 40 lines
    for start in range(0, 50, 10):
        sink.write(records[start:start + 10])
    sink.close()
    assert (tmp_path / "decisions.jsonl.1").exists()
    sink = JsonlSink(path, max_bytes=40 * 230)  # the writer restarted from record 0
    for start in range(0, 60, 10):
        sink.write(records[start:start + 10])
    sink.close()
    ids = jsonl_ids(tmp_path / "decisions.jsonl.1") + jsonl_ids(path)
    assert ids == [f"r-{n}" for n in range(60)]


def test_writers_killed_between_saves_store_every_record_once(
        paths: tuple[Path, Path, Path]) -> None:  # noqa: F811
    jsonl, _store, spool = paths
    request, decision = decided("derived-rcpt-2")
    decision_log = open_log(paths)
    total = 0
    between_saves = 0
    try:
        for kill in range(12):
            delivered = len(jsonl_ids(jsonl))
            flow_until = None
            while flow_until is None or time.monotonic() < flow_until:
                for _ in range(20):  # a steady flow: batches well below BATCH
                    total += decision_log.submit_decision(request, decision, 0.3,
                                                          time.time())
                time.sleep(0.01)
                if flow_until is None and len(jsonl_ids(jsonl)) > delivered + 100:
                    flow_until = time.monotonic() + 0.1 + 0.15 * (kill % 3)  # it writes
            victim = decision_log.writer_pid
            assert victim is not None
            os.kill(victim, signal.SIGKILL)
            # Delivered but not saved when it died: the next writer repeats those.  Read
            # before the next writer starts (the supervisor waits 0.1 s, then spawns).
            time.sleep(0.03)
            if len(jsonl_ids(jsonl)) > _saved_seq(spool, "jsonl"):
                between_saves += 1
                if between_saves >= 3:
                    break
            while decision_log.writer_pid == victim:
                time.sleep(0.01)
        assert between_saves >= 1, "no kill fell between two saves"
        assert decision_log.flush(timeout=30)
    finally:
        decision_log.close()
    assert_all_stored(paths, total)


def test_the_writer_process_saves_once_caught_up(paths: tuple[Path, Path, Path]  # noqa: F811
                                                 ) -> None:
    request, decision = decided("derived-rcpt-2")
    decision_log = open_log(paths)
    try:
        for _ in range(30):
            decision_log.submit_decision(request, decision, 0.3, time.time())
        started = time.monotonic()
        assert decision_log.flush(timeout=10)  # reads the saved positions
        assert time.monotonic() - started < 5
    finally:
        decision_log.close()
    assert_all_stored(paths, 30)
