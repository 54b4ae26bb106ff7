"""A spool removed under a running service (tester findings 4, 4b, 5), end to end: a
real `komm-policy serve`, its spool directory or segments removed while it serves or
while it is stopped.  Each test counts requests answered with their decision against
records stored (JSONL and `mta_log`); the target is 0 lost."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest

from komm_policy.decisionlog.spool import SpoolAppender, read_state, segment_name, segments
from komm_policy.decisionlog.spool_reader import SpoolReader
from komm_policy.decisionlog.writer import SpoolWriter

from .logstore import jsonl_ids, store_ids
from .serverproc import Deployment, ServerProcess
from .test_log_faults import Load
from .test_spool import FakeSink, entries


def _serve(deployment: Deployment, spool: Path) -> ServerProcess:
    return ServerProcess(deployment, "--no-watch", "--log-level", "warning",
                         KOMM_LOG_SPOOL=str(spool)).start()


def _send(server: ServerProcess, count: int) -> int:
    load = Load(server.url, count, threads=2).start()
    load.join()
    assert load.failed == 0 and load.tempfailed == 0, (load.failed, load.tempfailed)
    return load.decided


def _stored(deployment: Deployment) -> tuple[list[str], list[str]]:
    return _all_jsonl(deployment), store_ids(deployment.database)


def _all_jsonl(deployment: Deployment) -> list[str]:
    """The record ids in the JSONL file, or in every worker's (`decisions.PID.jsonl`)."""
    log_file = deployment.log_file
    files = [log_file, *sorted(log_file.parent.glob(f"{log_file.stem}.*{log_file.suffix}"))]
    return [i for path in files for i in jsonl_ids(path)]


