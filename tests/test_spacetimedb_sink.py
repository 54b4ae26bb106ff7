"""The SpacetimeDB reducer sink against the double on loopback (real HTTP, real spool).

In-process writer: batching and both argument shapes, retries on 5xx/402/connection
errors, a 530 isolating the one refused record into the dead-letter file, replays kept
idempotent by record ids, too many refusals blocking instead of dead-lettering.
Real `komm-policy serve` processes: a SpacetimeDB outage of a few seconds under 16
connections (every record arrives once, in spool order, when it comes back), and a 404
(wrong reducer) keeping everything and saying why on /readyz until it is fixed.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from komm_policy.decisionlog import ReducerSpec, SinkBlocked, SpooledRecord
from komm_policy.decisionlog.spacetimedb_sink import ReducerSink
from komm_policy.decisionlog.spool import SpoolAppender
from komm_policy.decisionlog.writer import SpoolWriter

from .serverproc import Deployment, ServerProcess
from .spacetimedb_double import DoubleServer
from .test_spool import entries


def log_spec() -> dict[str, Any]:
    """A module with the README's example reducers (batch and one-record forms)."""
    return {"databases": {"komm": {
        "types": {"DecisionRecord": {"struct": {"id": "String", "record": "String"}}},
        "reducers": {"log_decisions": [["records", "Array<Ref:DecisionRecord>"]],
                     "log_decision": [["id", "String"], ["record", "String"]]},
        "tables": {}}}}


@pytest.fixture
def double() -> Iterator[DoubleServer]:
    with DoubleServer(log_spec()) as server:
        yield server


@pytest.fixture
def writers() -> Iterator[Any]:
    """Makes `SpoolWriter`s and closes them (their HTTP clients) after the test."""
    made: list[SpoolWriter] = []

    def make(directory: Path, specs: list[Any]) -> SpoolWriter:
        made.append(SpoolWriter(directory, specs))
        return made[-1]

    yield make
    for writer in made:
        writer.close()


def db(server: DoubleServer) -> Any:
    return server.state.databases["komm"]


def url(server: DoubleServer) -> str:
    return f"spacetimedb://127.0.0.1:{server.port}/komm"


def spooled(directory: Path, count: int) -> list[str]:
    """Append `count` entries; their record ids in spool order."""
    spool = SpoolAppender(directory, fsync_interval=0)
    for entry in entries(count):
        spool.append(entry)
    spool.close()
    writer = SpoolWriter(directory, [])
    got, _ = writer.reader.read(None, count + 1)
    return [r.id for r in writer._records(got)]


def run(writer: SpoolWriter, limit: float = 10.0) -> None:
    """Step the writer (forcing past backoffs) until it has nothing left and no sink is
    failing."""
    deadline = time.monotonic() + limit
    while writer.step(force=True) or any(s.failures for s in writer.states):
        assert time.monotonic() < deadline, writer.status()["sinks"]


def called_ids(server: DoubleServer, status: int = 200) -> list[list[str]]:
    out = []
    for call in db(server).calls:
        if call["status"] != status:
            continue
        args = json.loads(call["body"])
        out.append([args[0]] if call["reducer"] == "log_decision"
                   else [r["id"] for r in args[0]])
    return out


def test_batches_of_the_configured_size_in_spool_order(tmp_path: Path, writers: Any,
                                                       double: DoubleServer) -> None:
    ids = spooled(tmp_path / "spool", 250)
    spec = ReducerSpec(url=url(double), batch=100, dead_letter=str(tmp_path / "dead.jsonl"))
    writer = writers(tmp_path / "spool", [spec])
    run(writer)
    assert [len(c) for c in called_ids(double)] == [100, 100, 50]
    assert list(db(double).logged) == ids
    call = db(double).calls[0]
    records = json.loads(call["body"])[0]
    assert json.loads(records[0]["record"])["id"] == ids[0]  # the record's JSON, as text
    assert writer.states[0].position is not None and writer.states[0].position.seq == 250


