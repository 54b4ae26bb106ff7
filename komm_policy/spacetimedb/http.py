"""SpacetimeDB's HTTP API on httpx: `/v1/identity`, `/sql`, `/schema?version=9`.

For tools (`db schema`, `db export`, `check --directory`) and for the replica's schema check;
never on the hook path.  Routes, statuses and bodies follow SpacetimeDB
`crates/client-api/src/routes/{identity,database}.rs` and `crates/client-api/src/lib.rs`
(reference note `spacetimedb.md` §2):

- `POST /v1/identity` → `{"identity": "<64 hex>", "token": "<jwt>"}`;
- `POST /v1/database/{db}/sql`, body one SQL statement as text → 200 with
  `[{"schema": {"elements": [...]}, "rows": [[...]], "total_duration_micros": n,
  "stats": {...}}]`, or 400 with the error as plain text;
- `GET /v1/database/{db}/schema?version=9` → `RawModuleDefV9` JSON.

SQL has no bind parameters: `quote_literal` embeds a string by doubling `'` (the server's
tokenizer is sqlparser with the PostgreSQL dialect, where a backslash is an ordinary
character); identifiers that are not plain words are double-quoted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import msgspec

from .sats import Decoder, ProductType, SatsError
from .schema import ModuleSchema, parse_module, parse_sql_schema

DEFAULT_MAX_BODY = 256 * 1024 * 1024
"""Largest response body read (bytes); a bigger one is refused, not buffered."""

_PLAIN_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class SpacetimeError(Exception):
    """A SpacetimeDB request failed.  `status` is the HTTP status (None when no answer
    arrived: refused, timed out, cut off); `text` is the server's plain-text reason."""

    def __init__(self, message: str, status: int | None = None, text: str = "", *,
                 retryable: bool | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.text = text
        self._retryable = retryable

    @property
    def retryable(self) -> bool:
        """True for transport failures, cut-off bodies and 5xx/402 (try again later),
        False for answers that will not change by retrying (400, 401, 404)."""
        if self._retryable is not None:
            return self._retryable
        return self.status is None or self.status >= 500 or self.status in (402, 429)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a database lives: `spacetimedb://HOST:PORT/DB` (plain HTTP/WS) or
    `spacetimedb+https://HOST[:PORT]/DB` (TLS)."""

    base: str  # http(s)://host:port
    database: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """Raises `ValueError` naming what is wrong with `url`."""
        parts = urlsplit(url)
        scheme = {"spacetimedb": "http", "spacetimedb+http": "http",
                  "spacetimedb+https": "https"}.get(parts.scheme)
        if scheme is None:
            raise ValueError(f"{url!r}: expected spacetimedb://HOST:PORT/DATABASE or "
                             "spacetimedb+https://HOST/DATABASE")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError(f"{url!r}: no credentials, query or fragment in the URL "
                             "(give the token in a file or KOMM_SPACETIMEDB_TOKEN)")
        if not parts.hostname:
            raise ValueError(f"{url!r}: no host")
        database = parts.path.strip("/")
        if not database or "/" in database:
            raise ValueError(f"{url!r}: expected exactly one database name or identity "
                             "after the host")
        try:
            port = parts.port
        except ValueError as e:
            raise ValueError(f"{url!r}: {e}") from None
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        base = f"{scheme}://{host}" + (f":{port}" if port else "")
        return cls(base=base, database=database)

    @property
    def ws_base(self) -> str:
        return "ws" + self.base[4:]

    def path(self, suffix: str = "") -> str:
        return f"/v1/database/{quote(self.database, safe='')}{suffix}"

    def __str__(self) -> str:
        scheme = "spacetimedb+https" if self.base.startswith("https") else "spacetimedb"
        return f"{scheme}://{self.base.split('://', 1)[1]}/{self.database}"


def quote_literal(value: str) -> str:
    """`value` as an SQL string literal: the only escape SpacetimeDB's SQL knows is a
    doubled quote (`''`); `'x'' OR ''a''=''a'` matches the text `x' OR 'a'='a` and nothing
    else."""
    return "'" + value.replace("'", "''") + "'"


def quote_ident(name: str) -> str:
    """A table or column name for SQL: plain words as they are, others in double quotes
    (`""` escapes a quote).  Names come from the schema file, never from requests."""
    if _PLAIN_IDENT.match(name):
        return name
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class SqlResult:
    """One statement's result: column names and types, decoded rows (tuples in column
    order), server-side duration."""

    columns: ProductType
    rows: list[tuple[Any, ...]]
    total_duration_micros: int
    stats: dict[str, int]
    bad_rows: list[tuple[int, str]] = field(default_factory=list)
    """With `skip_bad_rows`: (row number, reason) of the rows that did not decode."""

    @property
    def names(self) -> tuple[str, ...]:
        return self.columns.names


def decode_sql_body(body: bytes) -> list[SqlResult]:
    """Decode a `/sql` 200 body (a JSON array of statement results) with each result's
    own schema.  Raises `SatsError` with a JSON path."""
    try:
        raw = msgspec.json.decode(body)
    except msgspec.DecodeError as e:
        raise SatsError(f"not JSON: {e}") from None
    return decode_sql_results(raw)


def decode_sql_results(raw: Any, *, skip_bad_rows: bool = False) -> list[SqlResult]:
    """`decode_sql_body` for an already parsed body.  With `skip_bad_rows` a row that does
    not decode is left out and listed in its result's `bad_rows` instead of raising."""
    if not isinstance(raw, list):
        raise SatsError("expected an array of statement results")
    results = []
    for i, stmt in enumerate(raw):
        path = f"$[{i}]"
        if not isinstance(stmt, dict) or not isinstance(stmt.get("rows"), list):
            raise SatsError("expected {\"schema\": …, \"rows\": [...]}", path)
        columns = parse_sql_schema(stmt.get("schema"), path + ".schema")
        decode = Decoder().product(columns)
        rows = []
        bad: list[tuple[int, str]] = []
        for r, row in enumerate(stmt["rows"]):
            try:
                rows.append(decode(row))
            except SatsError as e:
                located = SatsError(e.message, f"{path}.rows[{r}]{e.path[1:]}")
                if not skip_bad_rows:
                    raise located from None
                bad.append((r, str(located)))
        duration = stmt.get("total_duration_micros", 0)
        stats = stmt.get("stats") if isinstance(stmt.get("stats"), dict) else {}
        results.append(SqlResult(columns, rows, duration if isinstance(duration, int) else 0,
                                 stats, bad))
    return results


