"""The double's databases, tables, tokens and fault switches (plain data; no I/O here).

A spec (JSON, or the same as Python dicts) declares databases:

    {"databases": {"komm": {
        "types": {"Status": {"enum": ["Active", "Blocked"]}},
        "tables": {"blocked_ip": {"columns": [["ip", "String"], ["reason", "String"]],
                                  "primary_key": ["ip"], "public": true,
                                  "unique": [["reason"]],
                                  "rows": [["192.0.2.1", "spam"]]}},
        "row_level_security": ["SELECT * FROM account WHERE identity = :sender"],
        "sql_durations": {"SELECT * FROM blocked_ip": 120},
        "initial_form": "object", "delta_form": "array", "light": false}}}
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from .wire import Module, hex_u256

SQL_TX_REDUCER_ID = 4294967295  # u32::MAX: a change made through SQL, not a reducer


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_identity() -> str:
    """64 hex digits starting `c200`, like SpacetimeDB's identities."""
    return "c200" + secrets.token_hex(30)


def new_token(identity: str) -> str:
    """Three base64url parts joined by dots, like SpacetimeDB's JWTs (not signed)."""
    header = b64url(json.dumps({"typ": "JWT", "alg": "ES256"}).encode())
    claims = b64url(json.dumps({"hex_identity": identity, "sub": secrets.token_hex(8),
                                "iss": "localhost", "aud": ["spacetimedb"]}).encode())
    return f"{header}.{claims}.{b64url(secrets.token_bytes(64))}"


@dataclass
class Table:
    name: str
    columns: list[tuple[str, str]]
    primary_key: list[int]
    public: bool = True
    rows: list[list[Any]] = field(default_factory=list)
    table_id: int = 4096
    unique: list[list[int]] = field(default_factory=list)
    """Column positions of each unique constraint (`"unique": [["email"]]` in a spec)."""

    def constraints_v9(self) -> list[dict[str, Any]]:
        """The unique constraints as `RawConstraintDefV9` (sorted by name, as the schema
        lists them): `{"name": {"some": …}, "data": {"Unique": {"columns": [i…]}}}`."""
        named = [(f"{self.name}_{'_'.join(self.columns[c][0] for c in cols)}_key", cols)
                 for cols in self.unique]
        return [{"name": {"some": name}, "data": {"Unique": {"columns": list(cols)}}}
                for name, cols in sorted(named)]

    @property
    def types(self) -> dict[str, str]:
        return dict(self.columns)


