"""The SATS-JSON decoder on every captured `/sql` sample and on both row forms of every type."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import pytest

from komm_policy.spacetimedb.http import decode_sql_body
from komm_policy.spacetimedb.sats import (
    ArrayType,
    Decoder,
    Prim,
    ProductType,
    Ref,
    SatsError,
    SumType,
    Typespace,
    parse_type,
)
from komm_policy.spacetimedb.schema import parse_module

from .spacetimedb_double.samples import EVERY_TYPE_ROWS, ID_A, ID_B, TYPES
from .spacetimedb_double.state import Database
from .spacetimedb_double.wire import dumps

SAMPLES = Path(__file__).parent / "fixtures" / "spacetimedb"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def test_samples_are_the_shared_captures_with_provenance() -> None:
    names = sorted(p.name for p in SAMPLES.iterdir())
    assert names == ["01-sql_rows-option-unicode.json", "02-sql_bigint-u256-u128.json",
                     "03-sql_identity-u64-bool-compact.json",
                     "04-sql_empty-rows-compact.json", "SOURCES.md"]
    # SOURCES.md: the index counted 1087 characters for 01 and 522 for 02
    assert len(sample("01-sql_rows-option-unicode.json").decode()) == 1087
    assert len(sample("02-sql_bigint-u256-u128.json").decode()) == 522


def test_sample_01_option_and_unicode() -> None:
    (result,) = decode_sql_body(sample("01-sql_rows-option-unicode.json"))
    assert result.names == ("security_id", "description", "code", "scale")
    assert result.rows == [
        ("GBP", "British Pound Sterling", "£", 2),
        ("PASS", "Gym class pass — 1 unit redeems 1 class booking", "🎟", 0),
    ]
    assert result.total_duration_micros == 167
    assert result.stats == {"rows_inserted": 0, "rows_deleted": 0, "rows_updated": 0}


def test_sample_02_u256_hex_and_u128_number() -> None:
    (result,) = decode_sql_body(sample("02-sql_bigint-u256-u128.json"))
    assert result.names == ("identity", "connection_id")
    ((u256, u128),) = result.rows
    assert u256 == int("c2005efe02e92547ddd4bd106e84a281ead78a30fa26f42e619d70b20917c3dd", 16)
    assert u128 == 118584542101933595460429904643539362103  # exact: beyond 2**53


def test_sample_03_identity_u64_bool_positional() -> None:
    (result,) = decode_sql_body(sample("03-sql_identity-u64-bool-compact.json"))
    assert result.names == ("event_id", "kind", "identity", "species_id", "hp_permille",
                            "bait_item_id", "success")
    assert [r[0] for r in result.rows] == [10, 30, 20, 40]
    assert result.rows[0] == (10, 1, ID_A, 7, 300, 0, True)
    assert result.rows[3] == (40, 2, ID_B, 9, 500, 0, False)
    assert all(len(r[2]) == 64 for r in result.rows)


def test_sample_04_empty_rows_keep_the_schema() -> None:
    (result,) = decode_sql_body(sample("04-sql_empty-rows-compact.json"))
    assert result.rows == []
    assert len(result.columns.elements) == 7
    assert result.total_duration_micros == 302


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("*.json")))
def test_every_sample_fails_loudly_when_a_value_is_mistyped(name: str) -> None:
    """Change one column's declared type to String: decoding must fail with a path."""
    raw = json.loads(sample(name))
    raw[0]["schema"]["elements"][0]["algebraic_type"] = {"Bool": []}
    if not raw[0]["rows"]:
        raw[0]["rows"] = [[1] * len(raw[0]["schema"]["elements"])]
    with pytest.raises(SatsError) as e:
        decode_sql_body(json.dumps(raw).encode())
    assert e.value.path == "$[0].rows[0][0]"


# --------------------------------------------------------------------------------------
# Every column type, in both row forms (the double encodes, independently of the decoder).

EXPECTED_ROW_1 = (
    1, True, 255, 65535, 2**64 - 1, 2**128 - 1, 2**256 - 1, -128, -(2**31), -(2**63),
    -(2**127), -(2**255), 0.5, "Grüße 🎟 'quoted'", b"\x00\xff\x10", ("a", "b"), "x", ID_A,
    ID_B, 118584542101933595460429904643539362103,
    dt.datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=dt.UTC),
    dt.timedelta(seconds=1.5), "Blocked", ("Circle", 7), (3, -4), ((1, 2), (0, 0)))
EXPECTED_ROW_2 = (
    2, False, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, "", b"", (), None, None, ID_A, 0,
    dt.datetime(1970, 1, 1, tzinfo=dt.UTC), dt.timedelta(0), "Active", ("Empty", None),
    (0, 0), ())


@pytest.fixture(scope="module")
def types_db() -> Database:
    return Database.from_spec("types", TYPES)


@pytest.fixture(scope="module")
def everything_decoder(types_db: Database):  # type: ignore[no-untyped-def]
    module = parse_module(json.loads(dumps(types_db.schema_v9())))
    table = module.tables["everything"]
    return Decoder(module.typespace).product(table.row_type)


@pytest.mark.parametrize("form", ["array", "object"])
def test_every_type_decodes_in_both_row_forms(types_db: Database, everything_decoder,  # type: ignore[no-untyped-def]
                                              form: str) -> None:
    table = types_db.tables["everything"]
    strings = types_db.encode_rows(table, EVERY_TYPE_ROWS, form)
    assert strings[0].startswith("{" if form == "object" else "[")
    decoded = [everything_decoder(json.loads(s)) for s in strings]
    assert decoded == [EXPECTED_ROW_1, EXPECTED_ROW_2]


