"""The SpacetimeDB directory against the double: snapshot, deltas, schema check, staleness
and recovery (in-process; `test_spacetimedb_e2e.py` runs real `serve` processes)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from komm_policy.directory import DirectoryError
from komm_policy.directory.schema import parse_schema
from komm_policy.directory.snapshot import IndexSpec, Needs
from komm_policy.directory.spacetimedb import SpacetimeDirectory
from komm_policy.ipset import IP
from komm_policy.spacetimedb import Endpoint
from komm_policy.spacetimedb.subscription import Backoff

from .shipped import SCHEMA as SHIPPED_SCHEMA
from .shipped import Helpers, helper_needs
from .spacetimedb_double import DoubleServer
from .spacetimedb_double.samples import BLOCKED_AT as T0
from .spacetimedb_double.samples import SPEC


@pytest.fixture
def double() -> Iterator[DoubleServer]:
    with DoubleServer(SPEC) as server:
        yield server


def open_directory(double: DoubleServer, db: str = "komm", *, helpers: bool = True,
                   **options: object) -> SpacetimeDirectory:
    """A replica of the double's database; with `helpers`, replicating what the shipped
    directory file's helpers read (by the shipped schema file)."""
    options.setdefault("backoff", Backoff(0.05, 0.2))
    options.setdefault("token", double.owner_token)
    if helpers:
        options.setdefault("schema", SHIPPED_SCHEMA)
        options.setdefault("needs", helper_needs())
    return SpacetimeDirectory(
        Endpoint.parse(f"spacetimedb://127.0.0.1:{double.port}/{db}"), **options)  # type: ignore[arg-type]


def parse_ip(text: str) -> IP:
    ip = IP.parse(text)
    assert ip is not None
    return ip


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "condition not reached in time"
        time.sleep(0.005)
    return time.monotonic() - started


BLOCKED_SCHEMA = parse_schema({"tables": {
    "blocked_ips": {"primary_key": ["ip"], "columns": {
        "ip": {"type": "network"}, "reason": "text", "active": "bool"}},
    "account": {"primary_key": ["id"], "columns": {
        "id": "integer", "identity": "identity", "email": "address",
        "last_synced": {"type": "timestamp", "optional": True}}},
}})
NEEDS = Needs({IndexSpec("blocked_ips", ("ip",), "net"),
               IndexSpec("account", ("email",))})


def test_snapshot_serves_the_helpers_and_deltas_change_them(double: DoubleServer) -> None:
    directory = open_directory(double)
    try:
        assert directory.available
        assert Helpers(directory).ip_blocked("192.0.2.66")
        assert Helpers(directory).ip_blocked("2001:db8:4860::1")
        assert not Helpers(directory).ip_blocked("203.0.113.200")  # inactive row
        category = Helpers(directory).category("gemuese@solawi.example")
        assert category is not None and category.id == 2
        assert Helpers(directory).is_admin("JANE@solawi.example")
        assert Helpers(directory).subscribed("peter.schmidt@web.example",
                                             "gemuese@solawi.example")
        control = double.control()
        assert not Helpers(directory).ip_blocked("192.0.2.77")
        control.tx("komm", "blocked_ips", inserts=[["192.0.2.77", "test", T0, True]])
        eventually(lambda: Helpers(directory).ip_blocked("192.0.2.77"))
        control.tx("komm", "blocked_ips", deletes=[["192.0.2.77", "test", T0, True]],
                   light=True)
        eventually(lambda: not Helpers(directory).ip_blocked("192.0.2.77"))
        # an update (delete + insert of one key) in one transaction, rows as objects
        control.tx("komm", "blocked_ips", deletes=[["192.0.2.66", "spam run 2026-08", T0, True]],
                   inserts=[["192.0.2.66", "spam run 2026-08", T0, False]], form="object")
        eventually(lambda: not Helpers(directory).ip_blocked("192.0.2.66"))
        assert directory.updates == 3
        assert directory.table_rows()["blocked_ips"] == 4
    finally:
        directory.close()


