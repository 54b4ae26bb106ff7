"""`komm-policy serve --policies examples/origin-2026 --directory sqlite:…` over a store
created from the example's `schema.sql`: the SQLite backend opens any store by the schema
file beside the policies (no origin table of `db init` is assumed), answers from it on a
real uvicorn server on loopback, and follows a row changed in the store."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx

from .conftest import ROOT
from .serverproc import ServerProcess

EXAMPLE = ROOT / "examples" / "origin-2026"


class Store:
    """A working directory: the example's policies and a store made from its DDL."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.policies = EXAMPLE
        self.database = root / "directory.db"
        self.log_file = root / "decisions.jsonl"
        conn = sqlite3.connect(self.database)
        with conn:
            conn.executescript((EXAMPLE / "schema.sql").read_text(encoding="utf-8"))
            conn.execute("INSERT INTO message_topics (id, name, email_address) "
                         "VALUES (1, 'Info', 'info@solawi.example')")
            conn.execute("INSERT INTO account (id, identity, name) VALUES (101, ?, 'Anna')",
                         ("c200" + "0" * 57 + "101",))
            conn.execute("INSERT INTO account_emails (id, account_id, email, verified) "
                         "VALUES (1, 101, 'Anna@Solawi.example', 1)")
            conn.execute("INSERT INTO subscriptions (id, subscriber_account_id, topic_id, "
                         "status, permission) VALUES (1, 101, 1, 'ManuallySubscribed', "
                         "'Read')")
        conn.close()

    def execute(self, sql: str) -> None:
        conn = sqlite3.connect(self.database)
        with conn:
            conn.execute(sql)
        conn.close()


def data_request(sender: str, to: str) -> str:
    payload: dict[str, Any] = {
        "context": {"stage": "data",
                    "client": {"ip": "192.0.2.10", "port": 1234, "ptr": None,
                               "helo": "mx.example.net", "activeConnections": 1},
                    "server": {"name": "Stalwart v0.16.18", "port": 25,
                               "ip": "203.0.113.25"},
                    "queue": {"id": "482806d63a41001"}, "protocol": {"version": 1}},
        "envelope": {"from": {"address": sender}, "to": [{"address": to}]},
        "message": {"headers": [["Subject", " hello\r\n"]], "contents": "hi",
                    "size": 40},
    }
    return json.dumps(payload)


def test_serve_the_origin_2026_set_over_a_store_made_from_its_schema_sql(tmp_path):
    store = Store(tmp_path)
    with ServerProcess(store, KOMM_REFRESH_INTERVAL="0.1") as server:  # type: ignore[arg-type]
        assert httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200
        refused = server.post(data_request("anna@solawi.example", "info@solawi.example"))
        assert refused.status_code == 200
        assert refused.json()["action"] == "reject"  # a Read subscription may not post
        assert refused.json()["response"]["message"] == "You may not post to this list"
        other = server.post(data_request("x@example.org", "not-a-list@solawi.example"))
        assert other.json()["action"] == "accept"  # no such topic: not the rule's business
        # a change in the store reaches the replica: Write permission lets Anna post
        store.execute("UPDATE subscriptions SET permission = 'Write' WHERE id = 1")
        deadline = time.monotonic() + 10
        while True:
            answer = server.post(data_request("ANNA@solawi.example", "info@solawi.example"))
            if answer.json()["action"] == "accept":
                break
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.05)
        assert "Traceback" not in server.output()