def test_object_form_writes_unit_as_empty_object_and_array_form_as_empty_array(
        types_db: Database) -> None:
    table = types_db.tables["everything"]
    obj = json.loads(types_db.encode_rows(table, EVERY_TYPE_ROWS[1:], "object")[0])
    arr = json.loads(types_db.encode_rows(table, EVERY_TYPE_ROWS[1:], "array")[0])
    assert obj["maybe"] == [1, {}] and obj["status"] == [0, {}]
    assert obj["owner"] == {"__identity__": "0x" + ID_A}
    assert arr[16] == [1, []] and arr[22] == [0, []]


def test_sql_result_of_every_type_decodes(types_db: Database) -> None:
    from .spacetimedb_double.server import Double
    from .spacetimedb_double.state import State
    state = State.from_spec({"databases": {"types": TYPES}})
    body = Double(state).run_select(state.databases["types"], "SELECT * FROM everything",
                                    owner=True)
    (result,) = decode_sql_body(dumps(body).encode())
    assert result.rows == [EXPECTED_ROW_1, EXPECTED_ROW_2]


def test_refs_are_resolved_through_the_typespace(types_db: Database) -> None:
    module = parse_module(json.loads(dumps(types_db.schema_v9())))
    table = module.tables["everything"]
    status = table.column("status")
    assert status is not None and isinstance(status.type, Ref)
    assert module.describe(status.type) == "Status(Active|Blocked)"
    assert module.describe(table.column("maybe_id").type) == "Option<Identity>"  # type: ignore[union-attr]
    assert module.describe(table.column("points").type) == "Array<Point(x: I32, y: I32)>"  # type: ignore[union-attr]
    assert module.tables["secret"].access == "private"
    assert module.rls_filters("everything") == (
        "SELECT * FROM everything WHERE owner = :sender",)
    assert module.rls_filters("secret") == ()


# --------------------------------------------------------------------------------------
# Value forms and refusals


def dec(t: object):  # type: ignore[no-untyped-def]
    return Decoder(Typespace()).compile(t)  # type: ignore[arg-type]


OPTION_STRING = parse_type({"Sum": {"variants": [
    {"name": {"some": "some"}, "algebraic_type": {"String": []}},
    {"name": {"some": "none"}, "algebraic_type": {"Product": {"elements": []}}}]}})


@pytest.mark.parametrize("raw,expected", [
    ([0, "x"], "x"), ([1, []], None), ([1, {}], None), ({"some": "x"}, "x"),
    ({"none": []}, None), ({"0": "x"}, "x"), (None, None),
])
def test_option_forms(raw: object, expected: object) -> None:
    assert dec(OPTION_STRING)(raw) == expected


@pytest.mark.parametrize("t,raw,message", [
    (Prim("U8"), 256, "256 is out of range for U8"),
    (Prim("U8"), -1, "out of range"),
    (Prim("U64"), True, r"expected U64 \(a number\), found a boolean"),
    (Prim("I64"), 1.5, "found a number"),
    (Prim("U256"), "0xzz", "is not a U256"),
    (Prim("Bool"), 1, "expected a boolean"),
    (Prim("String"), ["x"], "expected a string, found an array"),
    (ArrayType(Prim("U8")), "0g", "hex"),
    (OPTION_STRING, [2, []], "expected an option"),
    (OPTION_STRING, [0, 5], "expected a string"),
])
def test_wrong_values_are_refused_with_a_reason(t: object, raw: object, message: str) -> None:
    with pytest.raises(SatsError, match=message):
        dec(t)(raw)


def test_product_field_mismatches_name_the_fields() -> None:
    t = ProductType((("a", Prim("U8")), ("b", Prim("String"))))
    decode = Decoder().product(t)
    assert decode({"b": "x", "a": 1}) == (1, "x")
    with pytest.raises(SatsError, match="expected 2 fields, found 1"):
        decode([1])
    with pytest.raises(SatsError, match="unknown 'c'; missing 'b'"):
        decode({"a": 1, "c": 2})
    with pytest.raises(SatsError) as e:
        decode([1, 2])
    assert e.value.path == "$[1]"
    with pytest.raises(SatsError) as e:
        decode({"a": 1, "b": 2})
    assert e.value.path == "$.b"


def test_sum_forms_and_unknown_variants() -> None:
    t = SumType((("A", ProductType(())), ("B", Prim("U8"))))
    decode = dec(t)
    assert decode([1, 5]) == ("B", 5)
    assert decode({"B": 5}) == ("B", 5)
    assert decode({"0": []}) == ("A", None)
    with pytest.raises(SatsError, match="unknown variant tag 2"):
        decode([2, []])
    with pytest.raises(SatsError, match="unknown variant 'C'"):
        decode({"C": []})


def test_floats_null_is_nan_and_recursive_refs_are_cut() -> None:
    assert math.isnan(dec(Prim("F64"))(None))
    looping = Typespace([Ref(0)])
    with pytest.raises(SatsError, match="Ref chain too long"):
        Decoder(looping).compile(Ref(0))
    self_ref = Typespace([ArrayType(Ref(0))])
    with pytest.raises(SatsError, match="nests too deeply"):
        Decoder(self_ref).compile(Ref(0))


def test_type_parser_refuses_unknown_kinds_and_accepts_builtin_wrapper() -> None:
    assert parse_type({"Builtin": {"U8": []}}) == Prim("U8")
    with pytest.raises(SatsError, match="unknown type kind 'Float'"):
        parse_type({"Float": []})
    with pytest.raises(SatsError, match="one key"):
        parse_type({"U8": [], "U16": []})
