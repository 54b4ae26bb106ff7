"""Service rough edges found by the breaker, each reproduced with a real `serve` process.

- `/readyz` gives the current, specific reason the directory cannot be served (which table
  is missing, which error), and a changed reason is logged at once (only repeats of one
  reason are rate-limited); "recovered" follows.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from komm_policy.demo import DEMO_TABLES
from komm_policy.directory import tablestate
from komm_policy.directory.health import ReplicaHealth
from komm_policy.directory.schema import parse_schema
from komm_policy.directory.snapshot import IndexSpec, Needs
from komm_policy.directory.sqlite import SqliteDirectory, create_database

from .serverproc import Deployment, ServerProcess
from .spacetimedb_double import DoubleServer
from .test_tables_snapshot import _full_state, _ops, _view, build

OPERATOR_SCHEMA = """
[tables.blocked_domains]
columns.domain = { type = "address" }
columns.reason = { type = "text", optional = true }
"""
OPERATOR_RULE = """
stage mail {
    rule blocked_sender_domain:
        when exists("blocked_domains", domain = domain(sender))
        reject 550 5.7.1 "Mail from {domain(sender)} is not accepted"
        on error tempfail 451 4.3.0 "Directory unavailable"
}
"""


def with_operator_table(root: Path) -> Deployment:
    """The shipped deployment plus the README's operator table `blocked_domains`."""
    d = Deployment(root)
    conn = sqlite3.connect(d.database)
    with conn:
        conn.execute("CREATE TABLE blocked_domains (domain TEXT NOT NULL, reason TEXT)")
        conn.execute("INSERT INTO blocked_domains VALUES ('spam.example', 'spam run')")
    conn.close()
    with (d.policies / "schema.toml").open("a") as f:
        f.write(OPERATOR_SCHEMA)
    (d.policies / "25-operator.policy").write_text(OPERATOR_RULE)
    return d


def wait_for(predicate, timeout: float = 10.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"not reached within {timeout}s")


