"""`DecisionLog`, the service's side, with its real writer process, spool and sinks.

Records go to the spool before the answer; the writer process feeds the JSONL file and
`mta_log`.  Writers are SIGKILLed, stores locked by another process, spools made to fail;
every test counts records submitted against records stored.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from komm_policy.decisionlog import DecisionLog, JsonlSpec, LogSettings, SqliteSpec
from komm_policy.decisionlog.spool import MAX_ENTRY
from komm_policy.demo import DEMO_TABLES
from komm_policy.directory.sqlite import create_database
from komm_policy.wire import AddHeader

from .logstore import jsonl_ids, store_ids, store_locked
from .test_decisionlog import decided


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path, Path]:
    store = tmp_path / "komm.sqlite3"
    create_database(store, DEMO_TABLES)
    return tmp_path / "log" / "decisions.jsonl", store, tmp_path / "spool"


def open_log(paths: tuple[Path, Path, Path], **settings: object) -> DecisionLog:
    jsonl, store, spool = paths
    return DecisionLog([JsonlSpec(str(jsonl)), SqliteSpec(str(store))],
                       LogSettings(spool=str(spool), **settings))  # type: ignore[arg-type]


@pytest.fixture
def decision_log(paths: tuple[Path, Path, Path]) -> Iterator[DecisionLog]:
    log = open_log(paths)
    yield log
    log.close()


PAIRS = [decided(name) for name in ("derived-rcpt-2", "derived-connect-1",
                                    "derived-data-1", "derived-mail-1")]


def submit(log: DecisionLog, count: int) -> int:
    """Submit `count` decisions; returns how many were accepted for logging."""
    accepted = 0
    for n in range(count):
        request, decision = PAIRS[n % len(PAIRS)]
        accepted += log.submit_decision(request, decision, 0.3, time.time())
    return accepted


def assert_all_stored(paths: tuple[Path, Path, Path], expected: int) -> None:
    jsonl, store, _ = paths
    ids = jsonl_ids(jsonl)
    assert len(ids) == expected == len(set(ids))
    assert sorted(store_ids(store)) == sorted(ids)


def wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_submit_and_flush_write_both_sinks(paths: tuple[Path, Path, Path],
                                           decision_log: DecisionLog) -> None:
    assert submit(decision_log, 4) == 4
    assert decision_log.flush()
    assert_all_stored(paths, 4)
    records = [json.loads(line) for line in paths[0].read_bytes().splitlines()]
    assert [r["stage"] for r in records] == ["rcpt", "connect", "data", "mail"]
    status = decision_log.status()
    assert status.alive and status.backlog == {"jsonl": 0, "sqlite": 0}
    assert decision_log.problem(status) is None


def test_close_drains_everything(paths: tuple[Path, Path, Path]) -> None:
    log = open_log(paths)
    submit(log, 300)
    log.close()
    assert_all_stored(paths, 300)


def test_killed_writer_is_restarted_while_idle_and_resumes(
        paths: tuple[Path, Path, Path], decision_log: DecisionLog) -> None:
    submit(decision_log, 50)
    first = decision_log.writer_pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: decision_log.writer_pid not in (None, first)
             and decision_log.status().alive)  # no request needed
    assert decision_log.restarts == 1
    submit(decision_log, 50)
    assert decision_log.flush()
    assert_all_stored(paths, 100)


def test_five_writer_kills_under_submissions_lose_nothing(
        paths: tuple[Path, Path, Path], decision_log: DecisionLog) -> None:
    total = 0
    for _ in range(5):
        total += submit(decision_log, 60)
        time.sleep(0.05)
        victim = decision_log.writer_pid
        os.kill(victim, signal.SIGKILL)  # type: ignore[arg-type]
        total += submit(decision_log, 60)
        wait_for(lambda: decision_log.writer_pid != victim)  # noqa: B023
    assert decision_log.flush(timeout=30)
    assert decision_log.restarts >= 5
    assert_all_stored(paths, total)


def test_writer_killed_while_another_process_locks_the_store(
        paths: tuple[Path, Path, Path], decision_log: DecisionLog) -> None:
    jsonl, store, _ = paths
    with store_locked(store):
        submit(decision_log, 150)
        wait_for(lambda: decision_log.status().backlog["jsonl"] == 0)  # JSONL goes on
        assert len(jsonl_ids(jsonl)) == 150
        assert decision_log.status().backlog["sqlite"] == 150
        os.kill(decision_log.writer_pid, signal.SIGKILL)  # type: ignore[arg-type]
        submit(decision_log, 150)
    assert decision_log.flush(timeout=30)
    assert_all_stored(paths, 300)


def test_backlog_past_its_bound_makes_the_log_a_readiness_problem(
        tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    missing = tmp_path / "not-yet.sqlite3"
    log = DecisionLog([SqliteSpec(str(missing))],
                      LogSettings(spool=str(spool), max_backlog_records=20))
    try:
        submit(log, 30)
        status = log.status()
        assert status.backlog == {"sqlite": 30}
        problem = log.problem(status)
        assert problem is not None and "sqlite: 30 records behind" in problem
        create_database(missing, DEMO_TABLES)
        wait_for(lambda: log.status().backlog == {"sqlite": 0}, timeout=15)
        assert log.problem() is None
    finally:
        log.close()
    assert len(store_ids(missing)) == 30


def test_oldest_unwritten_age_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "not-yet.sqlite3"
    log = DecisionLog([SqliteSpec(str(missing))],
                      LogSettings(spool=str(tmp_path / "spool"), max_backlog_age=0.5))
    try:
        submit(log, 3)
        time.sleep(0.7)
        status = log.status()
        assert status.oldest_age["sqlite"] >= 0.6
        assert "oldest unwritten record" in (log.problem(status) or "")
    finally:
        log.close()


def _fail_spool(log: DecisionLog, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(payload: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(log._appender, "append", full)


def test_spool_error_tempfail(paths: tuple[Path, Path, Path],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    log = open_log(paths)
    try:
        assert submit(log, 10) == 10
        _fail_spool(log, monkeypatch)
        assert submit(log, 5) == 0  # each of these is answered 451 by the hook
        status = log.status()
        assert (status.spool_errors, status.tempfails, status.dropped) == (5, 5, 0)
        assert "spool cannot be written" in (log.problem(status) or "")
        monkeypatch.undo()
        assert submit(log, 10) == 10
        assert log.problem() is None
        assert log.flush()
    finally:
        log.close()
    assert_all_stored(paths, 20)


def test_spool_error_accept_holds_records_then_drops_counted(
        paths: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    log = open_log(paths, on_spool_error="accept", queue_max=8)
    try:
        _fail_spool(log, monkeypatch)
        assert submit(log, 10) == 10  # answered as decided
        status = log.status()
        assert (status.held, status.dropped, status.tempfails) == (8, 2, 0)
        monkeypatch.undo()
        assert submit(log, 1) == 1  # the held ones go first
        assert log.depth == 0
        assert log.flush()
    finally:
        log.close()
    assert_all_stored(paths, 9)


def test_age_samples_stay_bounded_without_scrapes(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from komm_policy.decisionlog import ages as ages_module

    monkeypatch.setattr(ages_module, "MAX_SAMPLES", 50)
    log = DecisionLog([JsonlSpec(str(tmp_path / "d.jsonl"))],
                      LogSettings(spool=str(tmp_path / "spool")))
    try:
        request, decision = PAIRS[0]
        at = time.time()
        for n in range(400):  # 20 ms apart: every one is a sample
            assert log.submit_decision(request, decision, 0.1, at + n * 0.02)
        assert len(log._ages.seqs) <= 51
        assert log._ages.seqs == sorted(log._ages.seqs)
    finally:
        log.close()
    assert len(jsonl_ids(tmp_path / "d.jsonl")) == 400


def stage(log: DecisionLog, count: int) -> int:
    accepted = 0
    for n in range(count):
        request, decision = PAIRS[n % len(PAIRS)]
        accepted += log.stage_decision(request, decision, 0.3, time.time())
    return accepted


def test_staged_decisions_are_spooled_by_one_write_at_commit(
        paths: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    log = open_log(paths)
    try:
        first = log.status().next_seq
        assert stage(log, 16) == 16
        assert log.status().next_seq == first  # nothing in the spool before the commit
        writes = []
        real_write = os.write

        def counted(fd: int, data: bytes) -> int:
            writes.append(fd)
            return real_write(fd, data)

        monkeypatch.setattr("komm_policy.decisionlog.spool.os.write", counted)
        assert log.commit()
        monkeypatch.undo()
        assert len(writes) == 1 and log.status().next_seq == first + 16
        assert log.commit()  # nothing staged: nothing to do
        assert submit(log, 2) == 2 and stage(log, 2) == 2 and log.commit()
        assert log.flush()
    finally:
        log.close()
    assert_all_stored(paths, 20)


def _fail_batches(log: DecisionLog, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(payloads: list[bytes]) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(log._appender, "append_batch", full)


def test_a_failed_commit_tempfails_every_staged_decision(
        paths: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    log = open_log(paths)
    try:
        _fail_batches(log, monkeypatch)
        assert stage(log, 6) == 6
        assert not log.commit()  # all six are answered 451 by the hook
        status = log.status()
        assert (status.spool_errors, status.tempfails, status.dropped) == (1, 6, 0)
        assert "spool cannot be written" in (log.problem(status) or "")
        monkeypatch.undo()
        assert stage(log, 3) == 3 and log.commit()  # the failed ones are not retried
        assert log.problem() is None
        assert log.flush()
    finally:
        log.close()
    assert_all_stored(paths, 3)


def test_a_failed_commit_under_accept_holds_the_staged_decisions(
        paths: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    log = open_log(paths, on_spool_error="accept", queue_max=4)
    try:
        _fail_batches(log, monkeypatch)
        assert stage(log, 6) == 6
        assert log.commit()  # answered as decided
        status = log.status()
        assert (status.held, status.dropped, status.tempfails) == (4, 2, 0)
        monkeypatch.undo()
        assert stage(log, 2) == 2 and log.commit()  # the held ones go first
        assert log.depth == 0
        assert log.flush()
    finally:
        log.close()
    assert_all_stored(paths, 6)


def test_an_unrecordable_decision_is_never_staged(paths: tuple[Path, Path, Path]) -> None:
    log = open_log(paths)
    request, decision = PAIRS[0]
    # (a log line is cut in the record now, `bounds`; a header value is not)
    huge = msgspec.structs.replace(
        decision, modifications=(AddHeader("X-Huge", "x" * (MAX_ENTRY + 1)),))
    try:
        first = log.status().next_seq
        assert not log.stage_decision(request, huge, 0.3, time.time())  # 451 at once
        assert log.commit() and log.status().next_seq == first
        assert log.unrecordable == 1
    finally:
        log.close()
