"""A corrupt stretch in the spool costs only the records it held, counted exactly.

In process (real segment files): a flipped byte in the middle of a closed segment and of
the segment being written, a corrupt length field, a corrupt last frame that later
appends get past, sinks at different positions and a restarted writer counting each loss
once, resynchronisation in linear time.  End to end (a real `komm-policy serve`, real
signals): the tester's reproducer — writer stopped, requests spooled, the process group
SIGKILLed, one byte flipped, a restart — and the live variant, a byte flipped while the
service runs.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from komm_policy.decisionlog.spool import SpoolAppender, segment_name, segments
from komm_policy.decisionlog.spool_reader import SpoolReader
from komm_policy.decisionlog.spoolframe import HEADER_SIZE, MAGIC, frame, scan
from komm_policy.decisionlog.writer import SpoolWriter

from .logstore import jsonl_ids, store_ids
from .serverproc import Deployment, ServerProcess
from .test_log_faults import BODY, writer_pid
from .test_spool import FakeSink, entries


def _flip(path: Path, offset: int) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0x40]))


def _fill(directory: Path, count: int) -> tuple[SpoolAppender, list[bytes]]:
    spool = SpoolAppender(directory, fsync_interval=0)
    payloads = [b"entry-%04d-" % i + b"x" * 80 for i in range(count)]
    for payload in payloads:
        spool.append(payload)
    return spool, payloads


def _read_all(reader: SpoolReader) -> list[tuple[int, bytes]]:
    got, position = reader.read(None, 10_000)
    more, _ = reader.read(position, 10_000)
    return got + more


def test_a_flipped_byte_in_a_closed_segment_loses_only_its_record(tmp_path: Path) -> None:
    spool, payloads = _fill(tmp_path, 200)
    spool.close()
    size = HEADER_SIZE + len(payloads[0])
    _flip(tmp_path / segment_name(0), 100 * size + 30)  # inside entry 100's payload
    spool = SpoolAppender(tmp_path, fsync_interval=0)  # the restarted service
    assert spool.next_seq == 200
    spool.append(b"after-restart")
    spool.close()
    reader = SpoolReader(tmp_path)
    got = _read_all(reader)
    assert [s for s, _ in got] == [*range(100), *range(101, 201)]
    assert [p for _, p in got] == [*payloads[:100], *payloads[101:], b"after-restart"]
    assert (reader.skipped_bytes, reader.lost_records) == (size, 1)
    [event] = reader.events
    assert (event.segment, event.offset, event.lost_records) == (0, 100 * size, 1)


def test_a_corrupt_length_field_does_not_stop_the_segment(tmp_path: Path) -> None:
    spool, payloads = _fill(tmp_path, 50)
    size = HEADER_SIZE + len(payloads[0])
    _flip(tmp_path / segment_name(0), 10 * size + 5)  # entry 10's length field
    reader = SpoolReader(tmp_path)
    got, position = reader.read(None, 1000)  # the segment is still being written
    assert [s for s, _ in got] == [*range(10), *range(11, 50)]
    assert (reader.skipped_bytes, reader.lost_records) == (size, 1)
    spool.append(b"more")
    more, _ = reader.read(position, 1000)
    assert more == [(50, b"more")]
    spool.close()


def test_a_corrupt_last_frame_of_the_active_segment_waits_then_is_passed(
        tmp_path: Path) -> None:
    spool, payloads = _fill(tmp_path, 20)
    size = HEADER_SIZE + len(payloads[0])
    _flip(tmp_path / segment_name(0), 19 * size + HEADER_SIZE + 3)
    reader = SpoolReader(tmp_path)
    got, position = reader.read(None, 1000)
    assert [s for s, _ in got] == list(range(19))
    assert reader.read(position, 1000)[0] == []  # may still be being written: wait
    assert reader.lost_records == 0
    spool.append(b"next")  # the writer appends past it: it is a gap, not a torn tail
    got, _ = reader.read(position, 1000)
    assert got == [(20, b"next")]
    assert (reader.skipped_bytes, reader.lost_records) == (size, 1)
    spool.close()


def test_each_loss_is_counted_once_across_sinks_and_writer_restarts(tmp_path: Path) -> None:
    spool = SpoolAppender(tmp_path, fsync_interval=0)
    starts = []
    for payload in entries(30):
        starts.append(spool._size)
        spool.append(payload)
    spool.close()
    size = starts[1]
    assert starts == [i * size for i in range(30)]  # entries of one length
    for entry in (5, 6, 20):  # two adjacent ones make one stretch
        _flip(tmp_path / segment_name(0), entry * size + HEADER_SIZE + 1)
    SpoolAppender(tmp_path, fsync_interval=0).close()  # a later (empty) segment
    fast, slow = FakeSink("fast"), FakeSink("slow")
    slow.failing = True
    writer = SpoolWriter(tmp_path, [fast, slow], batch=8)
    while writer.step(force=True):
        pass
    assert (writer.reader.skipped_bytes, writer.reader.lost_records) == (3 * size, 3)
    writer.save()
    writer = SpoolWriter(tmp_path, [fast, slow], batch=8)  # restarted, slow recovers
    slow.failing = False
    while writer.step(force=True):
        pass
    expected = [s for s in range(30) if s not in (5, 6, 20)]
    assert [r.seq for r in fast.records] == expected == [r.seq for r in slow.records]
    assert (writer.reader.skipped_bytes, writer.reader.lost_records) == (3 * size, 3)
    assert [(e.offset, e.lost_records) for e in writer.reader.events] == [
        (5 * size, 2), (20 * size, 1)]


def test_resynchronisation_is_linear_in_the_bytes_read(tmp_path: Path) -> None:
    """A stretch full of false frame starts (the magic everywhere, headers that do not
    check) costs one header CRC per candidate."""
    garbage = (MAGIC + b"\0" * 4) * 250_000  # 2 MB, 250,000 candidates
    data = frame(b"before", 0) + garbage + frame(b"after", 7)
    started = time.thread_time()  # CPU time: other processes' load does not count
    items = list(scan(data))
    elapsed = time.thread_time() - started
    assert [type(i).__name__ for i in items] == ["Frame", "Gap", "Frame"]
    assert items[1].next_seq == 7 and items[2].payload == b"after"
    assert elapsed < 5.0, elapsed


def _serve(deployment: Deployment, spool: Path) -> ServerProcess:
    return ServerProcess(deployment, "--no-watch", "--log-level", "warning",
                         "--log-spool", str(spool)).start()


def _post_all(server: ServerProcess, count: int) -> None:
    with httpx.Client(timeout=10) as client:
        for _ in range(count):
            response = client.post(f"{server.url}/mta-hook", content=BODY,
                                   headers={"content-type": "application/json"})
            assert response.status_code == 200


def _wait_stored(deployment: Deployment, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(jsonl_ids(deployment.log_file)) < count:
        assert time.monotonic() < deadline, len(jsonl_ids(deployment.log_file))
        time.sleep(0.05)


def _until(condition: Callable[[], bool], timeout: float = 30) -> None:
    """Wait for `condition` (the writer counts and saves on its own schedule)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def _metric(server: ServerProcess, name: str) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _flip_middle(spool: Path) -> None:
    """Flip one byte in the middle of the first segment (inside a frame's payload)."""
    path = spool / segment_name(segments(spool)[0])
    data = path.read_bytes()
    middle = data.find(MAGIC, len(data) // 2)
    assert middle > 0
    _flip(path, middle + HEADER_SIZE + 10)


def test_a_flipped_byte_after_a_crash_costs_one_record_end_to_end(tmp_path: Path) -> None:
    """The tester's reproducer: writer stopped, requests spooled, the service and its
    writer SIGKILLed, one byte flipped past the saved position, a restart."""
    deployment = Deployment(tmp_path)
    spool = tmp_path / "spool"
    server = _serve(deployment, spool)
    writer = writer_pid(server)
    assert writer is not None
    os.kill(writer, signal.SIGSTOP)
    _post_all(server, 300)
    server.signal(signal.SIGKILL)
    os.kill(writer, signal.SIGKILL)
    server.stop()
    assert jsonl_ids(deployment.log_file) == []
    _flip_middle(spool)
    server = _serve(deployment, spool)
    try:
        _wait_stored(deployment, 299)
        _until(lambda: _metric(server, "komm_decision_log_spool_lost_records_total") > 0)
        assert _metric(server, "komm_decision_log_spool_lost_records_total") == 1
        assert _metric(server, "komm_decision_log_spool_skipped_bytes_total") > HEADER_SIZE
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert "1 records lost to a corrupt stretch" in ready.json()["decision_log"]
    finally:
        server.stop()
    ids = jsonl_ids(deployment.log_file)
    assert len(ids) == len(set(ids)) == 299
    assert sorted(store_ids(deployment.database)) == sorted(ids)
    assert "records lost; delivery goes on" in server.output()


def test_a_flipped_byte_in_the_active_segment_while_serving(tmp_path: Path) -> None:
    """The live variant: the writer meets the bad frame in the segment being written and
    goes on past it, counting the one record."""
    deployment = Deployment(tmp_path)
    spool = tmp_path / "spool"
    server = _serve(deployment, spool)
    try:
        writer = writer_pid(server)
        assert writer is not None
        os.kill(writer, signal.SIGSTOP)
        _post_all(server, 200)
        _flip_middle(spool)
        os.kill(writer, signal.SIGCONT)
        _wait_stored(deployment, 199)
        _post_all(server, 50)  # and what comes after is delivered too
        _wait_stored(deployment, 249)
        _until(lambda: _metric(server, 'komm_decision_log_backlog_records{sink="jsonl"}')
               == 0)
        assert _metric(server, "komm_decision_log_spool_lost_records_total") == 1
        _until(lambda: json.loads((spool / "state.json").read_text())
               .get("corruption", {}).get("records"))
        state = json.loads((spool / "state.json").read_text())
        assert state["corruption"]["records"] == 1
    finally:
        server.stop()
    ids = jsonl_ids(deployment.log_file)
    assert len(ids) == len(set(ids)) == 249
    assert sorted(store_ids(deployment.database)) == sorted(ids)
