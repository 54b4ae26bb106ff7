"""The double's HTTP and WebSocket server (Starlette on uvicorn), and its control routes.

SpacetimeDB routes (`crates/client-api/src/routes/{identity,database,subscribe}.rs`,
`crates/client-api/src/auth.rs`; reference note `spacetimedb.md` §2, §4, §6):
`POST /v1/identity`, `GET /v1/ping`, `POST /v1/database/{db}/sql`,
`POST /v1/database/{db}/call/{reducer}` (`reducers.py`),
`GET /v1/database/{db}/schema?version=9`, `WS /v1/database/{db}/subscribe`.

Control routes (tests and people at a terminal drive the double with these):
- `POST /_double/{db}/tx` `{"table": t, "inserts": [...], "deletes": [...], "light": bool?,
  "form": "array"|"object"?}` — commit a transaction, push it to subscribers;
- `POST /_double/faults` — set `Faults` fields (`{"slow_ms": 500}`, `{"http_status": 503,
  "http_text": "…", "http_count": 2}`, `{"truncate_count": 1}`, `{"fail_subscribe": "…",
  "fail_subscribe_count": 1}`, `{"session_busy_count": 1}`, `{"reducer_fail_match": "x",
  "reducer_fail_text": "…"}` — a /call whose body holds "x" fails with 530);
  `POST /_double/reset-faults`; `GET /_double/{db}/calls` — the reducer calls and the
  decision-log table (`logged`);
- `POST /_double/drop` — drop every subscription socket now;
- `GET /_double/state` — connection and subscription counts, open sockets, the close
  codes of the subscriptions clients closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from . import reducers
from . import sql as sqlmod
from .state import (
    SQL_TX_REDUCER_ID,
    Database,
    Faults,
    RawRow,
    State,
    Table,
    connection_id,
    u256_hex,
)
from .wire import dumps

TEXT_PROTOCOL = "v1.json.spacetimedb"
OFF_LOOP_ROWS = 1_000


@dataclass(eq=False)
class Subscriber:
    ws: WebSocket
    db: Database
    identity: str
    owner: bool
    session_id: str | None
    tables: dict[str, Table] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, message: Any, rows: int = 0) -> None:
        """Send a message (of `rows` rows: many are encoded in a thread, the loop answering
        pings meanwhile, as SpacetimeDB does)."""
        text = await asyncio.to_thread(dumps, message) if rows >= OFF_LOOP_ROWS \
            else dumps(message)
        async with self.lock:
            await self.ws.send_text(text)


def text(status: int, body: str) -> PlainTextResponse:
    return PlainTextResponse(body, status_code=status)


def no_such_table(name: str) -> str:
    return f"no such table: `{name}`. If the table exists, it may be marked private."


class Double:
    def __init__(self, state: State) -> None:
        self.state = state
        self.subscribers: list[Subscriber] = []
        self.sessions: dict[str, Subscriber] = {}
        self.app = Starlette(routes=[
            Route("/v1/identity", self.identity, methods=["POST"]),
            Route("/v1/ping", self.ping, methods=["GET"]),
            Route("/v1/database/{db}/sql", self.sql, methods=["POST"]),
            Route("/v1/database/{db}/schema", self.schema, methods=["GET"]),
            Route("/v1/database/{db}/call/{reducer}", self.call, methods=["POST"]),
            Route("/_double/{db}/calls", self.control_calls, methods=["GET"]),
            WebSocketRoute("/v1/database/{db}/subscribe", self.subscribe),
            Route("/_double/{db}/tx", self.control_tx, methods=["POST"]),
            Route("/_double/faults", self.control_faults, methods=["POST"]),
            Route("/_double/reset-faults", self.control_reset_faults, methods=["POST"]),
            Route("/_double/drop", self.control_drop, methods=["POST"]),
            Route("/_double/state", self.control_state, methods=["GET"]),
        ])

    # -- auth and common behaviour ---------------------------------------------------------
    def authenticate(self, headers: Any, query: Any) -> tuple[str, str] | Response:
        """(identity, token) of the caller, or the error response (`auth.rs`)."""
        header = headers.get("authorization")
        token = None
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value:
                return text(400, "Authorization is invalid: malformed token")
            token = value.strip()
        elif "token" in query:
            token = query["token"]
        if token is None:
            return self.state.mint()  # a fresh anonymous identity per request
        identity = self.state.tokens.get(token)
        if identity is None:
            return text(401, "Authorization failed: token not signed by this instance")
        return identity, token

    async def common(self, request: Request) -> tuple[Database, str, str] | Response:
        faults = self.state.faults
        if faults.slow_ms:
            await asyncio.sleep(faults.slow_ms / 1000)
        fire, faults.http_count = Faults.take(faults.http_count)
        if fire:
            return text(faults.http_status or 500, faults.http_text or "Internal Server Error")
        auth = self.authenticate(request.headers, request.query_params)
        if isinstance(auth, Response):
            return auth
        db = self.state.database(request.path_params["db"])
        if db is None:
            await request.body()  # the real middleware drains the body before its 404
            name = request.path_params["db"]
            if len(name) == 64 and all(c in "0123456789abcdef" for c in name.lower()):
                return text(404, "No such database.")
            return text(404, f"`{name}` not found")
        return db, auth[0], auth[1]

    def headers(self, identity: str, token: str) -> dict[str, str]:
        return {"spacetime-identity": identity, "spacetime-identity-token": token}

    def maybe_truncate(self, body: bytes) -> bytes:
        fire, self.state.faults.truncate_count = Faults.take(self.state.faults.truncate_count)
        return body[: len(body) // 2] if fire else body

    # -- SpacetimeDB routes ------------------------------------------------------------------
    async def identity(self, request: Request) -> Response:
        identity, token = self.state.mint()
        return Response(dumps({"identity": identity, "token": token}),
                        media_type="application/json")

    async def ping(self, request: Request) -> Response:
        return Response(b"")

    async def schema(self, request: Request) -> Response:
        got = await self.common(request)
        if isinstance(got, Response):
            return got
        db, identity, token = got
        if request.query_params.get("version") not in ("9",):
            return text(400, "Failed to deserialize query string: missing field `version`"
                        if "version" not in request.query_params
                        else "unsupported version")
        body = self.maybe_truncate(dumps(db.schema_v9()).encode())
        return Response(body, media_type="application/json",
                        headers=self.headers(identity, token))

    async def sql(self, request: Request) -> Response:
        got = await self.common(request)
        if isinstance(got, Response):
            return got
        db, identity, token = got
        started = time.perf_counter()
        raw = await request.body()
        headers = self.headers(identity, token)
        try:
            query = raw.decode("utf-8")
        except UnicodeDecodeError:
            return text(400, "Request body didn't contain valid UTF-8")
        try:
            body = self.run_select(db, query, owner=identity == getattr(db, "owner", None))
        except sqlmod.SqlError as e:
            return Response(str(e), status_code=400, media_type="text/plain; charset=utf-8",
                            headers=headers)
        micros = db.sql_durations.get(query, int((time.perf_counter() - started) * 1e6))
        body[0]["total_duration_micros"] = micros
        payload = self.maybe_truncate(dumps(body).encode())
        headers["spacetime-execution-duration-micros"] = str(micros)
        return Response(payload, media_type="application/json", headers=headers)

    async def call(self, request: Request) -> Response:
        got = await self.common(request)
        if isinstance(got, Response):
            return got
        db, identity, token = got
        raw = await request.body()
        name = request.path_params["reducer"]
        response = self.run_call(db, name, raw, request.headers.get("content-type"))
        db.calls.append({"reducer": name, "body": raw.decode("utf-8", "replace"),
                         "status": response.status_code,
                         "text": bytes(response.body).decode("utf-8", "replace")})
        response.headers.update(self.headers(identity, token))
        return response

    def run_call(self, db: Database, name: str, raw: bytes, content_type: str | None
                 ) -> Response:
        if not reducers.json_content_type(content_type):
            return text(415, "Expected request with `Content-Type: application/json`")
        params = db.reducers.get(name)
        if params is None:
            return text(404, "No such procedure")
        try:
            args = reducers.product(db.module, list(params), json.loads(raw), "")
        except (ValueError, reducers.ArgError) as e:
            return text(400, f"invalid arguments for reducer {name}: {e}")
        faults = self.state.faults
        if faults.reducer_fail_match and faults.reducer_fail_match in raw.decode("utf-8",
                                                                                 "replace"):
            return text(530, faults.reducer_fail_text or "the reducer failed")
        for record_id, record in reducers.logged_pairs(args):
            db.logged.setdefault(record_id, record)  # a known id is success, unchanged
        return Response(b"", headers={"spacetime-energy-used": "1234",
                                      "spacetime-execution-duration-micros": "85"})

    def visible(self, db: Database, name: str, owner: bool) -> Table:
        table = db.tables.get(name)
        if table is None or (not table.public and not owner):
            raise sqlmod.SqlError(no_such_table(name))
        return table

    def run_select(self, db: Database, query: str, owner: bool) -> list[dict[str, Any]]:
        select = sqlmod.Parser(query).parse()
        table = self.visible(db, select.table, owner)
        types = table.types
        for col in [c for c, _ in select.columns or []] + sqlmod.columns_in(select.where):
            if col not in types:
                raise sqlmod.SqlError(f"`{col}` is not in scope")
        names = [c for c, _ in table.columns]
        rows = [r for r in table.rows
                if sqlmod.evaluate(select.where, dict(zip(names, r, strict=True)), types)]
        if select.limit is not None:
            rows = rows[: select.limit]
        projection = select.columns or [(c, c) for c in names]
        index = {c: i for i, c in enumerate(names)}
        elements = [{"name": {"some": out}, "algebraic_type": db.module.type_json(types[c])}
                    for c, out in projection]
        out_rows = [[db.module.encode(types[c], r[index[c]], "array") for c, _ in projection]
                    for r in rows]
        return [{"schema": {"elements": elements}, "rows": out_rows,
                 "total_duration_micros": 0,
                 "stats": {"rows_inserted": 0, "rows_deleted": 0, "rows_updated": 0}}]

    # -- the subscription WebSocket ----------------------------------------------------------
    async def subscribe(self, ws: WebSocket) -> None:
        faults = self.state.faults
        if TEXT_PROTOCOL not in ws.scope.get("subprotocols", []):
            await ws.send_denial_response(text(400, "no valid protocol selected"))
            return
        auth = self.authenticate(ws.headers, ws.query_params)
        if isinstance(auth, Response):
            await ws.send_denial_response(auth)
            return
        db = self.state.database(ws.path_params["db"])
        if db is None:
            await ws.send_denial_response(text(404, f"`{ws.path_params['db']}` not found"))
            return
        session_id = ws.query_params.get("session_id")
        busy, faults.session_busy_count = Faults.take(faults.session_busy_count)
        old = self.sessions.get(session_id) if session_id else None
        if busy or old is not None:
            # PR #5877: the new socket is refused while the old one of the session is
            # torn down; the next attempt gets through.
            if old is not None:
                with contextlib.suppress(Exception):
                    await old.ws.close(1000)
            await ws.send_denial_response(text(409, "session busy"))
            return
        await ws.accept(subprotocol=TEXT_PROTOCOL)
        identity, token = auth
        sub = Subscriber(ws, db, identity, identity == getattr(db, "owner", None), session_id)
        self.subscribers.append(sub)
        if session_id:
            self.sessions[session_id] = sub
        self.state.connects += 1
        try:
            await sub.send({"IdentityToken": {
                "identity": {"__identity__": u256_hex(identity)}, "token": token,
                "connection_id": {"__connection_id__": connection_id()}}})
            while True:
                message = await ws.receive_text()
                await self.handle_client_message(sub, message)
        except WebSocketDisconnect as e:
            self.state.close_codes.append(e.code)
        except RuntimeError:
            pass
        finally:
            self.subscribers.remove(sub)
            if session_id and self.sessions.get(session_id) is sub:
                del self.sessions[session_id]

    async def handle_client_message(self, sub: Subscriber, message: str) -> None:
        raw = json.loads(message)
        if "Subscribe" not in raw:
            return
        request = raw["Subscribe"]
        self.state.subscribes += 1
        faults = self.state.faults
        fire, faults.fail_subscribe_count = Faults.take(faults.fail_subscribe_count)
        try:
            if fire:
                raise sqlmod.SqlError(faults.fail_subscribe or "subscription failed")
            tables: dict[str, Table] = {}
            for query in request["query_strings"]:
                select = sqlmod.Parser(query).parse()
                if select.columns is not None or select.limit is not None:
                    raise sqlmod.SqlError("Column projections are not supported in subscriptions; "
                                          "Subscriptions must return a table type")
                tables[select.table] = self.visible(sub.db, select.table, sub.owner)
        except sqlmod.SqlError as e:
            await sub.send(self.transaction_update({"Failed": str(e)}, sub, request_id=0))
            return
        sub.tables = tables
        rows = sum(len(t.rows) for t in tables.values())

        def parts() -> list[dict[str, Any]]:
            return [self.table_update(sub.db, t, [], t.rows, sub.db.initial_form)
                    for t in tables.values()]
        update = {"tables": await asyncio.to_thread(parts) if rows >= OFF_LOOP_ROWS
                  else parts()}
        await sub.send({"InitialSubscription": {
            "database_update": update, "request_id": request["request_id"],
            "total_host_execution_duration": {"__time_duration_micros__": 150}}}, rows)

    def table_update(self, db: Database, table: Table, deletes: list[list[Any]],
                     inserts: list[list[Any]], form: str) -> dict[str, Any]:
        return {"table_id": table.table_id, "table_name": table.name,
                "num_rows": len(deletes) + len(inserts),
                "updates": [{"deletes": db.encode_rows(table, deletes, form),
                             "inserts": db.encode_rows(table, inserts, form)}]}

    def transaction_update(self, status: Any, sub: Subscriber, request_id: int
                           ) -> dict[str, Any]:
        return {"TransactionUpdate": {
            "status": status,
            "timestamp": {"__timestamp_micros_since_unix_epoch__": int(time.time() * 1e6)},
            "caller_identity": {"__identity__": u256_hex(sub.identity)},
            "caller_connection_id": {"__connection_id__": 0},
            "reducer_call": {"reducer_name": "", "reducer_id": SQL_TX_REDUCER_ID,
                             "args": "[]", "request_id": request_id},
            "energy_quanta_used": {"quanta": 0},
            "total_host_execution_duration": {"__time_duration_micros__": 80}}}

    # -- control -----------------------------------------------------------------------------
    async def control_tx(self, request: Request) -> Response:
        db = self.state.database(request.path_params["db"])
        if db is None:
            return text(404, "no such database")
        body = await request.json()
        changes = body.get("changes", [body])
        applied = []
        for change in changes:
            table = db.tables.get(change["table"])
            if table is None:
                return text(404, f"no table {change['table']}")
            deletes = [list(r) for r in change.get("deletes", [])]
            inserts = [list(r) for r in change.get("inserts", [])]
            inserts += [RawRow(t) for t in change.get("raw_inserts", [])]  # as sent
            try:
                db.apply(table, deletes, inserts)
            except ValueError:
                return text(409, "a deleted row is not in the table")
            applied.append((table, deletes, inserts))
        light = body.get("light", db.light)
        form = body.get("form", db.delta_form)
        rows = sum(len(d) + len(i) for _, d, i in applied)
        sent = 0
        for sub in list(self.subscribers):
            def parts(sub: Subscriber = sub) -> list[dict[str, Any]]:
                return [self.table_update(db, t, d, i, form) for t, d, i in applied
                        if sub.db is db and t.name in sub.tables]
            update = {"tables": await asyncio.to_thread(parts) if rows >= OFF_LOOP_ROWS
                      else parts()}
            if not update["tables"]:
                continue
            message = ({"TransactionUpdateLight": {"request_id": 0, "update": update}}
                       if light else self.transaction_update({"Committed": update}, sub, 0))
            with contextlib.suppress(Exception):
                await sub.send(message, rows)
                sent += 1
        return JSONResponse({"sent": sent})

    async def control_calls(self, request: Request) -> Response:
        db = self.state.database(request.path_params["db"])
        if db is None:
            return text(404, "no such database")
        return JSONResponse({"calls": db.calls, "logged": list(db.logged.items())})

    async def control_faults(self, request: Request) -> Response:
        for key, value in (await request.json()).items():
            if not hasattr(self.state.faults, key):
                return text(400, f"unknown fault {key}")
            setattr(self.state.faults, key, value)
        return JSONResponse({"ok": True})

    async def control_reset_faults(self, request: Request) -> Response:
        self.state.faults = Faults()
        return JSONResponse({"ok": True})

    async def control_drop(self, request: Request) -> Response:
        dropped = 0
        for sub in list(self.subscribers):
            with contextlib.suppress(Exception):
                await sub.ws.close(1011, "dropped by the double")
                dropped += 1
        return JSONResponse({"dropped": dropped})

    async def control_state(self, request: Request) -> Response:
        return JSONResponse({"connects": self.state.connects,
                             "subscribes": self.state.subscribes,
                             "open": len(self.subscribers),
                             "close_codes": self.state.close_codes,
                             "sessions": sorted(self.sessions)})