def test_one_record_per_call(tmp_path: Path, writers: Any, double: DoubleServer) -> None:
    ids = spooled(tmp_path / "spool", 5)
    spec = ReducerSpec(url=url(double), reducer="log_decision", args="record",
                       dead_letter=str(tmp_path / "dead.jsonl"))
    run(writers(tmp_path / "spool", [spec]))
    assert called_ids(double) == [[i] for i in ids]
    assert list(db(double).logged) == ids


@pytest.mark.parametrize(("status", "text"), [(503, "Service Unavailable"),
                                              (500, "Internal Server Error"),
                                              (402, "Module energy budget exhausted.")])
def test_retryable_answers_keep_the_records_and_retry(
        tmp_path: Path, writers: Any, double: DoubleServer, status: int, text: str) -> None:
    ids = spooled(tmp_path / "spool", 30)
    spec = ReducerSpec(url=url(double), batch=10, dead_letter=str(tmp_path / "dead.jsonl"))
    double.control().faults(http_status=status, http_text=text, http_count=2)
    writer = writers(tmp_path / "spool", [spec])
    assert not writer.step(force=True)  # first call refused: nothing moves
    state = writer.states[0]
    assert state.position is None and state.failures == 1 and state.blocked is None
    assert str(status) in (state.last_error or "")
    assert db(double).logged == {}
    run(writer)
    assert list(db(double).logged) == ids
    assert not (tmp_path / "dead.jsonl").exists()


def test_connection_refused_is_retried(tmp_path: Path, writers: Any) -> None:
    ids = spooled(tmp_path / "spool", 12)
    server = DoubleServer(log_spec())
    spec = ReducerSpec(url=url(server), batch=5, dead_letter=str(tmp_path / "dead.jsonl"),
                       timeout=2)
    writer = writers(tmp_path / "spool", [spec])
    assert not writer.step(force=True)
    assert writer.states[0].failures == 1 and writer.states[0].position is None
    with server:
        run(writer)
        assert list(db(server).logged) == ids


def test_530_isolates_the_one_refused_record(tmp_path: Path, writers: Any,
                                            double: DoubleServer) -> None:
    ids = spooled(tmp_path / "spool", 64)
    bad = ids[37]
    dead = tmp_path / "dead.jsonl"
    double.control().faults(reducer_fail_match=bad,
                            reducer_fail_text="record too large for the log table")
    spec = ReducerSpec(url=url(double), batch=64, dead_letter=str(dead))
    writer = writers(tmp_path / "spool", [spec])
    run(writer)
    assert list(db(double).logged) == [i for i in ids if i != bad]
    letters = [json.loads(line) for line in dead.read_text().splitlines()]
    assert len(letters) == 1
    assert letters[0]["id"] == bad and letters[0]["status"] == 530
    assert letters[0]["error"] == "record too large for the log table"
    assert letters[0]["record"]["id"] == bad  # the whole record, as JSON
    assert writer.status()["sinks"]["spacetimedb"]["counters"]["dead_letters"] == 1
    refused = [c for c in db(double).calls if c["status"] == 530]
    assert 1 < len(refused) <= 7  # bisection: one refusal per halving of 64
    assert writer.states[0].position is not None and writer.states[0].position.seq == 64

    # A replay of everything (positions lost) doubles nothing: the reducer keeps one row
    # per id, and the dead letter is not written again.
    (tmp_path / "spool" / "state.json").unlink()
    replay = writers(tmp_path / "spool", [spec])
    run(replay)
    assert list(db(double).logged) == [i for i in ids if i != bad]
    assert len(dead.read_text().splitlines()) == 1
    assert bad not in [i for c in called_ids(double)[-2:] for i in c]


def test_a_module_refusing_everything_blocks_instead_of_dead_lettering(
        tmp_path: Path, writers: Any, double: DoubleServer) -> None:
    spooled(tmp_path / "spool", 40)
    double.control().faults(reducer_fail_match='"id"', reducer_fail_text="table full")
    spec = ReducerSpec(url=url(double), batch=40, dead_letter=str(tmp_path / "dead.jsonl"),
                       max_dead_letters=5)
    writer = writers(tmp_path / "spool", [spec])
    assert not writer.step(force=True)
    state = writer.status()["sinks"]["spacetimedb"]
    assert state["blocked"] and "table full" in state["blocked"]
    assert writer.states[0].position is None
    assert not (tmp_path / "dead.jsonl").exists()