def remove_store(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        p = path.with_name(path.name + suffix)
        if p.exists():
            os.unlink(p)


def test_a_sqlite_store_lacking_a_table_at_start_is_refused_naming_it(tmp_path: Path
                                                                      ) -> None:
    """Unlike SpacetimeDB's module (README "Schema check"), the service's own SQLite file
    lacking a table the policies read at start is refused: exit 2 naming the table and
    the store (the difference the README gives), not a process serving 451s."""
    d = Deployment(tmp_path)
    conn = sqlite3.connect(d.database)
    with conn:
        conn.execute("DROP TABLE blocked_ips")
    conn.close()
    result = subprocess.run(
        [sys.executable, "-m", "komm_policy", "serve", "--port", "0", "--policies",
         str(d.policies), "--directory", f"sqlite:{d.database}", "--no-watch"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"{d.database}: no table 'blocked_ips'" in result.stderr


def test_readyz_names_the_missing_table_of_a_recreated_store_and_logs_each_new_reason(
        tmp_path: Path) -> None:
    d = with_operator_table(tmp_path)
    env = {"KOMM_REFRESH_INTERVAL": "0.1", "KOMM_MAX_STALENESS": "1"}
    with ServerProcess(d, "--no-watch", **env) as server:
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        remove_store(d.database)
        # the first reason: the file is gone (logged at once)
        wait_for(lambda: "FileNotFoundError" in server.output())
        create_database(d.database)  # `db init`: the origin's tables, not the operator's

        def reason() -> str | None:
            r = httpx.get(f"{server.url}/readyz")
            text = r.json().get("reason", "")
            return text if r.status_code == 503 and "blocked_domains" in text else None
        text = wait_for(reason)
        assert "no table 'blocked_domains'" in text, text
        assert str(d.database) in text
        # a new reason is logged at once, not after the rate limiter's minute
        wait_for(lambda: "no table 'blocked_domains'" in server.output(), timeout=3)
        # and recovery follows when the table is back
        conn = sqlite3.connect(d.database)
        with conn:
            conn.execute("CREATE TABLE blocked_domains (domain TEXT NOT NULL, reason TEXT)")
            conn.execute("INSERT INTO blocked_domains VALUES ('spam.example', 'spam run')")
        conn.close()
        wait_for(lambda: httpx.get(f"{server.url}/readyz").status_code == 200)
        assert "recovered" in server.output()
        answer = server.post('{"context": {"stage": "mail", "client": {"ip": "192.0.2.1"}}, '
                             '"envelope": '
                             '{"from": {"address": "a@spam.example"}, "to": []}}')
        assert answer.status_code == 200, answer.text
        assert answer.json()["action"] == "reject", answer.text
        # the new file got its change capture (no whole-table reloads from now on)
        assert "cannot install change capture" not in server.output()
        conn = sqlite3.connect(d.database)
        assert conn.execute("SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' "
                            "AND name LIKE 'komm_cap_blocked_domains_%'").fetchone()[0] == 3
        conn.close()


def test_a_reload_refused_for_a_missing_table_names_it_and_is_retried(tmp_path: Path) -> None:
    """The README's `blocked_domains` rule and schema entry added before the table: the
    reload is refused, /readyz says the store lacks a table (naming it), not that the
    files do not compile; once the table is made, the waiting set goes live by itself,
    without a SIGHUP or a file change."""
    d = Deployment(tmp_path)
    with ServerProcess(d, "--no-watch") as server:
        first = httpx.get(f"{server.url}/readyz").json()["policy_version"]
        with (d.policies / "schema.toml").open("a") as f:
            f.write(OPERATOR_SCHEMA)
        (d.policies / "25-operator.policy").write_text(OPERATOR_RULE)
        server.signal(signal.SIGHUP)

        def degraded() -> dict[str, Any] | None:
            body = httpx.get(f"{server.url}/readyz").json()
            return body if body["status"] == "degraded" else None
        body = wait_for(degraded)
        assert body["policy_version"] == first
        assert "do not compile" not in body["reason"]
        assert "lacks" in body["reason"], body
        assert "no table 'blocked_domains'" in body["diagnostic"], body
        conn = sqlite3.connect(d.database)
        with conn:
            conn.execute("CREATE TABLE blocked_domains (domain TEXT NOT NULL, reason TEXT)")
            conn.execute("INSERT INTO blocked_domains VALUES ('spam.example', 'spam run')")
        conn.close()
        body = wait_for(lambda: (b := httpx.get(f"{server.url}/readyz").json())["status"]
                        == "ok" and b, timeout=15)
        assert body["policy_version"] != first
        assert server.output().count("policy reload waits for the directory") == 1
        answer = server.post('{"context": {"stage": "mail", "client": {"ip": "192.0.2.1"}}, '
                             '"envelope": {"from": {"address": "a@spam.example"}, "to": []}}')
        assert answer.json()["action"] == "reject", answer.text


def test_health_logs_a_changed_reason_at_once_and_rate_limits_only_repeats(caplog) -> None:
    now = [100.0]
    health = ReplicaHealth(logging.getLogger("test.health"), "store", lambda: now[0],
                           log_every=60.0)
    with caplog.at_level(logging.WARNING, "test.health"):
        health.failed("FileNotFoundError: gone", expected=True)
        for _ in range(3):
            now[0] += 1
            health.failed("FileNotFoundError: gone", expected=True)
        now[0] += 1
        health.failed("DirectoryError: no table 'blocked_domains'", expected=True)
        now[0] += 1
        health.failed("DirectoryError: no table 'blocked_domains'", expected=True)
        # a varying detail (the retry delay) is not a new reason
        health.failed("refused; reconnecting in 1.2s", expected=True, reason="refused")
        health.failed("refused; reconnecting in 2.9s", expected=True, reason="refused")
        now[0] += 61
        health.failed("refused; reconnecting in 9.0s", expected=True, reason="refused")
        health.ok()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "directory store unavailable: FileNotFoundError: gone",
        "directory store unavailable: DirectoryError: no table 'blocked_domains' "
        "(3 lines of the previous reason suppressed)",
        "directory store unavailable: refused; reconnecting in 1.2s "
        "(1 lines of the previous reason suppressed)",
        "directory store unavailable: refused; reconnecting in 9.0s "
        "(1 similar lines suppressed)",
        "directory store recovered after 66.0s",
    ]
    assert health.refresh_errors == 9


def test_a_store_recreated_on_the_same_inode_is_read_as_a_new_store(tmp_path: Path) -> None:
    """Removed and re-created between two polls: once our connection to the removed file
    is closed, the new file may get the same inode; it is still a new store."""
    d = with_operator_table(tmp_path)
    schema = parse_schema({"tables": {"blocked_domains": {"columns": {
        "domain": {"type": "address"}, "reason": {"type": "text", "optional": True}}}}})
    directory = SqliteDirectory(d.database, start=False, max_staleness=0.0)
    directory.require(schema, Needs({IndexSpec("blocked_domains", ("domain",))}))
    assert directory.available
    remove_store(d.database)
    directory.refresh()  # the file is gone: the connection to it is closed
    create_database(d.database, DEMO_TABLES)  # as many changes logged as the old store
    directory.refresh()
    assert not directory.available
    assert "no table 'blocked_domains'" in directory.unavailable_reason
    directory.close()


CLIENT = '"client": {"ip": "192.0.2.1", "port": 4711, "helo": "mx.example"}'


def test_stage_required_envelope_fields_are_400_naming_the_field(tmp_path: Path) -> None:
    """Stalwart always sends the envelope from MAIL FROM on, at `rcpt` with the recipient
    being added last in `to`: a body without them is refused (400 naming the field),
    never judged on a made-up value (an empty `to` read as `rcpt == ""`, the bare
    <Postmaster> every server accepts)."""
    d = Deployment(tmp_path)
    refused = {
        "rcpt": ('{"from": {"address": "a@example.org"}, "to": []}', "$.envelope.to"),
        "data": ('{"from": {"address": "a@example.org"}, "to": []}', "$.envelope.to"),
        "mail": ('{"to": []}', "$.envelope.from"),
    }
    with ServerProcess(d, "--no-watch") as server:
        for stage, (envelope, path) in refused.items():
            body = f'{{"context": {{"stage": "{stage}", {CLIENT}}}, "envelope": {envelope}}}'
            answer = server.post(body)
            assert answer.status_code == 400, (stage, answer.text)
            assert answer.json()["path"] == path, answer.text
        for stage in ("mail", "rcpt", "data"):
            answer = server.post(f'{{"context": {{"stage": "{stage}", {CLIENT}}}}}')
            assert answer.status_code == 400, (stage, answer.text)
            assert answer.json()["path"] == "$.envelope", answer.text
        # what Stalwart sends is answered: the null sender at mail, one recipient at rcpt
        ok = {"mail": '{"from": {"address": ""}, "to": []}',
              "rcpt": '{"from": {"address": ""}, "to": [{"address": "postmaster"}]}'}
        for stage, envelope in ok.items():
            body = f'{{"context": {{"stage": "{stage}", {CLIENT}}}, "envelope": {envelope}}}'
            answer = server.post(body)
            assert answer.status_code == 200, (stage, answer.text)
            assert answer.json()["action"] == "accept"
        # the seed's minimal connect request stays valid
        assert server.post('{"context":{"stage":"connect","client":{"ip":"127.0.0.1",'
                           '"helo":"test.example.com"}}}').json() == {"action": "accept"}


def test_records_name_looked_up_rows_by_identity_and_replay_them(
        tmp_path: Path, stalwart_fixtures: dict[str, bytes]) -> None:
    """Record version 2: a row a lookup found is its primary key, never its other columns
    (names, identities, sync times of accounts went into every record before); the log
    still replays with no change."""
    d = Deployment(tmp_path)
    server = ServerProcess(d, "--no-watch").start()
    for name in sorted(stalwart_fixtures):
        assert server.post(stalwart_fixtures[name]).status_code == 200
    server.stop()
    lines = d.log_file.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == len(stalwart_fixtures)  # every one recorded (none 451)
    assert {r["record_version"] for r in records} == {2}
    results = []
    for r in records:
        for lookup in r.get("lookups", ()):
            result = lookup["result"]
            results.extend(result if isinstance(result, list) else [result])
    rows = [x for x in results if isinstance(x, dict)]
    assert rows, "the fixtures make lookups that find rows"
    assert all(set(row) == {"id"} for row in rows), rows  # the tables' primary keys
    # no column beyond the key of any demo row reaches the log
    for table in ("account", "message_categories"):
        for row in DEMO_TABLES[table]:
            assert f'"{row["name"]}"' not in "\n".join(lines), (table, row["name"])
    report = subprocess.run(
        [sys.executable, "-m", "komm_policy", "replay", str(d.log_file), "--policies",
         str(d.policies), "--directory", f"sqlite:{d.database}", "--format", "json"],
        capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stderr
    summary = json.loads(report.stdout)
    assert summary["replayed"] == sum(r["stage"] != "data" for r in records) > 0
    assert summary["changed"] == 0, summary


@settings(max_examples=150, deadline=None)
@given(_ops, st.integers(0, 25))
def test_a_large_change_rebuilt_in_one_pass_equals_row_by_row_and_a_full_build(
        ops: list[tuple[Any, ...]], split: int) -> None:
    """All operations after `split` as one change set: applied with the tables' indexes
    rebuilt in one pass (the bulk path) and row by row, both equal a build from scratch."""
    start = _full_state(ops[:split])
    snap = build({name: list(rows.values()) for name, rows in start.items()})
    final = _full_state(ops)
    changes = {}
    for name in ("account_emails", "blocked"):
        old, new = start[name], final[name]
        changes[name] = ([old[k] for k in old if k not in new or new[k] != old[k]],
                         [new[k] for k in new if k not in old or old[k] != new[k]])
    full = _view(build({name: list(rows.values()) for name, rows in final.items()}))
    assert _view(snap.apply(changes, bulk=True)) == full
    assert _view(snap.apply(changes, bulk=False)) == full
    assert _view(snap.apply(changes)) == full


def test_the_size_of_a_change_picks_the_bulk_path(monkeypatch) -> None:
    calls = []
    original = tablestate.rebuild_table

    def counting(*args: Any) -> Any:
        calls.append(len(args[2]))
        return original(*args)
    monkeypatch.setattr(tablestate, "rebuild_table", counting)
    rows = [{"ip": f"10.0.{i >> 8}.{i & 255}", "reason": "r"} for i in range(2000)]
    snap = build({"blocked": rows[:1000]})
    snap = snap.apply({"blocked": ([], rows[1000:1001])})  # 1 row: row by row
    assert calls == []
    snap = snap.apply({"blocked": ([], rows[1001:])})  # 999 rows into 1,001: one pass
    assert calls == [999]
    assert snap.counts()["blocked"] == 2000


def test_a_change_log_pruned_before_the_first_read_reloads_whole(tmp_path: Path) -> None:
    """More changes than the log keeps, into a store whose log was empty: the entries
    before the kept ones are gone, so the replica must reload (it used to apply only the
    kept entries: an import of more than 100k rows lost its first rows)."""
    d = with_operator_table(tmp_path)
    schema = parse_schema({"tables": {"blocked_domains": {"columns": {
        "domain": {"type": "address"}, "reason": {"type": "text", "optional": True}}}}})
    conn = sqlite3.connect(d.database)
    with conn:
        conn.execute("DELETE FROM komm_changes")
    directory = SqliteDirectory(d.database, start=False)
    directory.require(schema, Needs({IndexSpec("blocked_domains", ("domain",))}))
    with conn:
        conn.execute("INSERT INTO blocked_domains VALUES ('early.example', 'r')")
        conn.execute("INSERT INTO blocked_domains VALUES ('late.example', 'r')")
        # what pruning past CHANGE_LOG_KEEP leaves: the newest entries only
        conn.execute("DELETE FROM komm_changes WHERE seq = (SELECT min(seq) FROM "
                     "komm_changes WHERE tbl = 'blocked_domains')")
    conn.close()
    directory.refresh()
    tables = directory.snapshot().tables
    assert tables.exists(IndexSpec("blocked_domains", ("domain",)), ("late.example",))
    assert tables.exists(IndexSpec("blocked_domains", ("domain",)), ("early.example",))
    directory.close()


def test_httpx_request_lines_stay_out_of_the_log_unless_debug(tmp_path: Path) -> None:
    """The SpacetimeDB sink calls its reducer over httpx; httpx logged one INFO line per
    call ("HTTP Request: POST …"), in the writer process too.  At the default level they
    are gone; our own lines say what matters (the sink failing and delivering again);
    `--log-level debug` shows httpx's lines."""
    from .test_spacetimedb_sink import BODY, db, log_spec, url

    with DoubleServer(log_spec()) as double:
        for level, shown in (("info", False), ("debug", True)):
            root = tmp_path / level
            root.mkdir()
            server = ServerProcess(
                Deployment(root), "--no-watch", "--log-level", level,
                KOMM_LOG_SPACETIMEDB=url(double),
                KOMM_LOG_SPOOL=str(root / "spool")).start()
            try:
                before = len(db(double).logged)
                for _ in range(3):
                    assert server.post(BODY).status_code == 200
                wait_for(lambda b=before: len(db(double).logged) == b + 3)
                if not shown:  # a failure and its recovery: our own two lines
                    double.stop()
                    assert server.post(BODY).status_code == 200
                    wait_for(lambda s=server: "decision log sink spacetimedb failed"
                             in s.output())
                    double.start()
                    wait_for(lambda s=server: "delivering again" in s.output(),
                             timeout=40)
            finally:
                server.stop()
            output = server.output()
            assert ("HTTP Request: POST" in output) is shown, output[-2000:]


def test_serve_exits_when_a_table_the_policies_read_is_missing_at_start(
        tmp_path: Path) -> None:
    """The decision log's writer process is started before the service checks the store;
    a missing table then failed the start, but nothing stopped the writer, and the exit
    waited for it while it waited for the service: `serve` printed the error and hung
    (never bound, never exited; a supervisor's restart never came).  Now it exits 2 and
    leaves no writer behind."""
    d = Deployment(tmp_path)
    conn = sqlite3.connect(d.database)
    with conn:
        conn.execute("DROP TABLE blocked_ips")
    conn.close()
    command = [sys.executable, "-m", "komm_policy", "serve", "--port", "0", "--no-watch",
               "--policies", str(d.policies), "--directory", f"sqlite:{d.database}",
               "--log-jsonl", str(d.log_file), "--log-spool", str(tmp_path / "spool")]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError("serve hung after its start-up error") from None
    assert proc.returncode == 2, err.decode(errors="replace")
    assert b"blocked_ips" in err, err

    def left() -> list[str]:  # multiprocessing's resource tracker ends just after
        return subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True,
                              text=True).stdout.split()
    deadline = time.monotonic() + 10
    while left() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left() == [], "a process of the service outlived it"
