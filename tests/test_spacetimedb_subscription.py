"""The subscription client against the double's WebSocket: message shapes, both update
kinds, failed subscriptions, pings, and every reconnect path (dropped socket, refused,
"session busy")."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from komm_policy.spacetimedb import Endpoint
from komm_policy.spacetimedb.protocol import IdentityToken, TableRows, parse_message, row_text
from komm_policy.spacetimedb.sats import SatsError
from komm_policy.spacetimedb.subscription import Backoff, SubscriptionClient

from .spacetimedb_double import DoubleServer
from .spacetimedb_double.samples import SPEC

CURRENCY = "SELECT * FROM currency"


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.changed = asyncio.Event()
        self.alive = 0

    def _add(self, kind: str, value: Any) -> None:
        self.events.append((kind, value))
        self.changed.set()

    def on_connect(self, identity: IdentityToken) -> None:
        self._add("connect", identity)

    def on_snapshot(self, tables: tuple[TableRows, ...]) -> None:
        self._add("snapshot", tables)

    def on_update(self, tables: tuple[TableRows, ...]) -> None:
        self._add("update", tables)

    def on_alive(self) -> None:
        self.alive += 1

    def on_disconnect(self, reason: str, retry_in: float) -> None:
        self._add("disconnect", reason)

    def kinds(self) -> list[str]:
        return [k for k, _ in self.events]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5) -> None:
        async def loop() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(loop(), timeout)


@pytest.fixture(scope="module")
def double() -> Iterator[DoubleServer]:
    with DoubleServer(SPEC) as server:
        yield server


def run(double: DoubleServer, queries: list[str],
        body: Callable[[SubscriptionClient, Recorder], Awaitable[None]],
        token: str | None = "owner", faults: dict[str, Any] | None = None,
        **options: Any) -> Recorder:
    double.control().reset_faults()
    if faults:
        double.control().faults(**faults)
    recorder = Recorder()

    async def main() -> None:
        client = SubscriptionClient(
            Endpoint.parse(f"spacetimedb://127.0.0.1:{double.port}/samples"), queries,
            recorder, token=double.owner_token if token == "owner" else token,
            backoff=Backoff(0.05, 0.2, random.Random(1)), **options)
        task = asyncio.ensure_future(client.run())
        try:
            await body(client, recorder)
        finally:
            client.stop()
            await asyncio.wait_for(task, 5)

    asyncio.run(main())
    return recorder


def rows(tables: tuple[TableRows, ...], kind: str = "inserts") -> list[Any]:
    return [json.loads(row_text(r)) for t in tables for r in getattr(t, kind)]


def test_snapshot_then_committed_and_light_updates(double: DoubleServer) -> None:
    control = double.control()

    async def body(client: SubscriptionClient, rec: Recorder) -> None:
        await rec.wait_for(lambda: "snapshot" in rec.kinds())
        await asyncio.to_thread(control.tx, "samples", "currency",
                                inserts=[["EUR", "Euro", None, 2]])
        await rec.wait_for(lambda: rec.kinds().count("update") == 1)
        await asyncio.to_thread(control.tx, "samples", "currency",
                                deletes=[["EUR", "Euro", None, 2]], light=True)
        await rec.wait_for(lambda: rec.kinds().count("update") == 2)
        await asyncio.to_thread(control.tx, "samples", "client", inserts=[[1, 2]])
        await asyncio.sleep(0.1)  # not subscribed: nothing may arrive

    rec = run(double, [CURRENCY], body)
    assert rec.kinds() == ["connect", "snapshot", "update", "update"]
    identity = rec.events[0][1]
    assert len(identity.identity) == 64 and identity.token == double.owner_token
    snapshot = rec.events[1][1]
    assert [t.table_name for t in snapshot] == ["currency"]
    assert rows(snapshot)[0] == {"security_id": "GBP", "description": "British Pound Sterling",
                                 "code": [0, "£"], "scale": 2}  # object form, from pages
    assert rows(rec.events[2][1]) == [["EUR", "Euro", [1, []], 2]]  # array form (delta)
    assert rows(rec.events[3][1], "deletes") == [["EUR", "Euro", [1, []], 2]]


def test_failed_subscription_is_reported_and_retried(double: DoubleServer) -> None:
    async def body(client: SubscriptionClient, rec: Recorder) -> None:
        await rec.wait_for(lambda: rec.kinds().count("disconnect") >= 2)

    rec = run(double, ["SELECT * FROM missing"], body)
    reasons = [v for k, v in rec.events if k == "disconnect"]
    assert reasons[0] == ("subscription failed: no such table: `missing`. If the table "
                          "exists, it may be marked private.")
    assert "snapshot" not in rec.kinds()


def test_fault_failed_subscription_once_then_recovers(double: DoubleServer) -> None:
    async def body(client: SubscriptionClient, rec: Recorder) -> None:
        await rec.wait_for(lambda: "snapshot" in rec.kinds())

    rec = run(double, [CURRENCY], body,
              faults={"fail_subscribe": "module busy", "fail_subscribe_count": 1})
    assert rec.kinds() == ["connect", "disconnect", "connect", "snapshot"]
    assert rec.events[1][1] == "subscription failed: module busy"


def test_dropped_socket_reconnects_with_same_token_and_session(double: DoubleServer) -> None:
    control = double.control()
    sessions: list[list[str]] = []

    async def body(client: SubscriptionClient, rec: Recorder) -> None:
        await rec.wait_for(lambda: "snapshot" in rec.kinds())
        sessions.append((await asyncio.to_thread(control.state))["sessions"])
        assert await asyncio.to_thread(control.drop) >= 1
        await rec.wait_for(lambda: rec.kinds().count("snapshot") == 2)
        sessions.append((await asyncio.to_thread(control.state))["sessions"])
        assert client.connects == 2

    rec = run(double, [CURRENCY], body)
    assert rec.kinds() == ["connect", "snapshot", "disconnect", "connect", "snapshot"]
    assert rec.events[2][1].startswith("ConnectionClosed")
    tokens = [v.token for k, v in rec.events if k == "connect"]
    assert tokens == [double.owner_token] * 2
    assert sessions[0] == sessions[1] and len(sessions[0]) == 1


def test_session_busy_is_retried(double: DoubleServer) -> None:
    async def body(client: SubscriptionClient, rec: Recorder) -> None:
        await rec.wait_for(lambda: "snapshot" in rec.kinds())

    rec = run(double, [CURRENCY], body, faults={"session_busy_count": 2})
    assert rec.kinds() == ["disconnect", "disconnect", "connect", "snapshot"]
    assert rec.events[0][1] == "handshake refused: 409 session busy"


def test_refused_then_server_back(double: DoubleServer) -> None:
    port = double.port

    async def body(client: SubscriptionClient, rec: Recorder) -> None:
        await rec.wait_for(lambda: "snapshot" in rec.kinds())
        await asyncio.to_thread(double.stop)
        await rec.wait_for(lambda: rec.kinds().count("disconnect") >= 3)
        await asyncio.to_thread(double.start)
        await rec.wait_for(lambda: rec.kinds().count("snapshot") == 2)

    rec = run(double, [CURRENCY], body)
    assert double.port == port
    reasons = [v for k, v in rec.events if k == "disconnect"]
    assert any("Connect" in r or "refused" in r.lower() for r in reasons[1:]), reasons


def test_pings_count_as_alive(double: DoubleServer) -> None:
    async def body(client: SubscriptionClient, rec: Recorder) -> None:
        await rec.wait_for(lambda: "snapshot" in rec.kinds())
        before = rec.alive
        await asyncio.sleep(0.35)
        assert rec.alive >= before + 2  # pongs, no messages

    run(double, [CURRENCY], body, ping_interval=0.1, ping_timeout=1)


def test_wrong_subprotocol_is_refused_with_the_servers_text(double: DoubleServer) -> None:
    async def main() -> InvalidStatus:
        with pytest.raises(InvalidStatus) as e:
            async with connect(f"ws://127.0.0.1:{double.port}/v1/database/samples/subscribe",
                               subprotocols=["v1.text.spacetimedb"]):  # type: ignore[list-item]
                pass
        return e.value

    error = asyncio.run(main())
    assert error.response.status_code == 400
    assert error.response.body == b"no valid protocol selected"


def test_message_shapes_from_the_double(double: DoubleServer) -> None:
    """The raw frames: IdentityToken first, typed envelope fields as in v1.rs."""
    async def main() -> list[dict[str, Any]]:
        url = f"ws://127.0.0.1:{double.port}/v1/database/samples/subscribe"
        async with connect(url, subprotocols=["v1.json.spacetimedb"],  # type: ignore[list-item]
                           additional_headers={
                               "Authorization": f"Bearer {double.owner_token}"}) as ws:
            frames = [json.loads(await ws.recv())]
            await ws.send(json.dumps({"Subscribe": {"query_strings": ["SELECT * FROM nope"],
                                                    "request_id": 7}}))
            frames.append(json.loads(await ws.recv()))
            await ws.send(json.dumps({"Subscribe": {"query_strings": [CURRENCY],
                                                    "request_id": 8}}))
            frames.append(json.loads(await ws.recv()))
            return frames

    identity, failed, initial = asyncio.run(main())
    assert set(identity["IdentityToken"]) == {"identity", "token", "connection_id"}
    assert identity["IdentityToken"]["identity"]["__identity__"].startswith("0x")
    status = failed["TransactionUpdate"]["status"]
    assert status == {"Failed": "no such table: `nope`. If the table exists, it may be "
                                "marked private."}
    assert failed["TransactionUpdate"]["reducer_call"]["reducer_id"] == 4294967295
    body = initial["InitialSubscription"]
    assert body["request_id"] == 8
    assert set(body) == {"database_update", "request_id", "total_host_execution_duration"}
    (table,) = body["database_update"]["tables"]
    assert set(table) == {"table_id", "table_name", "num_rows", "updates"}
    assert table["num_rows"] == 2 and len(table["updates"][0]["inserts"]) == 2
    parsed = parse_message(json.dumps(initial))
    assert parsed.kind == "InitialSubscription" and parsed.request_id == 8


@pytest.mark.parametrize("frame,path", [
    ('{"InitialSubscription": {"database_update": {"tables": 3}}}',
     "$.InitialSubscription.database_update"),
    ('{"TransactionUpdateLight": {"request_id": 0, "update": {"tables": [{"table_name": '
     '"t", "updates": [{"inserts": [1]}]}]}}}',
     "$.TransactionUpdateLight.update.tables[0].updates[0].inserts"),
    ('{"TransactionUpdate": {"status": 5}}', "$.TransactionUpdate.status"),
    ("[1, 2]", "$"),
])
def test_malformed_frames_name_the_place(frame: str, path: str) -> None:
    with pytest.raises(SatsError) as e:
        parse_message(frame)
    assert e.value.path == path


def test_backoff_is_jittered_doubling_and_bounded() -> None:
    backoff = Backoff(1.0, 30.0, random.Random(7))
    delays = [backoff.next() for _ in range(12)]
    assert delays[0] == 1.0
    assert all(1.0 <= d <= 30.0 for d in delays)
    assert 1.0 <= delays[1] <= 2.0 and 2.0 <= delays[2] <= 4.0
    assert all(15.0 <= d <= 30.0 for d in delays[6:])
    assert len(set(delays[6:])) > 1  # jittered
    backoff.reset()
    assert backoff.next() == 1.0
