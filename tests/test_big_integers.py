"""Integers beyond 64 bits (a tester's finding): a policy whose lookup key was
99999999999999999999999 passed `check --strict`, `test` and `eval`, then `serve` answered
every request 451 because the spool entry (msgpack) could not hold the argument.  Now
`check` refuses such a literal (E017, positioned), and a record never fails on a big
integer from anywhere else (a lookup's result, a row key of a wider store)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from komm_policy.cli import main
from komm_policy.decision import LookupRecord
from komm_policy.decisionlog.entries import EntryPacker, record_from_raw
from komm_policy.decisionlog.records import Timestamps
from komm_policy.directory.rows import row_class
from komm_policy.directory.schema import Column, Table
from komm_policy.parser import parse

from .conftest import POLICIES
from .test_decisionlog import decided

BIG = 99999999999999999999999
BIG_KEY = ('    rule big_key: when exists("account", id = 99999999999999999999999) '
           'reject 550 5.7.1 "never"\n')


def _policies(tmp_path: Path, text: str) -> Path:
    directory = tmp_path / "p"
    directory.mkdir()
    (directory / "schema.toml").write_bytes((POLICIES / "schema.toml").read_bytes())
    (directory / "a.policy").write_text(text)
    return directory


def test_check_strict_refuses_a_lookup_key_beyond_64_bits(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policies = _policies(tmp_path, "stage ehlo {\n" + BIG_KEY + "    default accept\n}\n")
    code = main(["check", "--strict", str(policies)])
    out, err = capsys.readouterr()
    assert code == 1
    assert f"{policies / 'a.policy'}:2:47: error E017: integer `{BIG}` is outside the " \
           "64-bit integers" in out + err


@pytest.mark.parametrize(("literal", "what"), [
    ("9223372036854775808", "integer"), ("-9223372036854775809", "integer"),
    ("9223372036854775808b", "size"), ("9999999999999999999gib", "size"),
    ("9223372036854775808s", "duration"),
])
def test_literals_outside_64_bits_are_e017(literal: str, what: str) -> None:
    text = f"stage rcpt {{\n    rule r: when message.size > {literal} reject\n}}\n"
    if what == "duration":
        text = f"settings {{\n    deadline = {literal}\n}}\n"
    result = parse(text, "a.policy")
    codes = [(d.code, d.message.split("`")[1]) for d in result.diagnostics]
    assert ("E017", literal) in codes, result.diagnostics
    assert any(d.message.startswith(what) for d in result.diagnostics)


@pytest.mark.parametrize("literal", ["9223372036854775807", "-9223372036854775808", "8gib"])
def test_literals_at_the_64_bit_bounds_are_accepted(literal: str) -> None:
    text = f"stage rcpt {{\n    rule r: when message.size > {literal} reject\n}}\n"
    assert not [d for d in parse(text, "a.policy").diagnostics if d.code == "E017"]


def test_a_header_position_beyond_64_bits_is_e017() -> None:
    text = ('stage data {\n    rule h: when true delete_header "X" at 99999999999999999999 '
            "continue\n}\n")
    [problem] = [d for d in parse(text, "a.policy").diagnostics if d.code == "E017"]
    assert (problem.span.line, problem.span.column) == (2, 44)


_WIDE = row_class(Table("wide", (Column("id", "integer"), Column("name", "text")), ("id",)))


def test_a_record_holds_integers_beyond_64_bits_as_text() -> None:
    request, decision = decided("derived-rcpt-2")
    lookups = (LookupRecord("exists", ("account", BIG), True),
               LookupRecord("lookup", ("wide", 2**64), _WIDE(2**70, "x")),
               LookupRecord("lookup", ("wide", 1), [_WIDE(-(2**63) - 1, "y"), 2**64 - 1]))
    decision = msgspec.structs.replace(decision, lookups=decision.lookups + lookups)
    entry = EntryPacker().pack(request, decision, 0.5, 1.0, "r")
    record, _at = record_from_raw(entry, Timestamps())
    logged = record.lookups[-3:]
    assert logged[0].args == ("account", str(BIG))
    assert logged[1].args == ("wide", str(2**64))
    assert logged[1].result == {"id": str(2**70)}
    assert logged[2].result == [{"id": str(-(2**63) - 1)}, 2**64 - 1]  # u64 still fits
    # the decision's other lookups are as they were
    assert record.lookups[:-3] == tuple(
        record_from_raw(EntryPacker().pack(request, msgspec.structs.replace(
            decision, lookups=decision.lookups[:-3]), 0.5, 1.0, "r"),
            Timestamps())[0].lookups)