class SpacetimeHttp:
    """A keep-alive httpx client for one database.  `token` goes out as
    `Authorization: Bearer`; without one, SpacetimeDB mints an anonymous identity per
    request, which sees public tables only.  Every method raises `SpacetimeError`."""

    def __init__(self, endpoint: Endpoint, token: str | None = None, *,
                 timeout: float = 10.0, max_body: int = DEFAULT_MAX_BODY,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.endpoint = endpoint
        self.token = token
        self.max_body = max_body
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=endpoint.base, timeout=timeout,
                                    headers=headers, transport=transport)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> SpacetimeHttp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> bytes:
        url = self.endpoint.base + path
        try:
            with self._client.stream(method, path, **kwargs) as response:
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > self.max_body:
                        raise SpacetimeError(f"{method} {url}: response larger than "
                                             f"{self.max_body} bytes", response.status_code)
        except httpx.TimeoutException:
            raise SpacetimeError(f"{method} {url}: timed out") from None
        except httpx.TransportError as e:
            raise SpacetimeError(f"{method} {url}: {e or type(e).__name__}") from None
        if response.status_code != 200:
            text = bytes(body[:2000]).decode("utf-8", "replace").strip()
            raise SpacetimeError(f"{method} {url}: {response.status_code} {text}",
                                 response.status_code, text)
        return bytes(body)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        body = self._request(method, path, **kwargs)
        try:
            return msgspec.json.decode(body)
        except msgspec.DecodeError as e:
            raise SpacetimeError(f"{method} {self.endpoint.base}{path}: the answer is not "
                                 f"complete JSON ({e})", 200, retryable=True) from None

    def identity(self) -> tuple[str, str]:
        """`POST /v1/identity`: a new identity (64 hex) and its token."""
        raw = self._json("POST", "/v1/identity")
        if not (isinstance(raw, dict) and isinstance(raw.get("identity"), str)
                and isinstance(raw.get("token"), str)):
            raise SpacetimeError("POST /v1/identity: expected {\"identity\", \"token\"}", 200)
        return raw["identity"], raw["token"]

    def schema_json(self) -> Any:
        """`GET /schema?version=9`, the raw decoded JSON."""
        return self._json("GET", self.endpoint.path("/schema"), params={"version": "9"})

    def schema(self) -> ModuleSchema:
        """The module's schema (`RawModuleDefV9`)."""
        raw = self.schema_json()
        try:
            return parse_module(raw)
        except SatsError as e:
            raise SpacetimeError(f"schema of {self.endpoint}: {e}", 200) from None

    def sql_body(self, query: str, *, confirmed: bool | None = None) -> bytes:
        """`POST /sql` with one statement; the raw 200 body."""
        params = {} if confirmed is None else {"confirmed": str(confirmed).lower()}
        return self._request("POST", self.endpoint.path("/sql"), content=query.encode(),
                             params=params, headers={"Content-Type": "text/plain"})

    def sql(self, query: str, *, confirmed: bool | None = None,
            skip_bad_rows: bool = False) -> SqlResult:
        """Run one statement and decode its result with the result's own schema (rows
        that do not decode: `decode_sql_results`' `skip_bad_rows`)."""
        params = {} if confirmed is None else {"confirmed": str(confirmed).lower()}
        raw = self._json("POST", self.endpoint.path("/sql"), content=query.encode(),
                         params=params, headers={"Content-Type": "text/plain"})
        try:
            results = decode_sql_results(raw, skip_bad_rows=skip_bad_rows)
        except SatsError as e:
            raise SpacetimeError(f"/sql answer of {self.endpoint}: {e}", 200) from None
        if len(results) != 1:
            raise SpacetimeError(f"/sql answer of {self.endpoint}: expected one statement "
                                 f"result, found {len(results)}", 200)
        return results[0]

    def select_all(self, table: str, *, skip_bad_rows: bool = False) -> SqlResult:
        """`SELECT * FROM table`."""
        return self.sql(f"SELECT * FROM {quote_ident(table)}", skip_bad_rows=skip_bad_rows)

    def call(self, reducer: str, args_json: bytes) -> None:
        """`POST /call/{reducer}` with `args_json`, a JSON array of the reducer's arguments
        (`Content-Type: application/json`, which the server requires, else 415).  Returns
        on 200 (committed); raises `SpacetimeError` with the status and the server's text
        otherwise: 530 the reducer refused (returned `Err` or panicked; rolled back),
        402 energy exhausted, 400 bad arguments, 404 `No such procedure`
        (`crates/client-api/src/routes/database.rs` `call`)."""
        self._request("POST", self.endpoint.path(f"/call/{quote(reducer, safe='')}"),
                      content=args_json, headers={"Content-Type": "application/json"})