@pytest.mark.parametrize(("reducer", "expected"), [
    ("log_decisionz", "404: No such procedure"),
    ("log_decision", "400: invalid arguments for reducer log_decision"),  # wrong shape
])
def test_configuration_errors_block_and_keep_everything(
        tmp_path: Path, writers: Any, double: DoubleServer, reducer: str, expected: str) -> None:
    spooled(tmp_path / "spool", 20)
    spec = ReducerSpec(url=url(double), reducer=reducer,
                       dead_letter=str(tmp_path / "dead.jsonl"))
    writer = writers(tmp_path / "spool", [spec])
    assert not writer.step(force=True)
    sink = ReducerSink(spec)
    with pytest.raises(SinkBlocked, match=re.escape(expected)):
        sink.write([SpooledRecord(0, "x", 0.0, "", b'{"id":"x"}')])
    sink.close()
    assert expected in (writer.status()["sinks"]["spacetimedb"]["blocked"] or "")
    assert writer.states[0].position is None and db(double).logged == {}


# -- real service processes -------------------------------------------------------------

BODY = (Path(__file__).parent / "fixtures" / "stalwart" / "derived-rcpt-2.json").read_bytes()


def served(tmp_path: Path, double: DoubleServer, *args: str, **env: str) -> ServerProcess:
    deployment = Deployment(tmp_path)
    return ServerProcess(deployment, "--no-watch", "--log-level", "warning", *args,
                         KOMM_LOG_SPACETIMEDB=url(double),
                         KOMM_LOG_SPACETIMEDB_DEAD_LETTER=str(tmp_path / "dead.jsonl"),
                         KOMM_LOG_SPOOL=str(tmp_path / "spool"), **env)


def jsonl_ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_bytes().splitlines()]


def metric(text: str, name: str) -> float:
    match = re.search(rf'^{name}{{sink="spacetimedb"}} (\S+)$', text, re.M)
    assert match, name
    return float(match.group(1))


def wait_for(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_an_outage_under_load_loses_and_doubles_nothing(tmp_path: Path,
                                                        double: DoubleServer) -> None:
    """16 connections send 320 hooks for about 4 s; SpacetimeDB is away for 3 s in the
    middle.  Every answer is 200; afterwards the reducer's table holds every record once,
    in the spool's order (the JSONL sink's order)."""
    server = served(tmp_path, double).start()
    answers: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=10) as http:
            for _ in range(20):
                status = http.post(f"{server.url}/mta-hook", content=BODY,
                                   headers={"content-type": "application/json"}).status_code
                with lock:
                    answers.append(status)
                time.sleep(0.2)

    try:
        threads = [threading.Thread(target=client) for _ in range(16)]
        for t in threads:
            t.start()
        time.sleep(0.6)
        double.stop()
        time.sleep(1.5)
        during = httpx.get(f"{server.url}/metrics", timeout=5).text
        time.sleep(1.5)
        double.start()
        for t in threads:
            t.join(30)
        assert answers == [200] * 320
        assert metric(during, "komm_decision_log_backlog_records") > 0
        assert metric(during, "komm_decision_log_oldest_unwritten_seconds") > 0.5
        log_file = server.deployment.log_file
        wait_for(lambda: len(jsonl_ids(log_file)) == 320
                 and len(db(double).logged) == 320, 40)
        assert list(db(double).logged) == jsonl_ids(log_file)
        # Batches were sent whole or not at all: the 200 calls carried each record once.
        sent = [i for c in called_ids(double) for i in c]
        assert sent == jsonl_ids(log_file)
        after = httpx.get(f"{server.url}/metrics", timeout=5).text
        assert metric(after, "komm_decision_log_backlog_records") == 0
        assert metric(after, "komm_decision_log_sink_errors_total") > 0  # the outage was seen
        assert metric(after, "komm_decision_log_dead_letters_total") == 0
        assert metric(after, "komm_decision_log_sink_blocked") == 0
    finally:
        server.stop()


