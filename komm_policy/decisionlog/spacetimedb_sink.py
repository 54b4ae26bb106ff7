"""The SpacetimeDB sink: records from the spool to a reducer, over HTTP.

Each call is `POST /v1/database/{db}/call/{reducer}` with `Content-Type:
application/json` and a JSON array of the reducer's arguments (SpacetimeDB
`crates/client-api/src/routes/database.rs` `call`; reference note `spacetimedb.md` §2.3):

- `args = "batch"` (default): one argument, up to `batch` records per call:
  `[[{"id": "<record id>", "record": "<the record's JSON line>"}, …]]` — the reducer
  `log_decisions(ctx, records: Vec<DecisionRecord>)`;
- `args = "record"`: one record per call, `["<record id>", "<JSON line>"]` — the reducer
  `log_decision(ctx, id: String, record: String)`.

The record travels as its JSON text (docs/decision-record.md), so the module's table does
not change when the record gains a field.  The reducer must treat an id it already holds
as success: after a crash or a failed batch the writer gives records again.

Answers (what the writer then does; the spool position moves only when `write` returns):

- 200: committed; next call.
- No answer, 5xx, 402 (energy), 429: raise, so the writer retries with jittered backoff;
  the records stay in the spool.
- 530 (the reducer returned `Err` or panicked; rolled back): split the call in halves
  until the refused record(s) are alone; each goes to the dead-letter file with the
  server's text (and the `dead_letters` counter); the rest is sent.
- 400, 401, 403, 404, 415 and other 4xx (wrong reducer, arguments or token: a
  configuration error): `SinkBlocked` — everything stays in the spool, /readyz is 503
  with the reason, and the batch is retried with backoff until it is fixed.

More than `max_dead_letters` (`[log] spacetimedb_max_dead_letters`, default 20) records
refused *in a row* — counted across calls and spool batches, reset by any record the
reducer accepts — means the module refuses everything (a bug, a full table): the sink is
blocked instead (`SinkBlocked`, /readyz 503,
`…_sink_blocked`) and the refused batch stays in the spool, none of it dead-lettered,
until a record is accepted again.  The count does not depend on the batch size, so a
quiet service (one record per batch) blocks after the same number of refusals as a busy
one; the current run is the `refused_in_a_row` counter.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

import msgspec

from ..spacetimedb.http import Endpoint, SpacetimeError, SpacetimeHttp
from .sinks import Sink, SinkBlocked, SpooledRecord, _tail_ids


class _Refused(Exception):
    def __init__(self, records: list[tuple[SpooledRecord, str]]) -> None:
        super().__init__(f"{len(records)} records refused")
        self.records = records


def _count_lines(path: Path) -> int:
    count = 0
    with contextlib.suppress(FileNotFoundError), path.open("rb") as file:
        while chunk := file.read(1 << 20):
            count += chunk.count(b"\n")
    return count


def _read_count(path: Path) -> int:
    try:
        return max(0, int(path.read_text().strip() or 0))
    except (OSError, ValueError):
        return 0


class ReducerSink:
    """Sends spooled records to one reducer.  `counters()` gives `dead_letters`, the
    records in the dead-letter file (counted at open, then kept up to date)."""

    def __init__(self, spec: ReducerSpec, *, client: SpacetimeHttp | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.endpoint = Endpoint.parse(spec.url)
        self.dead_letter = Path(spec.dead_letter)
        self.dead_letter.parent.mkdir(parents=True, exist_ok=True)
        self._dead_ids = _tail_ids(self.dead_letter)[0]
        self._dead_count = _count_lines(self.dead_letter)
        self.calls = 0
        self._streak_file = Path(spec.dead_letter + ".refused-in-a-row")
        self.refused_in_a_row = _read_count(self._streak_file)
        """Refusals (530) since the reducer last accepted a record.  Kept in a file beside
        the dead-letter file: the writer opens a new sink after every failure (and after a
        restart), and the run must go on counting across them."""
        self._client = client or SpacetimeHttp(self.endpoint, spec.token or None,
                                               timeout=spec.timeout)

    def counters(self) -> dict[str, int]:
        return {"dead_letters": self._dead_count, "calls": self.calls,
                "refused_in_a_row": self.refused_in_a_row}

    # -- the body of a call -------------------------------------------------------------
    def _args(self, records: Sequence[SpooledRecord]) -> bytes:
        if self.spec.args == "record":
            (record,) = records
            return msgspec.json.encode([record.id, record.line.decode("utf-8")])
        return msgspec.json.encode([[{"id": r.id, "record": r.line.decode("utf-8")}
                                     for r in records]])

    def _calls(self, records: Sequence[SpooledRecord]) -> list[Sequence[SpooledRecord]]:
        size = 1 if self.spec.args == "record" else max(1, self.spec.batch)
        return [records[i:i + size] for i in range(0, len(records), size)]

    # -- sending ------------------------------------------------------------------------
    def _send(self, records: Sequence[SpooledRecord], refused: list[tuple[SpooledRecord, str]],
              limit: int) -> None:
        """Send one call's records; on 530 bisect.  Raises `SpacetimeError` (retry),
        `SinkBlocked`, or `_Refused` once more than `limit` records were refused in a
        row (since the reducer last accepted one, in this batch or an earlier one)."""
        try:
            self.calls += 1
            self._client.call(self.spec.reducer, self._args(records))
            if self.refused_in_a_row:
                self._set_refused(0)
            return
        except SpacetimeError as exc:
            if exc.status == 530:
                if len(records) == 1:
                    refused.append((records[0], exc.text))
                    self._set_refused(self.refused_in_a_row + 1)
                    if self.refused_in_a_row > limit:
                        raise _Refused(refused) from None
                    return
                half = len(records) // 2
                self._send(records[:half], refused, limit)
                self._send(records[half:], refused, limit)
                return
            if exc.retryable:
                raise
            raise SinkBlocked(
                f"{self.endpoint} reducer {self.spec.reducer!r} answered {exc.status}: "
                f"{exc.text or '(no text)'}" + _hint(exc.status)) from None

    def write(self, records: Sequence[SpooledRecord]) -> None:
        if self._dead_ids:
            records = [r for r in records if r.id not in self._dead_ids]
        refused: list[tuple[SpooledRecord, str]] = []
        try:
            for call in self._calls(records):
                self._send(call, refused, self.spec.max_dead_letters)
        except _Refused as exc:
            last = exc.records[-1][1]
            raise SinkBlocked(
                f"{self.endpoint} reducer {self.spec.reducer!r} refused "
                f"{self.refused_in_a_row} records in a row, more than "
                f"max_dead_letters={self.spec.max_dead_letters} (530: {last}); the module "
                "seems to refuse everything: records stay in the spool, this batch is not "
                "dead-lettered") from None
        if refused:
            self._dead_letter(refused)

    def _set_refused(self, count: int) -> None:
        self.refused_in_a_row = count
        with contextlib.suppress(OSError):  # at worst the run restarts from 0
            self._streak_file.write_text(f"{count}\n")

    def _dead_letter(self, refused: list[tuple[SpooledRecord, str]]) -> None:
        now = time.time()
        lines = [msgspec.json.encode({
            "id": record.id, "at": now, "sink": self.name, "reducer": self.spec.reducer,
            "status": 530, "error": text,
            "record": msgspec.Raw(record.line)}) + b"\n" for record, text in refused]
        # Durable before the spool position moves past these records.
        with self.dead_letter.open("ab") as file:
            file.write(b"".join(lines))
            file.flush()
            os.fsync(file.fileno())
        self._dead_ids.update(record.id for record, _ in refused)
        self._dead_count += len(refused)

    def retain(self, now: float) -> None:
        """Nothing to trim: dead letters stay until an operator has read them."""

    def close(self) -> None:
        self._client.close()


def _hint(status: int | None) -> str:
    if status == 404:
        return " (no such database or reducer: check [log] spacetimedb and spacetimedb_reducer)"
    if status == 400:
        return " (the reducer's parameters do not match; see the README's reducer signature)"
    if status in (401, 403):
        return " (check the token: [log] spacetimedb_token_file)"
    return ""


class ReducerSpec(msgspec.Struct, frozen=True):
    """Where and how to call the reducer (picklable: it crosses to the writer process).
    `url`: `spacetimedb://HOST:PORT/DB` or `spacetimedb+https://HOST/DB`; `token`: sent
    as `Authorization: Bearer` (empty: anonymous, which a private table refuses);
    `batch`: records per call (args = "batch"); `timeout`: seconds per call."""

    name: ClassVar[str] = "spacetimedb"
    url: str
    reducer: str = "log_decisions"
    args: Literal["batch", "record"] = "batch"
    batch: int = 500
    token: str = ""
    dead_letter: str = "var/spacetimedb-dead-letter.jsonl"
    timeout: float = 10.0
    max_dead_letters: int = 20

    def open(self) -> Sink:
        return ReducerSink(self)

    def __repr__(self) -> str:  # never print the token
        return (f"ReducerSpec(url={self.url!r}, reducer={self.reducer!r}, args={self.args!r}, "
                f"batch={self.batch})")


__all__ = ["ReducerSink", "ReducerSpec"]
