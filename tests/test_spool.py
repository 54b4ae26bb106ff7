"""The spool (decisionlog/spool.py) and the writer loop (decisionlog/writer.py), in process.

Real files in a temporary directory; sinks are fakes with a fake clock where the test is
about backoff, and the real JSONL/SQLite sinks where it is about what gets stored.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from komm_policy.decisionlog import JsonlSpec, SpooledRecord, SqliteSpec
from komm_policy.decisionlog.entries import raw_entry
from komm_policy.decisionlog.records import RECORD_VERSION, RecordIds
from komm_policy.decisionlog.spool import (
    MAX_ENTRY,
    Position,
    SpoolAppender,
    SpoolError,
    frame,
    segment_name,
    segments,
)
from komm_policy.decisionlog.spool_reader import SpoolReader
from komm_policy.decisionlog.writer import SpoolWriter
from komm_policy.demo import DEMO_TABLES
from komm_policy.directory.sqlite import create_database

from .test_decisionlog import FakeClock, decided


class FakeSink:
    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.records: list[SpooledRecord] = []
        self.failing = False
        self.calls = 0
        self.closed = False

    def write(self, records: list[SpooledRecord]) -> None:
        self.calls += 1
        if self.failing:
            raise OSError("disk full")
        self.records.extend(records)

    def retain(self, now: float) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.records]


def entries(count: int, ids: RecordIds | None = None) -> list[bytes]:
    ids = ids or RecordIds()
    request, decision = decided("derived-rcpt-2")
    return [raw_entry(request, decision, 0.1, time.time(), ids()) for _ in range(count)]


def test_appended_entries_are_read_back_in_order(tmp_path: Path) -> None:
    spool = SpoolAppender(tmp_path, fsync_interval=0)
    payloads = [b"entry-%d" % i for i in range(50)]
    seqs = [spool.append(p) for p in payloads]
    assert seqs == list(range(50))
    reader = SpoolReader(tmp_path)
    got, position = reader.read(None, 20)
    assert [p for _, p in got] == payloads[:20]
    got2, position2 = reader.read(position, 100)
    assert [s for s, _ in got2] == list(range(20, 50))
    assert reader.read(position2, 100) == ([], position2)
    spool.close()


def test_a_second_service_cannot_use_the_same_spool(tmp_path: Path) -> None:
    spool = SpoolAppender(tmp_path, fsync_interval=0)
    with pytest.raises(SpoolError, match="in use"):
        SpoolAppender(tmp_path, fsync_interval=0)
    spool.close()
    SpoolAppender(tmp_path, fsync_interval=0).close()  # free again


def test_a_restart_continues_the_numbering_in_a_new_segment(tmp_path: Path) -> None:
    spool = SpoolAppender(tmp_path, fsync_interval=0)
    for i in range(5):
        spool.append(b"a%d" % i)
    spool.close()
    spool = SpoolAppender(tmp_path, fsync_interval=0)
    assert spool.append(b"b0") == 5
    spool.close()
    assert segments(tmp_path) == [0, 5]
    got, _ = SpoolReader(tmp_path).read(None, 100)
    assert [s for s, _ in got] == list(range(6))


def test_a_frame_cut_short_by_a_crash_is_skipped_once_a_later_segment_exists(
        tmp_path: Path) -> None:
    spool = SpoolAppender(tmp_path, fsync_interval=0)
    for i in range(3):
        spool.append(b"a%d" % i)
    spool.close()
    with (tmp_path / segment_name(0)).open("ab") as file:  # killed mid-write
        file.write(frame(b"lost-entry", 3)[:7])
    reader = SpoolReader(tmp_path)
    got, position = reader.read(None, 100)
    assert [p for _, p in got] == [b"a0", b"a1", b"a2"]
    assert reader.read(position, 100)[0] == []  # may still be written: wait
    spool = SpoolAppender(tmp_path, fsync_interval=0)  # the restarted service
    assert spool.next_seq == 3
    spool.append(b"b3")
    spool.close()
    got, _ = reader.read(position, 100)
    assert got == [(3, b"b3")]
    assert (reader.skipped_bytes, reader.lost_records) == (7, 0)  # never acknowledged


def test_a_corrupt_frame_is_skipped_and_what_follows_delivered(tmp_path: Path) -> None:
    path = tmp_path / segment_name(0)
    bad = bytearray(frame(b"abc", 1))
    bad[-1] ^= 1
    path.write_bytes(frame(b"good", 0) + bytes(bad) + frame(b"after", 2))
    (tmp_path / segment_name(3)).write_bytes(frame(b"next", 3))
    reader = SpoolReader(tmp_path)
    got, _ = reader.read(None, 100)
    assert got == [(0, b"good"), (2, b"after"), (3, b"next")]
    assert (reader.skipped_bytes, reader.lost_records) == (len(bad), 1)


def test_a_failed_append_leaves_nothing_and_the_next_goes_to_a_new_segment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = SpoolAppender(tmp_path, fsync_interval=0)
    spool.append(b"first")
    real_write = os.write
    calls = []

    def short_then_full(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, data[:5])  # a short write, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("komm_policy.decisionlog.spool.os.write", short_then_full)
    with pytest.raises(OSError):
        spool.append(b"second")
    monkeypatch.undo()
    assert (tmp_path / segment_name(0)).read_bytes() == frame(b"first", 0)  # taken back
    assert spool.append(b"third") == 1
    spool.close()
    got, _ = SpoolReader(tmp_path).read(None, 100)
    assert got == [(0, b"first"), (1, b"third")]


def test_segments_roll_and_consumed_ones_are_collected(tmp_path: Path) -> None:
    spool = SpoolAppender(tmp_path, fsync_interval=0, segment_bytes=100)
    for i in range(30):
        spool.append(b"x" * 40 + b"%02d" % i)
    assert len(segments(tmp_path)) >= 10
    reader = SpoolReader(tmp_path)
    got, position = reader.read(None, 12)
    assert position is not None
    before = segments(tmp_path)
    reader.collect([position, None])  # a sink that has not started: nothing goes
    assert segments(tmp_path) == before
    reader.collect([position, Position(0, 0, 0)])
    assert segments(tmp_path) == before  # one sink still at the start
    reader.collect([position])
    assert segments(tmp_path)[0] == position.segment
    got_rest, _ = reader.read(position, 100)
    assert [s for s, _ in got + got_rest] == list(range(30))
    spool.close()


def test_the_writer_frees_taken_segments_at_once_not_on_the_minute_tick(
        tmp_path: Path) -> None:
    """A disk the spool filled must be freed by delivery itself (CI found the taken
    segment staying for the 60 s retention tick once saving the positions worked again)."""
    clock = FakeClock()
    spool = SpoolAppender(tmp_path, fsync_interval=0, segment_bytes=600)
    ids = RecordIds()
    for entry in entries(12, ids):
        spool.append(entry)
    assert len(segments(tmp_path)) >= 3
    sink = FakeSink()
    writer = SpoolWriter(tmp_path, [sink], clock=clock)
    writer.maybe_retain(0.0)  # before any delivery: the position is unknown, nothing goes
    assert len(segments(tmp_path)) >= 3
    while writer.step():
        pass
    writer.maybe_retain(0.0)  # the clock did not move: no retention tick
    assert segments(tmp_path) == [writer.states[0].position.segment]
    assert len(sink.ids) == 12
    kept = tmp_path / "kept"
    spool_kept = SpoolAppender(kept, fsync_interval=0, segment_bytes=600)
    for entry in entries(12, ids):
        spool_kept.append(entry)
    before = segments(kept)
    writer_kept = SpoolWriter(kept, [FakeSink()], clock=clock)
    while writer_kept.step():
        pass
    writer_kept.maybe_retain(3600.0)  # spool_keep set: taken segments wait for their age
    assert segments(kept) == before
    spool.close()
    spool_kept.close()


# ---------------------------------------------------------------------------------------
# The writer loop


def test_writer_feeds_every_sink_and_resumes_from_saved_positions(tmp_path: Path) -> None:
    spool = SpoolAppender(tmp_path, fsync_interval=0)
    ids = RecordIds()
    for entry in entries(10, ids):
        spool.append(entry)
    first, second = FakeSink("a"), FakeSink("b")
    writer = SpoolWriter(tmp_path, [first, second], batch=4)
    while writer.step():
        pass
    assert first.ids == second.ids and len(first.ids) == 10 == len(set(first.ids))
    assert [r.seq for r in first.records] == list(range(10))
    assert json.loads(first.records[0].line)["record_version"] == RECORD_VERSION
    for entry in entries(3, ids):
        spool.append(entry)
    resumed_a, resumed_b = FakeSink("a"), FakeSink("b")
    writer = SpoolWriter(tmp_path, [resumed_a, resumed_b])  # a restarted writer
    while writer.step():
        pass
    assert [r.seq for r in resumed_a.records] == [10, 11, 12]
    assert resumed_b.ids == resumed_a.ids
    spool.close()


def test_failing_sink_keeps_its_position_while_the_other_goes_on(tmp_path: Path) -> None:
    spool = SpoolAppender(tmp_path, fsync_interval=0)
    for entry in entries(5):
        spool.append(entry)
    clock = FakeClock()
    good, bad = FakeSink("good"), FakeSink("bad")
    bad.failing = True
    writer = SpoolWriter(tmp_path, [good, bad], clock=clock)
    writer.step()
    assert len(good.records) == 5 and bad.records == []
    delay = writer.next_retry_in()
    assert delay is not None and 0.25 <= delay <= 0.5
    for entry in entries(2):
        spool.append(entry)
    writer.step()
    assert len(good.records) == 7 and bad.calls == 1  # waiting out its backoff
    clock.advance(delay)
    bad.failing = False
    writer.step()
    assert bad.ids == good.ids  # the whole backlog, in order, once
    assert writer.next_retry_in() is None
    status = writer.status()
    assert status["sinks"]["bad"]["errors"] == 1
    assert status["positions"]["bad"] == status["positions"]["good"]
    spool.close()


def test_backoff_schedule(tmp_path: Path) -> None:
    """0.5 s, doubling after each further failure, at most 30 s, each delay jittered
    within the upper half of its step; two writers do not retry in step."""
    spool = SpoolAppender(tmp_path, fsync_interval=0)
    spool.append(entries(1)[0])
    schedules = []
    for seed in (1, 2):
        clock = FakeClock()
        bad = FakeSink()
        bad.failing = True
        writer = SpoolWriter(tmp_path, [bad], clock=clock, rng=random.Random(seed))
        writer.step()
        delays = []
        for _ in range(8):
            delay = writer.next_retry_in()
            assert delay is not None
            delays.append(delay)
            clock.advance(delay)
            writer.step()
        steps = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
        for delay, step in zip(delays, steps, strict=True):
            assert step / 2 <= delay <= step, (delay, step)
        schedules.append(delays)
    assert schedules[0] != schedules[1]
    spool.close()


def test_a_sink_that_cannot_be_opened_yet_is_retried(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool = SpoolAppender(spool_dir, fsync_interval=0)
    for entry in entries(3):
        spool.append(entry)
    clock = FakeClock()
    store = tmp_path / "later.sqlite3"
    jsonl = tmp_path / "decisions.jsonl"
    writer = SpoolWriter(spool_dir, [JsonlSpec(str(jsonl)), SqliteSpec(str(store))],
                         clock=clock)
    writer.step()
    assert not store.exists()  # opening the sink must not create an empty store
    assert len(jsonl.read_bytes().splitlines()) == 3
    create_database(store, DEMO_TABLES)
    clock.advance(1)
    writer.step()
    writer.close()
    import sqlite3

    with sqlite3.connect(store) as conn:
        assert conn.execute("SELECT count(*) FROM mta_log").fetchone()[0] == 3
    spool.close()


def test_a_writer_drains_the_spools_of_ended_workers(tmp_path: Path) -> None:
    from komm_policy.decisionlog.writer import adopt_orphans

    root = tmp_path / "spool"
    ended = SpoolAppender(root / "worker-111", fsync_interval=0)
    for entry in entries(7):
        ended.append(entry)
    ended.close()  # the worker is gone: its lock is free
    alive = SpoolAppender(root / "worker-222", fsync_interval=0)
    alive.append(entries(1)[0])
    own = root / "worker-333"
    SpoolAppender(own, fsync_interval=0).close()
    jsonl = tmp_path / "decisions.jsonl"
    assert adopt_orphans(own, [JsonlSpec(str(jsonl))]) == 7
    assert len(jsonl.read_bytes().splitlines()) == 7
    assert not (root / "worker-111").exists()
    assert (root / "worker-222").exists()  # its worker still runs
    alive.close()


def test_a_batch_is_one_write_and_reads_back_as_its_entries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = SpoolAppender(tmp_path, fsync_interval=0)
    assert spool.append(b"first") == 0
    real_write = os.write
    writes = []

    def counted(fd: int, data: bytes) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr("komm_policy.decisionlog.spool.os.write", counted)
    batch = [b"entry-%d" % i for i in range(16)]
    assert spool.append_batch(batch) == 16  # the last one's sequence number
    assert writes == [sum(len(frame(p, seq)) for seq, p in enumerate(batch, 1))]
    assert spool.append_batch([]) == 16 and len(writes) == 1
    monkeypatch.undo()
    assert spool.append(b"last") == 17
    spool.close()
    got, _ = SpoolReader(tmp_path).read(None, 100)
    assert got == list(enumerate([b"first", *batch, b"last"]))


def test_a_failed_batch_leaves_none_of_its_entries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = SpoolAppender(tmp_path, fsync_interval=0)
    spool.append(b"first")
    with pytest.raises(ValueError, match="over the"):  # one entry too large: none written
        spool.append_batch([b"ok", b"x" * (MAX_ENTRY + 1)])
    real_write = os.write
    calls = []

    def short_then_full(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, data[:len(data) // 2])  # a short write, then full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("komm_policy.decisionlog.spool.os.write", short_then_full)
    with pytest.raises(OSError):
        spool.append_batch([b"second", b"third", b"fourth"])
    monkeypatch.undo()
    assert (tmp_path / segment_name(0)).read_bytes() == frame(b"first", 0)  # taken back
    assert spool.append_batch([b"fifth", b"sixth"]) == 2
    spool.close()
    got, _ = SpoolReader(tmp_path).read(None, 100)
    assert got == [(0, b"first"), (1, b"fifth"), (2, b"sixth")]
