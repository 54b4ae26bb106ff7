"""The `v1.json.spacetimedb` WebSocket messages komm-policy sends and reads.

Shapes from SpacetimeDB `crates/client-api-messages/src/websocket/v1.rs` (typed SATS-JSON:
enums are `{"Variant": payload}`, options `{"some": x}` / `{"none": []}`, identities
`{"__identity__": "0x…"}`); see the reference note `spacetimedb.md` §4 and "Corrections":

- client → server: `{"Subscribe": {"query_strings": [...], "request_id": n}}` (the legacy
  form: it replaces the whole subscription set and is answered by one atomic snapshot);
- server → client: `IdentityToken` first; `InitialSubscription` with the snapshot;
  `TransactionUpdate` whose `status` is `{"Committed": DatabaseUpdate}`, `{"Failed": msg}`
  (also how a failing legacy `Subscribe` is answered) or `{"OutOfEnergy": []}`;
  `TransactionUpdateLight` (`{"request_id", "update": DatabaseUpdate}`);
  `SubscriptionError` (for `SubscribeSingle`/`SubscribeMulti`; handled all the same).
- `DatabaseUpdate` = `{"tables": [{"table_id", "table_name", "num_rows", "updates":
  [{"deletes": [row…], "inserts": [row…]}]}]}` where each row is a JSON *string* holding an
  object (rows read from table pages) or a positional array (rows computed in a delta).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from .sats import SatsError

TEXT_PROTOCOL = "v1.json.spacetimedb"


@dataclass(slots=True)
class TableRows:
    """One table's part of a `DatabaseUpdate`: its row strings, still encoded."""

    table_name: str
    table_id: int = 0
    deletes: list[str] = field(default_factory=list)
    inserts: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class IdentityToken:
    identity: str  # 64 lowercase hex
    token: str
    connection_id: int


@dataclass(frozen=True, slots=True)
class Message:
    """A decoded server message: `kind` is the variant name; `tables` holds the rows of
    `InitialSubscription`/`TransactionUpdate` (Committed)/`TransactionUpdateLight`/
    `SubscribeMultiApplied`; `error` the text of a failed update or subscription;
    `request_id` where the message carries one."""

    kind: str
    tables: tuple[TableRows, ...] = ()
    error: str | None = None
    request_id: int | None = None
    identity: IdentityToken | None = None


def subscribe(queries: list[str], request_id: int) -> bytes:
    """The legacy `Subscribe` message."""
    return msgspec.json.encode(
        {"Subscribe": {"query_strings": queries, "request_id": request_id}})


def _database_update(raw: Any, path: str) -> tuple[TableRows, ...]:
    if not isinstance(raw, dict) or not isinstance(raw.get("tables"), list):
        raise SatsError("expected a DatabaseUpdate {\"tables\": [...]}", path)
    out = []
    for i, table in enumerate(raw["tables"]):
        tpath = f"{path}.tables[{i}]"
        if not isinstance(table, dict) or not isinstance(table.get("table_name"), str):
            raise SatsError("expected a TableUpdate with a table_name", tpath)
        rows = TableRows(table["table_name"], table.get("table_id") or 0)
        updates = table.get("updates")
        if not isinstance(updates, list):
            raise SatsError("expected `updates`, a list", tpath)
        for j, update in enumerate(updates):
            upath = f"{tpath}.updates[{j}]"
            if not isinstance(update, dict):
                raise SatsError("expected {\"deletes\": [...], \"inserts\": [...]}", upath)
            for key, target in (("deletes", rows.deletes), ("inserts", rows.inserts)):
                part = update.get(key, [])
                if not isinstance(part, list) or not all(isinstance(r, str) for r in part):
                    raise SatsError(f"`{key}` must be a list of row strings",
                                    f"{upath}.{key}")
                target.extend(part)
        out.append(rows)
    return tuple(out)


def _option_int(raw: Any) -> int | None:
    if isinstance(raw, dict) and isinstance(raw.get("some"), int):
        return raw["some"]
    return raw if isinstance(raw, int) and not isinstance(raw, bool) else None


def _identity_hex(raw: Any) -> str:
    value = raw.get("__identity__") if isinstance(raw, dict) else raw
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, str):
        text = value[2:] if value.startswith("0x") else value
        try:
            return format(int(text, 16), "064x")
        except ValueError:
            pass
    if isinstance(value, int):
        return format(value, "064x")
    raise SatsError("expected an identity", "$.IdentityToken.identity")


def parse_message(text: str | bytes) -> Message:
    """Decode one server text frame.  Unknown variants come back as `Message(kind)` (the
    caller ignores them); malformed frames raise `SatsError` with a JSON path."""
    try:
        raw = msgspec.json.decode(text)
    except msgspec.DecodeError as e:
        raise SatsError(f"not JSON: {e}") from None
    except RecursionError:  # msgspec's answer to ~1,000 nested levels
        raise SatsError("nested too deeply to decode") from None
    if not isinstance(raw, dict) or len(raw) != 1:
        raise SatsError("expected a ServerMessage {\"Variant\": {...}}")
    ((kind, body),) = raw.items()
    path = f"$.{kind}"
    if not isinstance(body, dict):
        raise SatsError("expected an object", path)
    if kind == "IdentityToken":
        connection = body.get("connection_id")
        if isinstance(connection, dict):
            connection = connection.get("__connection_id__")
        token = body.get("token")
        if not isinstance(token, str):
            raise SatsError("expected a token string", path + ".token")
        return Message(kind, identity=IdentityToken(
            _identity_hex(body.get("identity")), token,
            connection if isinstance(connection, int) else 0))
    if kind == "InitialSubscription":
        return Message(kind, _database_update(body.get("database_update"),
                                              path + ".database_update"),
                       request_id=_option_int(body.get("request_id")))
    if kind == "TransactionUpdate":
        status = body.get("status")
        if not isinstance(status, dict) or len(status) != 1:
            raise SatsError("expected a status {\"Committed\"|\"Failed\"|\"OutOfEnergy\"}",
                            path + ".status")
        ((state, payload),) = status.items()
        call = body.get("reducer_call")
        request_id = _option_int(call.get("request_id")) if isinstance(call, dict) else None
        if state == "Committed":
            return Message(kind, _database_update(payload, path + ".status.Committed"),
                           request_id=request_id)
        if state == "Failed":
            return Message(kind, error=str(payload), request_id=request_id)
        return Message(kind, error=state, request_id=request_id)
    if kind == "TransactionUpdateLight":
        return Message(kind, _database_update(body.get("update"), path + ".update"),
                       request_id=_option_int(body.get("request_id")))
    if kind == "SubscribeMultiApplied":
        return Message(kind, _database_update(body.get("update"), path + ".update"),
                       request_id=_option_int(body.get("request_id")))
    if kind == "SubscriptionError":
        return Message(kind, error=str(body.get("error", "")),
                       request_id=_option_int(body.get("request_id")))
    return Message(kind)
