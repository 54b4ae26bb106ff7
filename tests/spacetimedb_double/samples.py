"""Databases the double serves by default.

`samples` holds the data of the real `/sql` captures in `tests/fixtures/spacetimedb/`
(see `SOURCES.md` there): answering `SAMPLE_QUERIES[file]` it must return that capture's
body byte for byte (compact, as the server sends it).  `types` has a column of every SATS
type the decoder knows, for tests of both row forms.
"""

from __future__ import annotations

from typing import Any

SAMPLE_QUERIES = {
    "01-sql_rows-option-unicode.json": "SELECT * FROM currency",
    "02-sql_bigint-u256-u128.json": "SELECT * FROM client",
    "03-sql_identity-u64-bool-compact.json": "SELECT * FROM capture_event",
    "04-sql_empty-rows-compact.json": "SELECT * FROM capture_event WHERE kind = 3",
}

ID_A = "c20081c5a6e7ac231130aae44dd6ed6215bb09537a4ce925da87f1afed767da6"
ID_B = "b10081c5a6e7ac231130aae44dd6ed6215bb09537a4ce925da87f1afed76700f"

SAMPLES: dict[str, Any] = {
    "tables": {
        "currency": {
            "columns": [["security_id", "String"], ["description", "String"],
                        ["code", "Option<String>"], ["scale", "U8"]],
            "primary_key": ["security_id"],
            "rows": [["GBP", "British Pound Sterling", "£", 2],
                     ["PASS", "Gym class pass — 1 unit redeems 1 class booking", "🎟", 0]],
        },
        "client": {
            "columns": [["identity", "U256"], ["connection_id", "U128"]],
            "rows": [[0xc2005efe02e92547ddd4bd106e84a281ead78a30fa26f42e619d70b20917c3dd,
                      118584542101933595460429904643539362103]],
        },
        "capture_event": {
            "columns": [["event_id", "U64"], ["kind", "U16"], ["identity", "Identity"],
                        ["species_id", "U32"], ["hp_permille", "U16"],
                        ["bait_item_id", "U32"], ["success", "Bool"]],
            "primary_key": ["event_id"],
            "rows": [[10, 1, ID_A, 7, 300, 0, True], [30, 1, ID_A, 7, 900, 42, False],
                     [20, 1, ID_B, 9, 200, 0, True], [40, 2, ID_B, 9, 500, 0, False]],
        },
    },
    "sql_durations": {
        "SELECT * FROM currency": 167,
        "SELECT * FROM client": 152,
        "SELECT * FROM capture_event": 316,
        "SELECT * FROM capture_event WHERE kind = 3": 302,
    },
}

EVERY_TYPE_COLUMNS = [
    ["id", "U32"], ["flag", "Bool"], ["u8", "U8"], ["u16", "U16"], ["u64", "U64"],
    ["u128", "U128"], ["u256", "U256"], ["i8", "I8"], ["i32", "I32"], ["i64", "I64"],
    ["i128", "I128"], ["i256", "I256"], ["f64", "F64"], ["text", "String"],
    ["blob", "Array<U8>"], ["tags", "Array<String>"], ["maybe", "Option<String>"],
    ["maybe_id", "Option<Identity>"], ["owner", "Identity"], ["conn", "ConnectionId"],
    ["at", "Timestamp"], ["ttl", "TimeDuration"], ["status", "Ref:Status"],
    ["shape", "Ref:Shape"], ["point", "Ref:Point"], ["points", "Array<Ref:Point>"],
]

EVERY_TYPE_ROWS = [
    [1, True, 255, 65535, 2**64 - 1, 2**128 - 1, 2**256 - 1, -128, -(2**31), -(2**63),
     -(2**127), -(2**255), 0.5, "Grüße 🎟 'quoted'", "00ff10", ["a", "b"], "x", ID_A, ID_B,
     118584542101933595460429904643539362103, 1_700_000_000_123_456, 1_500_000, "Blocked",
     ["Circle", 7], [3, -4], [[1, 2], [0, 0]]],
    [2, False, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, "", "", [], None, None, ID_A, 0, 0, 0,
     "Active", "Empty", [0, 0], []],
]

TYPES: dict[str, Any] = {
    "types": {
        "Status": {"enum": ["Active", "Blocked"]},
        "Shape": {"enum": {"Circle": "U32", "Empty": None}},
        "Point": {"struct": {"x": "I32", "y": "I32"}},
    },
    "tables": {
        "everything": {"columns": EVERY_TYPE_COLUMNS, "primary_key": ["id"],
                       "rows": EVERY_TYPE_ROWS},
        "secret": {"columns": [["id", "U32"], ["note", "String"]], "public": False,
                   "rows": [[1, "owner only"]]},
    },
    "row_level_security": ["SELECT * FROM everything WHERE owner = :sender"],
}

SPEC: dict[str, Any] = {"databases": {"samples": SAMPLES, "types": TYPES}}


BLOCKED_AT = 1_788_000_000_000_000  # µs: 2026-08-29


def directory_spec(rows: Any = None) -> dict[str, Any]:
    """The origin's directory tables as a SpacetimeDB module would declare them (columns
    as in the shipped schema file), filled with `rows` (default: the demo rows of
    `komm_policy.demo`, as {table: [{column: value}]}), and the `log_decisions` reducer
    of the decision-log sink."""
    if rows is None:
        from komm_policy.demo import DEMO_TABLES
        rows = DEMO_TABLES
    return {"types": {"DecisionRecord": {"struct": {"id": "String", "record": "String"}}},
            "reducers": {"log_decisions": [["records", "Array<Ref:DecisionRecord>"]]},
            "tables": {
        "blocked_ips": {
            "columns": [["ip", "String"], ["reason", "String"], ["blocked_at", "Timestamp"],
                        ["active", "Bool"]],
            "primary_key": ["ip"],
            "rows": [[r["ip"], r["reason"], BLOCKED_AT, r["active"]]
                     for r in rows["blocked_ips"]]},
        "message_categories": {
            "columns": [["id", "U32"], ["name", "String"], ["email_address", "String"],
                        ["description", "String"], ["active", "Bool"]],
            "primary_key": ["id"],
            "rows": [[r["id"], r["name"], r["email_address"], r["description"], r["active"]]
                     for r in rows["message_categories"]]},
        "account": {
            "columns": [["id", "U32"], ["identity", "Identity"], ["name", "String"],
                        ["email", "String"], ["is_active", "Bool"],
                        ["last_synced", "Option<Timestamp>"]],
            "primary_key": ["id"],
            "rows": [[r["id"], r["identity"], r["name"], r["email"], r["is_active"], None]
                     for r in rows["account"]]},
        "admin_identities": {
            "columns": [["identity", "Identity"]], "primary_key": ["identity"],
            "rows": [[r["identity"]] for r in rows["admin_identities"]]},
        "subscriptions": {
            "columns": [["id", "U32"], ["subscriber_account_id", "U32"],
                        ["subscriber_email", "String"], ["category_id", "U32"],
                        ["subscribed_at", "Option<Timestamp>"], ["active", "Bool"]],
            "primary_key": ["id"],
            "rows": [[r["id"], r["subscriber_account_id"], r["subscriber_email"],
                      r["category_id"], None, r["active"]] for r in rows["subscriptions"]]},
        "mailing_rules": {  # private: only the owner's token may read it
            "columns": [["id", "U32"], ["pattern", "String"]], "primary_key": ["id"],
            "public": False, "rows": [[1, "*@spam.example"]]},
    }}


SPEC["databases"]["komm"] = directory_spec()