def test_a_404_keeps_everything_and_readyz_says_why(tmp_path: Path,
                                                    double: DoubleServer) -> None:
    server = served(tmp_path, double, KOMM_LOG_SPACETIMEDB_REDUCER="log_decisionz").start()
    try:
        for _ in range(20):
            assert server.post(BODY).status_code == 200

        def blocked() -> bool:
            return httpx.get(f"{server.url}/readyz", timeout=5).status_code == 503

        wait_for(blocked, 15)
        ready = httpx.get(f"{server.url}/readyz", timeout=5).json()
        assert "spacetimedb" in ready["reason"] and "No such procedure" in ready["reason"]
        assert "log_decisionz" in ready["reason"]
        metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
        assert metric(metrics, "komm_decision_log_sink_blocked") == 1
        assert metric(metrics, "komm_decision_log_backlog_records") == 20
        assert db(double).logged == {}
        # The operator deploys the reducer: everything kept arrives, /readyz recovers.
        db(double).reducers["log_decisionz"] = db(double).reducers["log_decisions"]
        wait_for(lambda: len(db(double).logged) == 20, 40)
        assert list(db(double).logged) == jsonl_ids(server.deployment.log_file)
        wait_for(lambda: httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200, 10)
    finally:
        server.stop()


def test_a_quiet_service_blocks_after_the_configured_refusals_and_loses_nothing(
        tmp_path: Path, double: DoubleServer) -> None:
    """A real `serve` with `--log-spacetimedb-max-dead-letters 3` whose module refuses
    every record, at low traffic (one request at a time, each record its own spool
    batch): the first 3 records are dead-lettered one by one, the 4th blocks the sink and
    /readyz says why; later records stay in the spool.  When the module is fixed, the
    kept records arrive: dead letters + reducer table = every decision, once."""
    double.control().faults(reducer_fail_match='"id"', reducer_fail_text="table full")
    server = served(tmp_path, double, "--log-spacetimedb-max-dead-letters", "3").start()
    dead = tmp_path / "dead.jsonl"

    def scrape(name: str) -> float | None:  # None: not reported yet (no write so far)
        text = httpx.get(f"{server.url}/metrics", timeout=5).text
        match = re.search(rf'^{name}{{sink="spacetimedb"}} (\S+)$', text, re.M)
        return float(match.group(1)) if match else None

    def readyz() -> httpx.Response:
        return httpx.get(f"{server.url}/readyz", timeout=5)

    try:
        for sent in range(1, 4):
            assert server.post(BODY).status_code == 200
            wait_for(lambda n=sent: scrape("komm_decision_log_dead_letters_total") == n, 15)
            assert scrape("komm_decision_log_refused_in_a_row") == sent
            assert readyz().status_code == 200
        assert server.post(BODY).status_code == 200
        wait_for(lambda: readyz().status_code == 503, 15)
        reason = readyz().json()["reason"]
        assert "spacetimedb" in reason and "refused 4 records in a row" in reason
        assert "max_dead_letters=3" in reason and "table full" in reason
        for _ in range(2):  # still quiet traffic, still blocked
            time.sleep(0.3)
            assert server.post(BODY).status_code == 200
        wait_for(lambda: len(jsonl_ids(server.deployment.log_file)) == 6, 15)
        wait_for(lambda: scrape("komm_decision_log_backlog_records") == 3, 15)
        assert readyz().status_code == 503
        assert scrape("komm_decision_log_sink_blocked") == 1
        assert scrape("komm_decision_log_dead_letters_total") == 3
        decided = jsonl_ids(server.deployment.log_file)
        assert jsonl_ids(dead) == decided[:3]
        assert db(double).logged == {}
        # The module is fixed: the kept records arrive in order, /readyz recovers.
        double.control().reset_faults()
        wait_for(lambda: len(db(double).logged) == 3, 40)
        assert list(db(double).logged) == decided[3:]
        wait_for(lambda: readyz().status_code == 200, 10)
        assert scrape("komm_decision_log_refused_in_a_row") == 0
        assert jsonl_ids(dead) == decided[:3]  # nothing more dead-lettered
    finally:
        server.stop()