@dataclass
class Database:
    name: str
    module: Module
    tables: dict[str, Table]
    identity: str = field(default_factory=new_identity)
    row_level_security: list[str] = field(default_factory=list)
    sql_durations: dict[str, int] = field(default_factory=dict)
    initial_form: str = "object"
    delta_form: str = "array"
    light: bool = False
    reducers: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)
    """Every `/call`: reducer, body (text), status, text — in arrival order."""
    logged: dict[str, str] = field(default_factory=dict)
    """The decision-log table the reducers fill: record id → record JSON, insertion order."""

    @classmethod
    def from_spec(cls, name: str, spec: dict[str, Any]) -> Database:
        module = Module(spec.get("types"))
        tables = {}
        for i, (tname, t) in enumerate(sorted(spec.get("tables", {}).items())):
            columns = [(c, ty) for c, ty in t["columns"]]
            names = [c for c, _ in columns]
            pk = [names.index(c) for c in t.get("primary_key", [])]
            tables[tname] = Table(tname, columns, pk, t.get("public", True),
                                  [list(r) for r in t.get("rows", [])], 4096 + i,
                                  [[names.index(c) for c in u] for u in t.get("unique", [])])
        return cls(name, module, tables,
                   row_level_security=list(spec.get("row_level_security", [])),
                   sql_durations=dict(spec.get("sql_durations", {})),
                   initial_form=spec.get("initial_form", "object"),
                   delta_form=spec.get("delta_form", "array"),
                   light=bool(spec.get("light", False)),
                   reducers={r: [tuple(p) for p in ps]
                             for r, ps in spec.get("reducers", {}).items()})

    def schema_v9(self) -> dict[str, Any]:
        """`RawModuleDefV9` as `/schema?version=9` writes it: tables and types sorted by
        name, row types and module types in the typespace, module types as `Ref`s."""
        order = sorted(self.tables)
        declared = sorted(self.module.types)
        refs = {name: len(order) + i for i, name in enumerate(declared)}
        types = [{"Product": {"elements": [
            {"name": {"some": c}, "algebraic_type": self.module.type_json(t, refs)}
            for c, t in self.tables[name].columns]}} for name in order]
        types += [self.module.declared_json(name, refs) for name in declared]
        tables = [{
            "name": name, "product_type_ref": i,
            "primary_key": self.tables[name].primary_key,
            "indexes": [], "sequences": [],
            "constraints": self.tables[name].constraints_v9(),
            "schedule": {"none": []}, "table_type": {"User": []},
            "table_access": {"Public": []} if self.tables[name].public else {"Private": []},
        } for i, name in enumerate(order)]
        type_defs = [{"name": {"scope": [], "name": name}, "ty": i, "custom_ordering": True}
                     for i, name in enumerate(order)]
        type_defs += [{"name": {"scope": [], "name": name}, "ty": refs[name],
                       "custom_ordering": True} for name in declared]
        type_defs.sort(key=lambda d: d["name"]["name"])
        reducers = [{"name": r, "params": {"elements": [
            {"name": {"some": p}, "algebraic_type": self.module.type_json(t, refs)}
            for p, t in params]}, "lifecycle": {"none": []}}
            for r, params in sorted(self.reducers.items())]
        return {"typespace": {"types": types}, "tables": tables, "reducers": reducers,
                "types": type_defs, "misc_exports": [],
                "row_level_security": [{"sql": s} for s in self.row_level_security]}

    def encode_rows(self, table: Table, rows: list[list[Any]], form: str) -> list[str]:
        from .wire import dumps
        return [r if isinstance(r, RawRow) else dumps(self.module.encode_row(
            table.columns, r, form)) for r in rows]

    def apply(self, table: Table, deletes: list[list[Any]], inserts: list[list[Any]]) -> None:
        for row in deletes:
            table.rows.remove(row)  # ValueError: not there (the control API reports it)
        table.rows.extend(inserts)


@dataclass
class Faults:
    """Switches for the next requests.  Counts go down as they fire; -1 = always."""

    slow_ms: int = 0
    http_status: int = 0
    http_text: str = ""
    http_count: int = 0
    truncate_count: int = 0
    fail_subscribe: str = ""
    fail_subscribe_count: int = 0
    session_busy_count: int = 0
    reducer_fail_match: str = ""
    """A `/call` whose body contains this text fails with 530 (the reducer returned Err)."""
    reducer_fail_text: str = ""

    @staticmethod
    def take(count: int) -> tuple[bool, int]:
        if count == 0:
            return False, 0
        return True, count if count < 0 else count - 1


@dataclass
class State:
    databases: dict[str, Database]
    tokens: dict[str, str] = field(default_factory=dict)  # token -> identity
    faults: Faults = field(default_factory=Faults)
    owner_token: str = ""
    connects: int = 0
    subscribes: int = 0
    close_codes: list[int] = field(default_factory=list)
    """The close code of each subscription the client closed (1009: a message too big)."""

    @classmethod
    def from_spec(cls, spec: dict[str, Any], owner_token: str | None = None) -> State:
        state = cls({n: Database.from_spec(n, d) for n, d in spec["databases"].items()})
        owner = new_identity()
        state.owner_token = owner_token or new_token(owner)
        state.tokens[state.owner_token] = owner
        for db in state.databases.values():
            db.owner = owner  # type: ignore[attr-defined]
        return state

    def database(self, name_or_identity: str) -> Database | None:
        if name_or_identity in self.databases:
            return self.databases[name_or_identity]
        for db in self.databases.values():
            if db.identity == name_or_identity.lower():
                return db
        return None

    def mint(self) -> tuple[str, str]:
        identity = new_identity()
        token = new_token(identity)
        self.tokens[token] = identity
        return identity, token


def u256_hex(identity: str) -> str:
    return hex_u256(int(identity, 16))


def connection_id() -> int:
    return int.from_bytes(hashlib.sha256(secrets.token_bytes(16)).digest()[:16], "little")


class RawRow(str):
    """A row the double sends as exactly this JSON text, whatever the table's type (hostile
    rows: nesting too deep to decode, invalid JSON).  Put it in `Table.rows`; the SQL
    endpoint does not read it."""