def test_required_tables_are_replicated_and_updated_per_row(double: DoubleServer) -> None:
    directory = open_directory(double)
    try:
        directory.require(BLOCKED_SCHEMA, NEEDS)
        tables = directory.snapshot().tables
        assert tables is not None
        spec = IndexSpec("blocked_ips", ("ip",), "net")
        row = tables.first(spec, (parse_ip("198.19.1.1"),))
        assert row is not None and row.reason.startswith("benchmark network")
        by_email = IndexSpec("account", ("email",))
        jane = tables.first(by_email, ("Jane@Solawi.example",))
        assert jane is not None and jane.id == 102 and jane.last_synced is None
        double.control().tx("komm", "account", inserts=[
            [105, "c2" + "0" * 62, "Eve", "eve@solawi.example", True, 1_700_000_000_000_000]])
        eventually(lambda: directory.snapshot().tables.first(  # type: ignore[union-attr]
            by_email, ("eve@solawi.example",)) is not None)
        eve = directory.snapshot().tables.first(by_email, ("eve@solawi.example",))  # type: ignore[union-attr]
        assert eve.last_synced == 1_700_000_000_000_000  # type: ignore[union-attr]
        assert tables.first(by_email, ("eve@solawi.example",)) is None  # old snapshot kept
    finally:
        directory.close()


def test_only_the_tables_the_policy_set_reads_are_subscribed(double: DoubleServer) -> None:
    """No origin table is subscribed for the engine's sake: the shipped directory file's
    functions read five tables, a set reading two gets two (the module has more)."""
    def subscribed() -> set[str]:
        (subscriber,) = double.double.subscribers
        return set(subscriber.tables)

    directory = open_directory(double)  # needs: what the shipped helpers read
    try:
        assert subscribed() == {"blocked_ips", "message_categories", "account",
                                "admin_identities", "subscriptions"}
    finally:
        directory.close()
    eventually(lambda: not double.double.subscribers)
    directory = open_directory(double, helpers=False)
    try:
        directory.require(BLOCKED_SCHEMA, NEEDS)
        eventually(lambda: len(double.double.subscribers) == 1
                   and subscribed() == {"blocked_ips", "account"})
        assert set(double.state.databases["komm"].tables) > {"blocked_ips", "account"}  # more
    finally:
        directory.close()


@pytest.mark.parametrize("tables,message", [
    ({"blocked_ip": {"columns": {"ip": "network"}}},
     "no table 'blocked_ip'"),
    ({"blocked_ips": {"columns": {"ip": "network", "until": "timestamp"}}},
     "table 'blocked_ips' has no column 'until'"),
    ({"blocked_ips": {"columns": {"active": "integer"}}},
     "column blocked_ips.active is Bool on the server, but the schema file says integer"),
    ({"account": {"columns": {"last_synced": "timestamp"}}},
     "column account.last_synced is Option<Timestamp> on the server, but the schema file "
     "says timestamp"),
])
def test_schema_problems_keep_it_not_ready_and_name_the_column(
        double: DoubleServer, tables: dict[str, object], message: str) -> None:
    schema = parse_schema({"tables": tables})
    needs = Needs({IndexSpec(t, (next(iter(spec["columns"])),))  # type: ignore[index]
                   for t, spec in tables.items()})
    directory = open_directory(double)
    try:
        (subscriber,) = double.double.subscribers
        with pytest.raises(DirectoryError, match=message):
            directory.require(schema, needs, timeout=1.5)
        # refused before anything changed: the same subscription, still serving
        assert double.double.subscribers == [subscriber]
        assert directory.available and directory.last_error is None
        assert Helpers(directory).ip_blocked("192.0.2.66")
    finally:
        directory.close()


def test_schema_problem_at_start_keeps_it_not_ready_saying_why(double: DoubleServer) -> None:
    schema = parse_schema({"tables": {"blocked_ips": {"columns": {"active": "integer"}}}})
    needs = Needs({IndexSpec("blocked_ips", ("active",))})
    # The set that does not fit is the replica's first: with no set of its own, it could
    # be serving an empty snapshot before `require` runs (a loaded machine), which makes
    # `require` a reload (refused, raising) instead of the start this test is about.
    directory = open_directory(double, helpers=False, startup_wait=0, schema=schema,
                               needs=needs)
    try:
        directory.require(schema, needs, timeout=2)
        assert not directory.available
        assert "column blocked_ips.active is Bool on the server" in (
            directory.unavailable_reason)
        with pytest.raises(DirectoryError, match=r"blocked_ips\.active"):
            Helpers(directory).ip_blocked("192.0.2.66")
    finally:
        directory.close()