# -- configuration ----------------------------------------------------------------------

def test_configuration_from_toml_with_a_token_file(tmp_path: Path) -> None:
    from komm_policy.config import load_config
    from komm_policy.hook.service import reducer_spec

    from .conftest import POLICIES

    (tmp_path / "token").write_text("log-token\n")
    toml = tmp_path / "komm.toml"
    toml.write_text(f'''[log]
spacetimedb = "spacetimedb+https://stdb.example:3000/komm"
spacetimedb_reducer = "log_decision"
spacetimedb_args = "record"
spacetimedb_batch = 7
spacetimedb_token_file = "{tmp_path / 'token'}"
spacetimedb_dead_letter = "{tmp_path / 'dead.jsonl'}"
spacetimedb_max_dead_letters = 0
''')
    config = load_config(toml, env={"KOMM_POLICIES": str(POLICIES),
                                    "KOMM_DIRECTORY": "memory:demo"})
    assert config.redacted()["log_spacetimedb_token"] == "(set)"
    spec = reducer_spec(config)
    assert (spec.url, spec.reducer, spec.args, spec.batch, spec.token) == (
        "spacetimedb+https://stdb.example:3000/komm", "log_decision", "record", 7,
        "log-token")
    assert spec.max_dead_letters == 0  # block at the first refusal
    assert reducer_spec(load_config(env={"KOMM_POLICIES": str(POLICIES),
                                         "KOMM_DIRECTORY": "memory:demo",
                                         "KOMM_LOG_SPACETIMEDB": spec.url})
                        ).max_dead_letters == 20  # the default
    assert "log-token" not in repr(spec)
    assert reducer_spec(config, worker="12").dead_letter.endswith("dead.12.jsonl")


def test_the_directory_token_goes_only_to_the_same_server(tmp_path: Path) -> None:
    from komm_policy.config import load_config
    from komm_policy.hook.service import reducer_spec

    from .conftest import POLICIES

    env = {"KOMM_POLICIES": str(POLICIES), "KOMM_SPACETIMEDB_TOKEN": "dir-token",
           "KOMM_DIRECTORY": "spacetimedb://127.0.0.1:3000/komm"}
    same = load_config(env={**env, "KOMM_LOG_SPACETIMEDB": "spacetimedb://127.0.0.1:3000/log"})
    assert reducer_spec(same).token == "dir-token"
    other = load_config(env={**env, "KOMM_LOG_SPACETIMEDB": "spacetimedb://10.0.0.9:3000/log"})
    assert reducer_spec(other).token == ""


def test_bad_sink_settings_are_reported_together() -> None:
    from komm_policy.config import ConfigError, load_config

    from .conftest import POLICIES

    with pytest.raises(ConfigError) as caught:
        load_config(env={"KOMM_POLICIES": str(POLICIES), "KOMM_DIRECTORY": "memory:demo",
                         "KOMM_LOG_SPACETIMEDB": "http://127.0.0.1:3000/komm",
                         "KOMM_LOG_SPACETIMEDB_ARGS": "all", "KOMM_LOG_SPACETIMEDB_BATCH": "0",
                         "KOMM_LOG_SPACETIMEDB_REDUCER": " ",
                         "KOMM_LOG_SPACETIMEDB_MAX_DEAD_LETTERS": "-1"})
    text = str(caught.value)
    for expected in ("KOMM_LOG_SPACETIMEDB: 'http://127.0.0.1:3000/komm': expected",
                     "KOMM_LOG_SPACETIMEDB_ARGS: 'all' is not batch or record",
                     "KOMM_LOG_SPACETIMEDB_BATCH: must be at least 1",
                     "KOMM_LOG_SPACETIMEDB_REDUCER: must not be empty",
                     "KOMM_LOG_SPACETIMEDB_MAX_DEAD_LETTERS: must not be negative"):
        assert expected in text