def _wait_stored(deployment: Deployment, count: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while len(jsonl_ids(deployment.log_file)) < count:
        assert time.monotonic() < deadline, len(jsonl_ids(deployment.log_file))
        time.sleep(0.05)


def _wait(check, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _locked(path: Path) -> bool:
    """Whether a service holds the spool's lock (flock from here fails)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _assert_all_stored(deployment: Deployment, decided: int) -> None:
    jsonl, store = _stored(deployment)
    assert len(jsonl) == len(set(jsonl)) == decided, (len(jsonl), decided)
    assert sorted(store) == sorted(jsonl)


def test_spool_directory_removed_while_serving(tmp_path: Path) -> None:
    """`rm -rf spool` while serving: the service re-creates it, takes its lock again and
    starts a new segment; what the removed live segment held is written back, so every
    answered decision is stored (it used to append to the deleted file: 0 stored)."""
    deployment = Deployment(tmp_path)
    spool = tmp_path / "spool"
    server = _serve(deployment, spool)
    try:
        decided = _send(server, 100)
        _wait_stored(deployment, 50)  # the writer is somewhere in the live segment
        shutil.rmtree(spool)
        decided += _send(server, 150)
        _wait(lambda: (spool / "lock").exists() and bool(segments(spool)))
        assert _locked(spool / "lock")  # a second service cannot start on it
        decided += _send(server, 50)
        _wait_stored(deployment, decided)
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 200, ready.text
    finally:
        assert server.stop() in (0, -signal.SIGTERM)
    _assert_all_stored(deployment, decided)
    assert "removed" in server.output()


@pytest.mark.parametrize("workers", [1, 2])
def test_spool_directory_removed_then_sigterm(tmp_path: Path, workers: int) -> None:
    """Removed, more answers, then SIGTERM before any tick could notice: the shutdown
    (each worker's, with `--workers 2`) notices it and the records are stored all the
    same."""
    deployment = Deployment(tmp_path)
    spool = tmp_path / "spool"
    server = _serve(deployment, spool) if workers == 1 else _serve_workers(deployment, spool)
    try:
        decided = _send(server, 60 * workers)
        _remove(spool)
        decided += _send(server, 120 * workers)
    finally:
        assert server.stop() in (0, -signal.SIGTERM)
    _assert_all_stored(deployment, decided)
    assert "records lost" not in server.output()  # what the writers count (`SpoolReader`)


def test_spool_segments_removed_while_serving(tmp_path: Path) -> None:
    """`rm spool/*.seg` while serving (finding 4b): nothing was stored ever after."""
    deployment = Deployment(tmp_path)
    spool = tmp_path / "spool"
    server = _serve(deployment, spool)
    try:
        decided = _send(server, 100)
        _wait_stored(deployment, 100)
        for first in segments(spool):
            (spool / f"{first:020d}.seg").unlink()
        decided += _send(server, 100)
        _wait_stored(deployment, decided)
        decided += _send(server, 20)
        _wait_stored(deployment, decided)
    finally:
        assert server.stop() in (0, -signal.SIGTERM)
    _assert_all_stored(deployment, decided)


def test_restart_after_segments_removed_while_stopped(tmp_path: Path) -> None:
    """Finding 5: segments removed while stopped, state.json kept.  The new spool starts
    after the highest seq known (it used to restart at segment 0, whose first records the
    saved positions then skipped)."""
    deployment = Deployment(tmp_path)
    spool = tmp_path / "spool"
    server = _serve(deployment, spool)
    try:
        decided = _send(server, 100)
    finally:
        assert server.stop() in (0, -signal.SIGTERM)
    _assert_all_stored(deployment, decided)
    for first in segments(spool):
        (spool / f"{first:020d}.seg").unlink()
    server = _serve(deployment, spool)
    try:
        decided += _send(server, 30)
        _wait_stored(deployment, decided)
        decided += _send(server, 100)
        _wait_stored(deployment, decided)
        assert segments(spool)[0] >= 100  # numbers never go backwards
    finally:
        assert server.stop() in (0, -signal.SIGTERM)
    _assert_all_stored(deployment, decided)


def test_spool_that_cannot_be_recreated_is_a_spool_error(tmp_path: Path) -> None:
    """The spool's path taken by a file: answers are 451 (on_spool_error = tempfail) and
    /readyz 503 with the reason; once the path is free again, it is re-created."""
    deployment = Deployment(tmp_path)
    spool = tmp_path / "spool"
    server = _serve(deployment, spool)
    try:
        decided = _send(server, 40)
        _wait_stored(deployment, decided)
        shutil.rmtree(spool)
        spool.write_text("not a directory")

        def refused() -> bool:
            ready = httpx.get(f"{server.url}/readyz")
            return ready.status_code == 503 and "spool" in ready.text
        _wait(refused)
        load = Load(server.url, 20, threads=1).start()
        load.join()
        assert load.tempfailed == 20 and load.decided == 0
        spool.unlink()
        _wait(lambda: httpx.get(f"{server.url}/readyz").status_code == 200)
        decided += _send(server, 40)
        _wait_stored(deployment, decided)
    finally:
        assert server.stop() in (0, -signal.SIGTERM)
    _assert_all_stored(deployment, decided)


# -- in-process: the pieces (appender repair, numbering, positions not trusted) ----------


def _drain(writer: SpoolWriter) -> None:
    while writer.step():
        pass


def test_the_appender_writes_back_its_removed_live_segment(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool = SpoolAppender(spool_dir, fsync_interval=0)
    try:
        payloads = entries(5)
        for payload in payloads:
            spool.append(payload)
        assert spool.check() is None  # all well: nothing to do
        shutil.rmtree(spool_dir)
        spool.append(entries(1)[0])  # before the tick: goes to the removed file
        repaired = spool.check()
        assert repaired is not None and "re-created" in repaired and "6 records" in repaired
        assert _locked(spool_dir / "lock")
        spool.append(entries(1)[0])
        got, _ = SpoolReader(spool_dir).read(None, 100)
        assert [seq for seq, _ in got] == list(range(7))
        assert [payload for _, payload in got][:5] == payloads
    finally:
        spool.close()


def test_a_segment_opened_after_the_spool_was_removed_repairs_it_first(
        tmp_path: Path) -> None:
    """The first append of a worker that had none yet, or a roll to a new segment, after
    `rm -rf spool` and before the tick's `check`: the spool is repaired at once (the
    live segment written back), not the answer failed (451: `--workers`, found by
    the test above)."""
    spool_dir = tmp_path / "spool"
    spool = SpoolAppender(spool_dir, fsync_interval=0, segment_bytes=1)
    try:
        shutil.rmtree(spool_dir)
        assert spool.append(b"first") == 0  # no segment open yet
        assert _locked(spool_dir / "lock")
        shutil.rmtree(spool_dir)
        assert spool.append(b"second") == 1  # segment 0 is full: a roll
        assert spool.check() is None  # nothing left to repair
        got, _ = SpoolReader(spool_dir).read(None, 100)
        assert got == [(0, b"first"), (1, b"second")]
    finally:
        spool.close()


def test_a_spool_path_taken_by_a_file_fails_appends_until_it_is_free(
        tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool = SpoolAppender(spool_dir, fsync_interval=0)
    try:
        spool.append(b"a")
        shutil.rmtree(spool_dir)
        spool_dir.write_text("x")
        with pytest.raises(OSError):
            spool.check()
        with pytest.raises(OSError):
            spool.append(b"b")  # never into the removed file
        spool_dir.unlink()
        assert spool.check() is not None
        assert spool.append(b"c") == 1
        got, _ = SpoolReader(spool_dir).read(None, 100)
        assert got == [(0, b"a"), (1, b"c")]
    finally:
        spool.close()


def test_numbering_continues_after_the_saved_positions(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text(json.dumps(
        {"positions": {"a": [0, 48300, 100], "b": [0, 20000, 40]}}))
    spool = SpoolAppender(tmp_path, fsync_interval=0)
    assert spool.append(b"x") == 100
    spool.close()
    assert segments(tmp_path) == [100]


@pytest.mark.parametrize("saved", [
    [0, 48300, 100],  # beyond the segment's end
    [0, 0, 7],  # the frame there is seq 0
    [500, 0, 500],  # a segment after every one present
    [0, 0, -1],  # seq before its segment
])
def test_a_saved_position_that_does_not_fit_is_not_trusted(
        tmp_path: Path, saved: list[int], caplog: pytest.LogCaptureFixture) -> None:
    spool = SpoolAppender(tmp_path, fsync_interval=0)
    for payload in entries(10):
        spool.append(payload)
    spool.close()
    (tmp_path / "state.json").write_text(json.dumps({"positions": {"a": saved}}))
    sink = FakeSink("a")
    with caplog.at_level(logging.WARNING):
        _drain(SpoolWriter(tmp_path, [sink]))
    assert [r.seq for r in sink.records] == list(range(10))
    assert "does not fit the spool" in caplog.text


def test_a_segment_removed_before_it_was_read_is_counted_as_lost(tmp_path: Path) -> None:
    """A missing segment the writer did not remove itself held records no sink got:
    counted and logged as lost (it used to be skipped silently)."""
    spool = SpoolAppender(tmp_path, fsync_interval=0, segment_bytes=1)  # one per segment
    for payload in entries(7):
        spool.append(payload)
    spool.close()
    (tmp_path / "state.json").write_text(json.dumps({"positions": {"a": [4, 0, 4]}}))
    for first in range(5):
        (tmp_path / segment_name(first)).unlink()  # 4 never read
    sink = FakeSink("a")
    writer = SpoolWriter(tmp_path, [sink])
    _drain(writer)
    assert [r.seq for r in sink.records] == [5, 6]
    assert writer.reader.lost_records == 1


def test_segments_the_writer_removed_itself_are_not_counted(tmp_path: Path) -> None:
    spool = SpoolAppender(tmp_path, fsync_interval=0, segment_bytes=1)
    for payload in entries(4):
        spool.append(payload)
    sink = FakeSink("a")
    writer = SpoolWriter(tmp_path, [sink])
    _drain(writer)
    writer.maybe_retain(0.0)
    assert segments(tmp_path) == [3]
    for payload in entries(2):
        spool.append(payload)
    spool.close()
    _drain(writer)
    assert [r.seq for r in sink.records] == list(range(6))
    assert writer.reader.lost_records == 0


def test_a_removed_lock_is_taken_again(tmp_path: Path) -> None:
    """`rm spool/lock` alone: another service could start on the spool; the next check
    takes a new lock, so it cannot."""
    spool = SpoolAppender(tmp_path, fsync_interval=0)
    try:
        spool.append(b"a")
        (tmp_path / "lock").unlink()
        repaired = spool.check()
        assert repaired is not None and "lock" in repaired
        assert _locked(tmp_path / "lock")
        assert spool.check() is None
        assert spool.append(b"b") == 1
    finally:
        spool.close()


def _remove(spool: Path) -> None:
    """`rm -rf spool`, but atomic: a worker re-creating its directory meanwhile would
    make `rmtree` fail ("Directory not empty")."""
    gone = spool.with_name(spool.name + ".removed")
    spool.rename(gone)
    shutil.rmtree(gone)


def _serve_workers(deployment: Deployment, spool: Path) -> ServerProcess:
    """`serve --workers 2`, once both workers have their spool (`spool/worker-PID`)."""
    server = ServerProcess(deployment, "--no-watch", "--log-level", "warning",
                           "--workers", "2", KOMM_LOG_SPOOL=str(spool)).start()
    _wait(lambda: len(list(spool.glob("worker-*"))) == 2, 20)
    return server


def test_spool_directory_removed_while_serving_with_workers(tmp_path: Path) -> None:
    """`serve --workers 2`, `rm -rf spool` (every worker's `spool/worker-PID`) while they
    serve: each re-creates its own and every answered decision is stored, once."""
    deployment = Deployment(tmp_path)
    spool = tmp_path / "spool"
    server = _serve_workers(deployment, spool)
    try:
        decided = _send(server, 200)
        _wait(lambda: len(_all_jsonl(deployment)) >= 50, 15)
        _remove(spool)
        decided += _send(server, 200)
        _wait(lambda: len([w for w in spool.glob("worker-*") if segments(w)]) >= 1)
        decided += _send(server, 100)
        _wait(lambda: len(_all_jsonl(deployment)) >= decided, 20)
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 200, ready.text
    finally:
        assert server.stop() in (0, -signal.SIGTERM)
    _assert_all_stored(deployment, decided)
    assert "records lost" not in server.output()
    states = [read_state(w) for w in spool.glob("worker-*")]
    assert states and all(s.get("corruption", {}).get("records", 0) == 0 for s in states)