def test_private_table_and_row_level_security_are_reported(double: DoubleServer) -> None:
    schema = parse_schema({"tables": {"mailing_rules": {"columns": {"pattern": "text"}}}})
    needs = Needs({IndexSpec("mailing_rules", ("pattern",))})
    directory = open_directory(double)
    try:
        directory.require(schema, needs)  # the owner's token: allowed, but reported
        assert any("'mailing_rules' is private" in w for w in directory.warnings)
    finally:
        directory.close()
    anonymous = open_directory(double, helpers=False, token=None, startup_wait=1)
    try:
        anonymous.require(schema, needs, timeout=1.0)  # the server refuses the subscription
        assert "no such table: `mailing_rules`" in (anonymous.last_error or "")
    finally:
        anonymous.close()
    types_schema = parse_schema({"tables": {"everything": {"columns": {"text": "text"}}}})
    typed = open_directory(double, db="types", helpers=False)
    try:
        typed.require(types_schema, Needs({IndexSpec("everything", ("text",))}))
        assert any("row-level security" in w and ":sender" in w for w in typed.warnings)
    finally:
        typed.close()


def test_outage_serves_last_snapshot_then_fails_then_recovers(double: DoubleServer) -> None:
    # max_staleness leaves a loaded machine room to stop the double and look up within it
    directory = open_directory(double, max_staleness=3.0, ping_interval=0.2)
    try:
        assert Helpers(directory).ip_blocked("192.0.2.66")
        double.stop()  # closing the double's sockets may take a moment: measure the age
        assert directory.age < 2.5
        assert Helpers(directory).ip_blocked("192.0.2.66")  # last snapshot, within bound
        assert directory.available
        eventually(lambda: not directory.available, timeout=8)
        assert directory.age > 3.0

        def lookups_fail() -> bool:
            try:
                Helpers(directory).ip_blocked("192.0.2.66")
            except DirectoryError as e:
                assert "older than 3s" in str(e)
                return True
            return False
        # the watchdog looks 4 times a second; the bound leaves room for a loaded machine
        assert eventually(lookups_fail, timeout=5) < 2.0
        assert "older than 3s" in directory.unavailable_reason
        # changed while down: the fresh snapshot after the reconnect must show it
        komm = double.state.databases["komm"]
        komm.tables["blocked_ips"].rows.append(["192.0.2.99", "while down", T0, True])
        double.start()
        eventually(lambda: directory.available, timeout=20)  # backoff + snapshot, under load
        assert Helpers(directory).ip_blocked("192.0.2.99")
        assert directory.reconnects >= 1
    finally:
        directory.close()


def test_failed_subscription_and_5xx_schema_then_recovery(double: DoubleServer) -> None:
    control = double.control()
    control.faults(http_status=503, http_text="maintenance", http_count=2,
                   fail_subscribe="module restarting", fail_subscribe_count=1)
    directory = open_directory(double, startup_wait=5)
    try:
        eventually(lambda: directory.available)
        assert directory.health.refresh_errors >= 3  # two 503s, one failed subscription
        assert Helpers(directory).ip_blocked("192.0.2.66")
    finally:
        directory.close()


def test_dropped_socket_resubscribes_and_swaps_a_fresh_snapshot(double: DoubleServer) -> None:
    directory = open_directory(double)
    try:
        komm = double.state.databases["komm"]
        komm.tables["blocked_ips"].rows.append(["192.0.2.55", "silent change", T0, True])
        assert not Helpers(directory).ip_blocked("192.0.2.55")  # no update was sent
        double.control().drop()
        eventually(lambda: Helpers(directory).ip_blocked("192.0.2.55"))
        assert directory.available and directory.reconnects == 1
    finally:
        directory.close()


def test_metrics_families(double: DoubleServer) -> None:
    directory = open_directory(double)
    try:
        families = {f.name: f for f in directory.metric_families()}
        rows = {s.labels["table"]: s.value for s in families["komm_directory_rows"].samples}
        assert rows["blocked_ips"] == 4 and rows["admin_identities"] == 1
        (age,) = families["komm_directory_snapshot_age_seconds"].samples
        assert 0 <= age.value < 5
    finally:
        directory.close()