@pytest.mark.parametrize(("value", "expected"), [
    ("1000001", "'1000001' is too large (at most 1,000,000)"),
    ("2.5", "expected a whole number, got '2.5'"),
    ("inf", "expected a whole number, got 'inf'"),
    ("nan", "expected a whole number, got 'nan'")])
def test_max_dead_letters_is_a_bounded_whole_number_from_every_source(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        value: str, expected: str) -> None:
    from komm_policy.cli import main
    from komm_policy.config import ConfigError, load_config

    from .conftest import POLICIES

    env = {"KOMM_POLICIES": str(POLICIES), "KOMM_DIRECTORY": "memory:demo",
           "KOMM_LOG_SPACETIMEDB": "spacetimedb://127.0.0.1:3000/komm"}
    with pytest.raises(ConfigError, match=re.escape(
            f"KOMM_LOG_SPACETIMEDB_MAX_DEAD_LETTERS: {expected}")):
        load_config(env={**env, "KOMM_LOG_SPACETIMEDB_MAX_DEAD_LETTERS": value})
    toml = tmp_path / "komm.toml"
    toml.write_text(f"[log]\nspacetimedb_max_dead_letters = {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(toml, env=env)
    assert f"{toml} [log] spacetimedb_max_dead_letters: " in str(caught.value)
    for name, setting in env.items():
        monkeypatch.setenv(name, setting)
    monkeypatch.delenv("KOMM_CONFIG", raising=False)
    assert main(["serve", "--log-spacetimedb-max-dead-letters", value]) == 2
    err = capsys.readouterr().err
    assert "--log-spacetimedb-max-dead-letters" in err


def test_a_quiet_service_whose_module_refuses_everything_blocks_too(
        tmp_path: Path, writers: Any, double: DoubleServer) -> None:
    """One record per spool batch (a quiet service): the first `max_dead_letters`
    refusals are dead-lettered, the next one blocks the sink (records kept, /readyz's
    `blocked`) — the count is of refusals in a row, not per batch (the tester's finding:
    at low traffic everything was dead-lettered and the sink never blocked)."""
    from .test_spool import entries
    double.control().faults(reducer_fail_match='"id"', reducer_fail_text="table full")
    spec = ReducerSpec(url=url(double), dead_letter=str(tmp_path / "dead.jsonl"),
                       max_dead_letters=5)
    spool = SpoolAppender(tmp_path / "spool", fsync_interval=0)
    writer = writers(tmp_path / "spool", [spec])
    todo = entries(8)

    def sink() -> dict[str, Any]:
        return writer.status()["sinks"]["spacetimedb"]  # type: ignore[no-any-return]

    for entry in todo[:5]:
        spool.append(entry)
        writer.step(force=True)
        assert not sink()["blocked"]
    assert sink()["counters"]["dead_letters"] == 5
    assert sink()["counters"]["refused_in_a_row"] == 5
    spool.append(todo[5])
    assert not writer.step(force=True)
    assert "refused 6 records in a row" in (sink()["blocked"] or "")
    assert "table full" in sink()["blocked"]
    assert sink()["counters"]["dead_letters"] == 5  # the sixth stays in the spool
    assert writer.states[0].position is not None and writer.states[0].position.seq == 5
    writer.step(force=True)  # retried: refused again, still blocked
    assert sink()["blocked"] and sink()["counters"]["refused_in_a_row"] == 7
    assert sink()["counters"]["dead_letters"] == 5
    assert len((tmp_path / "dead.jsonl").read_text().splitlines()) == 5
    # the module is fixed: what was kept arrives, the run of refusals ends
    double.control().reset_faults()
    run(writer)
    assert not sink()["blocked"] and sink()["counters"]["refused_in_a_row"] == 0
    assert len(db(double).logged) == 1
    spool.close()
