"""A `Directory` replicating SpacetimeDB tables over the `v1.json.spacetimedb` subscription.

`--directory spacetimedb://HOST:PORT/DB` (or `spacetimedb+https://HOST/DB`).  A background
thread runs one asyncio loop with a `SubscriptionClient` (komm_policy.spacetimedb):

1. before every connection, `GET /schema?version=9` and check it (`spacetimedb.check`): a
   table or column the replica needs that is missing or of another type keeps the
   directory not ready, with a message naming it; private tables and row-level security
   are reported as warnings;
2. one legacy `Subscribe` with `SELECT * FROM t` for exactly the tables the policy set
   reads (`require(schema, needs)`), nothing else;
3. `InitialSubscription` → a fresh snapshot, swapped in whole (after every reconnect too);
   `TransactionUpdate` (Committed) and `TransactionUpdateLight` → the deltas applied through
   `TablesSnapshot.apply` (cost ∝ changed rows), published by one reference swap.  A
   message of many rows is decoded and applied in a worker thread, row by row as it is
   read, while decisions read the previous snapshot (`spacetimedb_apply`).

Staleness is the time since the last message or pong.  While it is below `max_staleness`
decisions read the last snapshot, also during an outage; beyond it every lookup raises
`DirectoryError` (the policy's fallback) and `available` is False (`/readyz` 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any

from ..spacetimedb.check import check_module
from ..spacetimedb.http import Endpoint, SpacetimeError, SpacetimeHttp, quote_ident
from ..spacetimedb.limits import MAX_MESSAGE_BYTES
from ..spacetimedb.protocol import IdentityToken, TableRows
from ..spacetimedb.sats import SatsError
from ..spacetimedb.subscription import UNEXPECTED, Backoff, SubscriptionClient
from . import DirectoryError
from .health import ReplicaHealth, Unavailable
from .memory import Snapshot
from .schema import Schema
from .snapshot import Needs, TablesSnapshot
from .spacetimedb_apply import (
    OFFLOAD_MIN_ROWS,
    Replica,
    message_rows,
    release_replaced,
    snapshot_tables,
    updated_tables,
)

log = logging.getLogger(__name__)

class SpacetimeDirectory:
    """A `Directory` served from a subscription replica of a SpacetimeDB database."""

    blocking = False
    """Lookups are dictionary reads of the replica."""

    def __init__(self, endpoint: Endpoint, token: str | None = None, *,
                 max_staleness: float = 30.0, schema: Schema | None = None,
                 needs: Needs | None = None,
                 startup_wait: float = 10.0, backoff: Backoff | None = None,
                 ping_interval: float = 10.0, http_timeout: float = 10.0,
                 max_message_bytes: int = MAX_MESSAGE_BYTES,
                 clock: Callable[[], float] = time.monotonic, start: bool = True) -> None:
        self.endpoint = endpoint
        self.token = token
        self.max_staleness = max_staleness
        self._schema = schema or Schema({})
        self._needs = needs or Needs()
        self._clock = clock
        self._backoff = backoff or Backoff()
        # A quiet but healthy connection must never look stale: ping well within the bound.
        self._ping_interval = min(ping_interval, max_staleness / 3)
        self.max_message_bytes = max_message_bytes
        self._http = SpacetimeHttp(endpoint, token, timeout=http_timeout)
        self.health = ReplicaHealth(log, str(endpoint), clock)
        self.last_error: str | None = "not connected yet"
        self.warnings: list[str] = []
        self.reconnects = 0
        self.updates = 0
        self.identity: str | None = None
        self._last_alive: float | None = None
        self._replica: Replica | None = None  # the loop thread's working state
        self._pending: Replica | None = None  # built by the schema check, for the snapshot
        self._snapshot: Snapshot | None = None
        self._required = needs is not None  # else the first `require` is a start, no reload
        self._serving: Snapshot | Unavailable = Unavailable("SpacetimeDB " + str(
            endpoint) + ": no snapshot yet")
        self._first = threading.Event()
        """Set when a snapshot arrived or a schema check failed (what `require` waits for)."""
        self._schema_problem: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: SubscriptionClient | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        """Set by the first snapshot or the first failed attempt: start-up waits for it."""
        if start:
            self.start()
            self._started.wait(startup_wait)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name="komm-spacetimedb-replica")
            self._thread.start()

    def close(self) -> None:
        loop, client = self._loop, self._client
        if loop is not None and client is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(client.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._http.close()

    def require(self, schema: Schema, needs: Needs, timeout: float = 10.0) -> None:
        """Replicate what a policy set reads: resubscribe with its tables and wait (up to
        `timeout` seconds) for the snapshot.

        On a reload (a snapshot for an earlier policy set is being served) the server's
        schema is checked *before* anything changes: when it does not fit (or cannot be
        read) `DirectoryError` names the problem and the replica keeps serving, and
        subscribing to, the earlier set's tables (the new set must not go live).  Should
        the module change between that check and the resubscription, the earlier set is
        put back and resubscribed before raising.  At start (the first `require`) a
        schema that does not fit, or a SpacetimeDB that does not answer, does not raise:
        the directory stays not ready, saying why, and keeps trying."""
        had_snapshot = self._snapshot is not None and self._required
        first, self._required = not self._required, True
        if had_snapshot:
            problem = self._problem_with(schema, needs)
            if problem is not None:
                raise DirectoryError(problem)
        earlier = (self._schema, self._needs)
        self._subscribe(schema, needs, timeout, first)
        problem = self._schema_problem
        if problem and had_snapshot:
            log.warning("%s; keeping the earlier tables", problem)
            self._subscribe(*earlier, timeout, False)
            raise DirectoryError(problem)

    def _problem_with(self, schema: Schema, needs: Needs) -> str | None:
        """Why the server's schema cannot serve `needs` (None when it can)."""
        try:
            module = self._http.schema()
        except SpacetimeError as e:
            return (f"SpacetimeDB {self.endpoint}: cannot read the schema to check the "
                    f"new tables: {e}")
        check = check_module(module, sorted(needs.tables), schema,
                             f"SpacetimeDB {self.endpoint}")
        return None if check.ok else "; ".join(check.problems)

    def _subscribe(self, schema: Schema, needs: Needs, timeout: float, forget: bool) -> None:
        """Subscribe; wait up to `timeout` s (`forget`: at start, drop the empty snapshot)."""
        self._schema, self._needs = schema, needs
        self._schema_problem = None
        self._first.clear()
        loop, client = self._loop, self._client
        if loop is not None and client is not None:
            loop.call_soon_threadsafe(self._resubscribe, forget)
        self._first.wait(timeout)

    def _resubscribe(self, forget: bool = False) -> None:
        if forget:  # on the loop: no snapshot of the tables before is built after this
            self._snapshot = self._replica = None
            self._publish()
        if self._client is not None:
            self._client.restart()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        self._client = client = SubscriptionClient(
            self.endpoint, [], self, token=self.token, backoff=self._backoff,
            ping_interval=self._ping_interval, ping_timeout=max(1.0, self._ping_interval),
            before_connect=self._check_schema, max_message_bytes=self.max_message_bytes,
            clock=self._clock)
        watchdog = asyncio.ensure_future(self._watch())
        try:
            await client.run()
        finally:
            watchdog.cancel()

    async def _watch(self) -> None:
        """Flip to unavailable once the replica is older than `max_staleness` (checked
        four times a second, so a decision reads `snapshot()` with no clock call)."""
        while True:
            await asyncio.sleep(min(0.25, self.max_staleness / 8))
            self._publish()

    # -- before each connection: the schema ----------------------------------------------

    def _check_schema(self) -> None:
        """Runs in an executor thread before each connection attempt; raising fails the
        attempt (it is retried with backoff: a module update may fix it)."""
        try:
            module = self._http.schema()
        except SpacetimeError as e:
            raise OSError(f"schema: {e}") from None
        wanted = sorted(self._needs.tables)
        check = check_module(module, wanted, self._schema, f"SpacetimeDB {self.endpoint}")
        for warning in check.warnings:
            if warning not in self.warnings:
                log.warning("%s", warning)
        self.warnings = check.warnings
        if not check.ok:
            self.last_error = self._schema_problem = "; ".join(check.problems)
            self._first.set()  # require() answers now, not after its timeout
            raise SchemaMismatch(self.last_error)
        self._schema_problem = None
        self._pending = Replica(module, wanted, self._schema, self._needs)
        assert self._client is not None
        self._client.queries = [f"SELECT * FROM {quote_ident(t)}" for t in wanted]

    # -- subscription events (on the replica's loop) ---------------------------------------

    def on_connect(self, identity: IdentityToken) -> None:
        self.identity = identity.identity
        if self._client is not None and self._client.connects > 1:
            self.reconnects += 1

    def on_alive(self) -> None:
        self._last_alive = self._clock()

    def on_disconnect(self, reason: str, retry_in: float) -> None:
        self.last_error = reason
        self._started.set()
        self.health.failed(f"{reason}; reconnecting in {retry_in:.1f}s",
                           expected=not reason.startswith(UNEXPECTED), reason=reason)
        self._publish()

    def on_snapshot(self, tables: tuple[TableRows, ...]) -> Awaitable[None] | None:
        replica = self._pending or self._replica
        if replica is None:
            raise SatsError("snapshot without a schema")
        self._pending = None
        if replica.needs is not self._needs or replica.schema is not self._schema:
            # Subscribed before `require` asked for other tables (the connection was
            # being set up): not what the policies read.  Subscribe again, checking the
            # schema for them; `require` waits for that snapshot, not this one.
            if self._client is not None:
                self._client.restart()
            return None
        job = partial(snapshot_tables, replica, tables, self.health.bad_row)
        return self._run_job(job, partial(self._snapshot_built, replica),
                             message_rows(tables))

    def _snapshot_built(self, replica: Replica, tables: TablesSnapshot) -> None:
        old = self._replica.tables if self._replica is not None else None
        if self._replica is not None:
            self._replica.tables = None
        replica.tables = tables
        self._replica = replica
        self._snapshot = Snapshot(replica.tables)
        self.last_error = None
        self.health.ok()
        self._publish()
        if old is not None:
            release_replaced(old, tables)
        if replica.needs is self._needs and replica.schema is self._schema:
            self._first.set()  # not when `require` asked for other tables meanwhile
        self._started.set()

    def on_update(self, tables: tuple[TableRows, ...]) -> Awaitable[None] | None:
        replica = self._replica
        if replica is None:
            return None
        job = partial(updated_tables, replica, tables, self.health.bad_row)
        return self._run_job(job, partial(self._update_applied, replica),
                             message_rows(tables))

    def _update_applied(self, replica: Replica, tables: TablesSnapshot | None) -> None:
        old, replica.tables = replica.tables, tables
        self.updates += 1
        self._snapshot = Snapshot(replica.tables)
        self._publish()
        if old is not None and tables is not None and old is not tables:
            release_replaced(old, tables)

    def _run_job(self, job: Callable[[], Any], then: Callable[[Any], None],
                 rows: int) -> Awaitable[None] | None:
        """`then(job())`: inline for a small message; for one of `OFFLOAD_MIN_ROWS` rows
        or more, `job` runs in a worker thread and the subscription awaits it (its loop
        keeps answering pings; the next message waits), then `then` publishes on the
        loop.  `job` builds new tables without publishing anything: until `then`,
        decisions read the previous snapshot."""
        if rows < OFFLOAD_MIN_ROWS:
            then(job())
            return None
        return self._offloaded(job, then)

    async def _offloaded(self, job: Callable[[], Any], then: Callable[[Any], None]) -> None:
        then(await asyncio.get_running_loop().run_in_executor(None, job))

    # -- serving ---------------------------------------------------------------------------

    @property
    def age(self) -> float:
        """Seconds since the last message or pong (infinite before the first)."""
        return math.inf if self._last_alive is None else self._clock() - self._last_alive

    def _fresh(self) -> bool:
        return self._snapshot is not None and self.age <= self.max_staleness

    @property
    def available(self) -> bool:
        """True while lookups are served (what `/readyz` reports): flips with them, at
        the watchdog's next look once the replica is older than `max_staleness`."""
        return self._serving.__class__ is not Unavailable

    @property
    def unavailable_reason(self) -> str:
        if self._snapshot is None:
            return f"SpacetimeDB {self.endpoint}: no snapshot yet: {self.last_error}"
        return (f"SpacetimeDB {self.endpoint}: replica older than {self.max_staleness:g}s: "
                f"{self.last_error or 'no message or pong'}")

    def _publish(self) -> None:
        if self._fresh() and self._snapshot is not None:
            serving: Snapshot | Unavailable = self._snapshot
        elif (isinstance(self._serving, Unavailable)
              and self._serving.message == self.unavailable_reason):
            return  # already failing lookups, for this reason
        else:
            serving = Unavailable(self.unavailable_reason)
        if serving is not self._serving:
            self._serving = serving

    def snapshot(self) -> Snapshot | Unavailable:
        """What one decision reads: the snapshot current when it started (or the error)."""
        serving = self._serving
        if serving.__class__ is Unavailable:
            self._publish()  # a newer reason, or recovered between two watchdog ticks
            return self._serving
        return serving

    def counts(self) -> dict[str, int]:
        if self._snapshot is None or not self._fresh():
            raise DirectoryError(self.unavailable_reason)
        return self._snapshot.counts()

    def table_rows(self) -> dict[str, int]:
        """Rows per replicated table (metrics)."""
        replica = self._replica
        if replica is None:
            return {}
        return replica.tables.counts() if replica.tables is not None else {}

    def metric_families(self) -> Iterable[Any]:
        """Prometheus metric families: snapshot age, reconnects, applied transactions,
        rows per table (bad rows and refresh errors come from `health`)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        age = GaugeMetricFamily("komm_directory_snapshot_age_seconds",
                                "Seconds since the replica last heard from SpacetimeDB")
        age.add_metric([], self.age)
        yield age
        yield CounterMetricFamily("komm_directory_reconnects",
                                  "Reconnections to SpacetimeDB", value=self.reconnects)
        yield CounterMetricFamily("komm_directory_updates",
                                  "Transactions applied to the replica", value=self.updates)
        yield CounterMetricFamily(
            "komm_directory_oversized_messages",
            "Connections to SpacetimeDB dropped for a message over max_message_bytes",
            value=self._client.oversized if self._client is not None else 0)
        rows = GaugeMetricFamily("komm_directory_rows", "Rows in the replica", labels=["table"])
        for table, count in sorted(self.table_rows().items()):
            rows.add_metric([table], count)
        yield rows


class SchemaMismatch(OSError):
    """The server's schema does not have what the replica needs (retried: a module
    update may fix it)."""
