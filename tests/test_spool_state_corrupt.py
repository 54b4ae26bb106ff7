"""A corrupt spool `state.json` (a tester's finding): it read as empty without a word, so
every sink started again at the oldest segment, and the JSONL sink, which recognises only
the ids in its last 10 MiB (current and newest rotated file), wrote the older records a
second time.  Now the file is set aside (`state.json.corrupt-…`) with a warning naming it
and the parse error, counted in /metrics and noticed in /readyz, and each sink resumes
right after the newest record it holds (`recovery`).  Real writer processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from komm_policy.decisionlog import DecisionLog, JsonlSpec, LogSettings, SqliteSpec
from komm_policy.decisionlog.metrics import LogCollector
from komm_policy.decisionlog.recovery import KEEP_CORRUPT
from komm_policy.decisionlog.spool import load_state, read_state
from komm_policy.decisionlog.writer import SpoolWriter
from komm_policy.demo import DEMO_TABLES
from komm_policy.directory.sqlite import create_database

from .logstore import jsonl_ids, store_ids
from .test_decisionlog_process import submit
from .test_writer_saves import _fill

TORN = b'{"pid": 4711, "heartbeat": 1796138787.5, "positions": {"jsonl": [0, 4'


def _all_jsonl_ids(jsonl: Path) -> list[str]:
    """Every id in the JSONL file and its rotated files, oldest file first."""
    rotated = sorted(jsonl.parent.glob(f"{jsonl.name}.*"),
                     key=lambda p: -int(p.name.rsplit(".", 1)[1]))
    return [i for path in [*rotated, jsonl] for i in jsonl_ids(path)]


def _open(tmp_path: Path) -> DecisionLog:
    # Small rotated files: the JSONL sink's window of known ids (the current file and the
    # newest rotated one) holds a fraction of what the spool still has.
    return DecisionLog([JsonlSpec(str(tmp_path / "decisions.jsonl"), max_bytes=50_000,
                                  backups=100), SqliteSpec(str(tmp_path / "komm.sqlite3"))],
                       LogSettings(spool=str(tmp_path / "spool")))


def test_a_corrupt_state_is_set_aside_said_and_no_record_is_stored_twice(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    create_database(tmp_path / "komm.sqlite3", DEMO_TABLES)
    spool = tmp_path / "spool"
    decision_log = _open(tmp_path)
    try:
        for _ in range(12):  # batches of 50: the file rotates between them
            assert submit(decision_log, 50) == 50
            assert decision_log.flush(timeout=60)
    finally:
        decision_log.close()
    jsonl = tmp_path / "decisions.jsonl"
    assert len(set(_all_jsonl_ids(jsonl))) == 600
    assert len(list(tmp_path.glob("decisions.jsonl.*"))) >= 5  # the window is small
    (spool / "state.json").write_bytes(TORN)  # a torn write, as a bad disk leaves it
    capfd.readouterr()

    decision_log = _open(tmp_path)
    try:
        assert submit(decision_log, 50) == 50
        assert decision_log.flush(timeout=60)
        status = decision_log.status()
        metrics = {m.name: m for m in LogCollector(decision_log).collect()}
    finally:
        decision_log.close()

    ids = _all_jsonl_ids(jsonl)
    assert len(ids) == 650 == len(set(ids)), f"{len(ids) - len(set(ids))} stored twice"
    stored = store_ids(tmp_path / "komm.sqlite3")
    assert len(stored) == 650 and sorted(stored) == sorted(ids)
    [kept] = spool.glob("state.json.corrupt-*")
    assert kept.read_bytes() == TORN  # kept as it was, for the operator
    state, problem = load_state(spool)
    assert problem is None and state["state_recovered"]["kept"] == kept.name
    err = capfd.readouterr().err
    assert f"decision log: {spool / 'state.json'} is not JSON: Expecting" in err, err
    assert f"set aside as {kept.name}" in err
    assert "decision log sink jsonl resumes after spool entry 599" in err
    assert "decision log sink sqlite starts again at the oldest segment" in err
    # /metrics and /readyz say it
    assert status.state_recoveries == 1
    assert status.spool_corruption is not None
    assert "state.json is not JSON" in status.spool_corruption
    assert kept.name in status.spool_corruption
    assert metrics["komm_decision_log_state_set_aside"].samples[0].value == 1


@pytest.mark.parametrize(("content", "problem"), [
    (TORN, "is not JSON: Expecting"),
    (b"\xff\xfe{}", "is not JSON: "),
    (b"null", "is not a JSON object with a `positions` object"),
    (b'{"positions": [1, 2, 3]}', "is not a JSON object with a `positions` object"),
])
def test_every_kind_of_corruption_is_named(tmp_path: Path, content: bytes,
                                           problem: str) -> None:
    (tmp_path / "state.json").write_bytes(content)
    state, found = load_state(tmp_path)
    assert state == {} and read_state(tmp_path) == {}
    assert found is not None and found.startswith(problem), found
    (tmp_path / "state.json").unlink()
    assert load_state(tmp_path) == ({}, None)  # absent: a new spool, nothing to say


def test_a_sink_holding_none_of_the_spool_starts_at_its_oldest_segment(
        tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    _fill(spool, 30)
    (spool / "state.json").write_bytes(b"{")
    jsonl = tmp_path / "decisions.jsonl"
    jsonl.write_text(json.dumps({"id": "from-another-spool"}) + "\n")
    writer = SpoolWriter(spool, [JsonlSpec(str(jsonl))])
    try:
        while writer.step():
            pass
        writer.save()
    finally:
        writer.close()
    assert jsonl_ids(jsonl) == ["from-another-spool", *[f"r-{n}" for n in range(30)]]
    assert len(list(spool.glob("state.json.corrupt-*"))) == 1


def test_the_corrupt_files_kept_are_bounded(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    _fill(spool, 3)
    for _ in range(KEEP_CORRUPT + 3):
        (spool / "state.json").write_bytes(b"[")
        SpoolWriter(spool, [JsonlSpec(str(tmp_path / "d.jsonl"))]).close()
    assert len(list(spool.glob("state.json.corrupt-*"))) == KEEP_CORRUPT
