"""Reloading a policy set against a real `serve` process replicating the SpacetimeDB
double: a reload that needs a table the module lacks is refused, and the replica keeps
serving (and subscribing to) the running set's tables — it must not stay stuck on the
refused set (the tester's finding: 503 "replica older than 30s" and every mail 451)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from .serverproc import Deployment, ServerProcess
from .spacetimedb_double import DoubleServer
from .spacetimedb_double.samples import BLOCKED_AT as T0
from .spacetimedb_double.samples import SPEC

CONNECT = json.dumps({"context": {"stage": "connect",
                                  "client": {"ip": "192.0.2.78", "helo": "mx.example"}}})

BLOCKED_DOMAINS_RULE = """
stage mail {
    rule blocked_sender_domain:
        when exists("blocked_domains", domain = domain(sender))
        reject 550 5.7.1 "Mail from {domain(sender)} is not accepted"
}
"""
BLOCKED_DOMAINS_TABLE = """
[tables.blocked_domains]
columns.domain = { type = "address" }
columns.reason = { type = "text", optional = true }
"""


@pytest.fixture
def double() -> Iterator[DoubleServer]:
    with DoubleServer(SPEC) as server:
        yield server


def eventually(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def action(server: ServerProcess) -> str:
    body = server.post(CONNECT).json()
    response = body.get("response") or {}
    return f"{body['action']} {response.get('status', '')}".strip()


def test_reload_needing_a_table_the_module_lacks_is_refused_and_the_replica_lives(
        double: DoubleServer, tmp_path: Path) -> None:
    deployment = Deployment(tmp_path)
    token = tmp_path / "stdb.token"
    token.write_text(double.owner_token + "\n")
    with ServerProcess(deployment, "--no-watch", "--directory",
                       f"spacetimedb://127.0.0.1:{double.port}/komm",
                       KOMM_SPACETIMEDB_TOKEN_FILE=str(token),
                       KOMM_MAX_STALENESS="2") as server:
        before = httpx.get(f"{server.url}/readyz").json()
        assert before["status"] == "ok"
        subscribed = set(double.double.subscribers[0].tables)
        schema = deployment.policies / "schema.toml"
        schema.write_text(schema.read_text() + BLOCKED_DOMAINS_TABLE)
        rule = deployment.policies / "25-blocked-domains.policy"
        rule.write_text(BLOCKED_DOMAINS_RULE)
        server.signal(signal.SIGHUP)
        eventually(lambda: httpx.get(f"{server.url}/readyz").json()["status"] == "degraded",
                   timeout=15)
        body = httpx.get(f"{server.url}/readyz").json()
        assert "no table 'blocked_domains'" in body["diagnostic"]
        assert body["policy_version"] == before["policy_version"]
        # well past max_staleness (2 s): the replica is alive, on the running set's tables
        time.sleep(3)
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 200, ready.text
        assert [set(s.tables) for s in double.double.subscribers] == [subscribed]
        assert action(server) == "accept"
        double.control().tx("komm", "blocked_ips", inserts=[["192.0.2.78", "t", T0, True]])
        eventually(lambda: action(server) == "reject 550", timeout=5)
        # back to the running files: unchanged, ok, and still live
        rule.unlink()
        schema.write_text(schema.read_text().replace(BLOCKED_DOMAINS_TABLE, ""))
        server.signal(signal.SIGHUP)
        eventually(lambda: httpx.get(f"{server.url}/readyz").json()["status"] == "ok",
                   timeout=15)
        time.sleep(2.5)
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        assert action(server) == "reject 550"
