"""Real `komm-policy serve` processes against the SpacetimeDB double: a row changed in the
double changes the next decision of every process; an outage is served from the last
snapshot until `max_staleness`, then answered with the policy's fallback and a 503
`/readyz`; the service recovers when SpacetimeDB is back."""

from __future__ import annotations

import json
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
                                  "client": {"ip": "192.0.2.77", "helo": "mx.example"}}})


@pytest.fixture
def double() -> Iterator[DoubleServer]:
    with DoubleServer(SPEC) as server:
        yield server


def serve(double: DoubleServer, tmp_path: Path, name: str) -> ServerProcess:
    root = tmp_path / name
    root.mkdir()
    token = root / "stdb.token"
    token.write_text(double.owner_token + "\n")
    return ServerProcess(Deployment(root), "--directory",
                         f"spacetimedb://127.0.0.1:{double.port}/komm",
                         KOMM_SPACETIMEDB_TOKEN_FILE=str(token), KOMM_MAX_STALENESS="2")


def action(server: ServerProcess) -> str:
    body = server.post(CONNECT).json()
    response = body.get("response") or {}
    return f"{body['action']} {response.get('status', '')}".strip()


def eventually(check: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "condition not reached in time"
        time.sleep(0.01)
    return time.monotonic() - started


def test_a_row_changed_in_spacetimedb_changes_the_next_decision_of_two_services(
        double: DoubleServer, tmp_path: Path) -> None:
    with serve(double, tmp_path, "a") as a, serve(double, tmp_path, "b") as b:
        for server in (a, b):
            assert httpx.get(f"{server.url}/readyz").status_code == 200
            assert action(server) == "accept"
        double.control().tx("komm", "blocked_ips", inserts=[["192.0.2.77", "e2e", T0, True]])
        eventually(lambda: action(a) == "reject 550", timeout=2)
        eventually(lambda: action(b) == "reject 550", timeout=2)
        metrics = httpx.get(f"{a.url}/metrics").text
        assert 'komm_directory_rows{table="blocked_ips"} 5.0' in metrics
        assert "komm_directory_snapshot_age_seconds" in metrics
        double.control().tx("komm", "blocked_ips", deletes=[["192.0.2.77", "e2e", T0, True]],
                            light=True)
        eventually(lambda: action(a) == "accept" and action(b) == "accept", timeout=2)


def test_outage_last_snapshot_then_fallback_and_503_then_recovery(
        double: DoubleServer, tmp_path: Path) -> None:
    double.control().tx("komm", "blocked_ips", inserts=[["192.0.2.77", "e2e", T0, True]])
    with serve(double, tmp_path, "a") as server:
        assert action(server) == "reject 550"
        double.stop()
        stopped = time.monotonic()
        assert action(server) == "reject 550"  # the last snapshot, within max_staleness
        eventually(lambda: httpx.get(f"{server.url}/readyz").status_code == 503, timeout=5)
        # Not before max_staleness (2 s) counted from the last pong, which may have come
        # up to one ping interval (2/3 s) before the double stopped (CI saw 1.48 s).
        assert time.monotonic() - stopped >= 2.0 - 2 / 3 - 0.1
        ready = httpx.get(f"{server.url}/readyz").json()
        assert "older than 2s" in ready["reason"]
        assert action(server) == "reject 451"  # on_lookup_error: tempfail 451 4.3.0
        double.start()
        recovered = eventually(
            lambda: httpx.get(f"{server.url}/readyz").status_code == 200, timeout=35)
        assert recovered < 35  # backoff (at most 30 s) + snapshot
        assert action(server) == "reject 550"
        output = server.output()
        assert "reconnecting in" in output and "recovered after" in output


def test_failed_subscription_keeps_it_not_ready_with_the_reason(
        double: DoubleServer, tmp_path: Path) -> None:
    double.control().faults(fail_subscribe="no such table: `blocked_ips`. If the table "
                            "exists, it may be marked private.", fail_subscribe_count=-1)
    with serve(double, tmp_path, "a") as server:
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 503
        assert "no such table: `blocked_ips`" in ready.json()["reason"]
        assert action(server) == "reject 451"
        double.control().reset_faults()
        # recovery is the reconnect backoff (at most 30 s) plus one snapshot
        eventually(lambda: httpx.get(f"{server.url}/readyz").status_code == 200, timeout=35)
        assert action(server) == "accept"


def test_undecodable_rows_in_the_snapshot_are_skipped_and_mail_is_answered(
        double: DoubleServer, tmp_path: Path) -> None:
    """A row nested 1,200 levels deep and a row with a NULL key in the initial snapshot:
    each is a bad row (one warning, counted once), not a dropped connection — which,
    failing again on every reconnect, used to leave the service 503 and every mail 451."""
    from .spacetimedb_double.state import RawRow
    rows = double.state.databases["komm"].tables["blocked_ips"].rows
    rows.append(RawRow("[" * 1200 + "]" * 1200))
    rows.append([None, "null ip", T0, True])
    double.control().tx("komm", "blocked_ips", inserts=[["192.0.2.77", "e2e", T0, True]])
    with serve(double, tmp_path, "a") as server:
        time.sleep(2.5)  # past max_staleness (2 s): still connected, still serving
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        assert action(server) == "reject 550"
        metrics = httpx.get(f"{server.url}/metrics").text
        assert "komm_directory_bad_rows 2.0" in metrics
        assert 'komm_directory_refresh_errors{kind="all"} 0.0' in metrics  # stayed connected
        output = server.output()
        assert output.count("skipping a row of blocked_ips") == 2
        assert "nested too deeply" in output and "expected a string" in output
        assert "Traceback" not in output and "NoneType: None" not in output


def test_a_table_missing_at_start_keeps_it_not_ready_until_the_module_has_it(
        double: DoubleServer, tmp_path: Path) -> None:
    """As when the table goes away while serving (README "Schema check"): the process
    runs, `/readyz` 503 names the table, lookups fall into the policy's fallback, the
    check is retried, and the service is ready once the module has the table — not exit
    2 at start (a restart loop under systemd's Restart=on-failure)."""
    tables = double.state.databases["komm"].tables
    blocked_ips = tables.pop("blocked_ips")
    blocked = json.dumps({"context": {"stage": "connect", "client": {"ip": "192.0.2.66"}}})
    with serve(double, tmp_path, "a") as server:
        eventually(lambda: "no table 'blocked_ips'" in httpx.get(
            f"{server.url}/readyz").text, timeout=10)
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 503
        assert "SpacetimeDB" in ready.json()["reason"]
        assert server.post(blocked).json()["response"]["status"] == 451  # on_lookup_error
        time.sleep(1.5)  # at least one retry (backoff 1 s) fails the same way
        assert server.proc is not None and server.proc.poll() is None
        assert httpx.get(f"{server.url}/readyz").status_code == 503
        tables["blocked_ips"] = blocked_ips  # the module is whole again
        eventually(lambda: httpx.get(f"{server.url}/readyz").status_code == 200, timeout=35)
        assert server.post(blocked).json()["response"]["status"] == 550
        assert action(server) == "accept"
        assert "no table 'blocked_ips'" in server.output()
