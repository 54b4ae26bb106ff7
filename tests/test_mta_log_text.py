"""The `mta_log` view's text columns cannot be confused with another value: SQLite's
json_extract ends a text at a NUL, so a sender `vorstand@solawi.example\\0@evil.example`
showed as `vorstand@solawi.example` and `WHERE sender = 'vorstand@solawi.example'` matched
it (tester's finding).  A value holding a NUL is shown as its JSON text, NUL as `\\u0000`."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from komm_policy.decisionlog.mta_log import COLUMNS, ensure_mta_log

from .serverproc import Deployment, ServerProcess

TEXT_PATHS = {
    "stage": ("stage",), "client_ip": ("client_ip",), "helo": ("helo",),
    "sender": ("sender",), "sasl_login": ("sasl_login",), "queue_id": ("queue_id",),
    "action": ("action",), "quarantine_reason": ("quarantine_reason",),
    "rule": ("rule", "name"), "cause": ("cause",), "policy_version": ("policy_version",),
}
"""Every TEXT column that is one value of the record (reply, rule_location and
recipients are tested below)."""

BASE = {"record_version": 2, "id": "r", "time": "t", "stage": "mail",
        "client_ip": "192.0.2.1", "helo": "mx.example", "sender": "a@b.example",
        "recipients": [], "sasl_login": "login", "queue_id": "q1", "action": "reject",
        "duration_ms": 0.1, "policy_version": "v1", "quarantine_reason": "why",
        "rule": {"name": "r1", "file": "f.policy", "line": 3, "column": 5},
        "reply": {"status": 550, "enhanced": "5.7.1", "message": "no"}, "cause": "c"}


def _view() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    ensure_mta_log(conn)
    return conn


def _insert(conn: sqlite3.Connection, record: dict, number: int) -> None:
    with conn:
        conn.execute("INSERT INTO mta_log (id, record) VALUES (?, ?)",
                     (f"r{number}", json.dumps(record)))


def _with(path: tuple[str, ...], value: str) -> dict:
    record = json.loads(json.dumps(BASE))
    node = record
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return record


def test_every_text_column_is_covered() -> None:
    texts = {name for name, kind, _ in COLUMNS if kind == "TEXT"}
    assert texts == set(TEXT_PATHS) | {"reply", "rule_location", "recipients"}


@pytest.mark.parametrize("column", sorted(TEXT_PATHS))
def test_a_nul_in_a_text_field_is_shown_and_matches_nothing_else(column: str) -> None:
    conn = _view()
    spoof = "vorstand@solawi.example\x00@evil.example"
    _insert(conn, _with(TEXT_PATHS[column], spoof), 1)
    _insert(conn, _with(TEXT_PATHS[column], "vorstand@solawi.example"), 2)
    literal = "vorstand@solawi.example\\u0000@evil.example"  # the six characters
    _insert(conn, _with(TEXT_PATHS[column], literal), 3)
    shown = dict(conn.execute(f"SELECT id, {column} FROM mta_log"))
    assert shown["r1"] == "vorstand@solawi.example\\u0000@evil.example"
    assert shown["r2"] == "vorstand@solawi.example"
    assert shown["r3"] == "vorstand@solawi.example\\\\u0000@evil.example"
    assert len(set(shown.values())) == 3
    matched = [row[0] for row in conn.execute(
        f"SELECT id FROM mta_log WHERE {column} = ?", ("vorstand@solawi.example",))]
    assert matched == ["r2"]


def test_reply_and_rule_location_show_a_nul_too() -> None:
    conn = _view()
    record = _with(("reply", "message"), "ok\x00 really")
    record["rule"]["file"] = "a\x00b.policy"
    _insert(conn, record, 1)
    reply, location = conn.execute("SELECT reply, rule_location FROM mta_log").fetchone()
    assert reply == "550 5.7.1 ok\\u0000 really"
    assert location == "a\\u0000b.policy:3"


def test_a_usual_record_reads_as_before() -> None:
    conn = _view()
    record = _with(("helo",), 'mx "quoted" \\ back')
    record["reply"]["enhanced"] = None
    record["recipients"] = ["x\x00y@z.example"]
    _insert(conn, record, 1)
    row = conn.execute("SELECT helo, sender, reply, rule_location, recipients, cause "
                       "FROM mta_log").fetchone()
    assert row[:4] == ('mx "quoted" \\ back', "a@b.example", "550 no", "f.policy:3")
    assert json.loads(row[4]) == ["x\x00y@z.example"]  # JSON text already
    assert row[5] == "c"


def test_a_real_server_logs_a_nul_sender_visibly(tmp_path: Path) -> None:
    """The tester's request: a mail-stage sender with a NUL, through the real writer."""
    deployment = Deployment(tmp_path)
    body = json.dumps({
        "context": {"stage": "mail", "client": {"ip": "192.0.2.7", "helo": "h\x00x.example"}},
        "envelope": {"from": {"address": "vorstand@solawi.example\x00@evil.example"}}})
    with ServerProcess(deployment, "--no-watch") as server:
        assert server.post(body).status_code == 200
        deadline = time.monotonic() + 20
        while True:
            with sqlite3.connect(deployment.database) as db:
                rows = db.execute("SELECT sender, helo FROM mta_log WHERE stage = 'mail'"
                                  ).fetchall()
                spoofed = db.execute("SELECT count(*) FROM mta_log WHERE sender = "
                                     "'vorstand@solawi.example'").fetchone()[0]
            if rows or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert rows == [("vorstand@solawi.example\\u0000@evil.example", "h\\u0000x.example")]
    assert spoofed == 0
    line = json.loads(deployment.log_file.read_text().splitlines()[-1])
    assert line["sender"] == "vorstand@solawi.example\x00@evil.example"  # JSONL: the value
