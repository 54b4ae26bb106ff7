"""`X-Komm-Original-Recipients`: the quarantined message's envelope recipients as an RFC 5322
§3.4 address list, never as RFC 2047 encoded words (which may not encode an addr-spec,
RFC 2047 §5(3)); operator finding: a U-label recipient came out as one encoded word and a
bare Postmaster recipient as a leading `", "`."""

from __future__ import annotations

import pytest

from komm_policy import outgoing
from komm_policy.wire import AddHeader, DeleteRecipient

from .sent import header_problems, read_back
from .test_runtime import request, run

NAME = "X-Komm-Original-Recipients"
QUARANTINE = """
settings { quarantine_to = "quarantine@solawi.example" }
stage data { default quarantine }"""


def quarantined(to: list[str]) -> tuple[str, list[str]]:
    """The header's value and the deleted recipients of quarantining a message for `to`."""
    decision = run(QUARANTINE, request("data", sender="a@example.org", to=to))
    assert decision.action == "quarantine" and not decision.fallback, decision
    (value,) = [m.value for m in decision.modifications
                if isinstance(m, AddHeader) and m.name == NAME]
    deleted = [m.value for m in decision.modifications if isinstance(m, DeleteRecipient)]
    return value, deleted


@pytest.mark.parametrize(("to", "value"), [
    # the finding: a U-label domain is written as its A-label, the UTF-8 local part stays
    (["ünï@bücher.example", "a@xn--bcher-kva.example"],
     "ünï@xn--bcher-kva.example, a@xn--bcher-kva.example"),
    (["Spam@Bücher.Example"], "spam@xn--bcher-kva.example"),
    # the finding: a bare Postmaster recipient ("") is named, not an empty list element
    (["", "info@solawi.example"], "(Postmaster), info@solawi.example"),
    ([""], "(Postmaster)"),
    # Stalwart dequotes local parts; the header quotes them again
    (["odd user@example.org"], '"odd user"@example.org'),
    (["a@b@example.org", "x.y@example.org"], '"a@b"@example.org, x.y@example.org'),
    (['say "hi"\\@example.org'], '"say \\"hi\\"\\\\"@example.org'),
    ([".dot@example.org", "a..b@example.org"], '".dot"@example.org, "a..b"@example.org'),
    # text that looks like an encoded word is an addr-spec here: nobody decodes it
    (["=?utf-8?q?x?=@example.org"], "=?utf-8?q?x?=@example.org"),
])
def test_recipients_are_an_address_list(to: list[str], value: str) -> None:
    sent, deleted = quarantined(to)
    assert sent == value
    assert "=?utf-8?" not in sent or to == ["=?utf-8?q?x?=@example.org"]
    assert not sent.startswith(",") and len(deleted) == len(to)


def test_an_ascii_list_is_a_clean_7bit_header() -> None:
    value, _ = quarantined(["anna@example.org", "odd user@example.org", ""])
    assert header_problems(NAME, value) == []


def test_a_long_list_is_folded_between_addresses_only() -> None:
    to = [f"mitglied{i:03d}@bücher.example" for i in range(60)] + ["ünï@solawi.example"]
    value, _ = quarantined(to)
    lines = f"{NAME}: {value}".split("\r\n")
    assert len(lines) > 10
    assert max(len(line.encode("utf-8")) for line in lines) <= 78
    assert all(line.startswith(" ") and line.rstrip().endswith((",", ".example"))
               for line in lines[1:])
    unfolded = read_back(value) if value.isascii() else value.replace("\r\n", "")
    assert unfolded.split(", ") == [
        f"mitglied{i:03d}@xn--bcher-kva.example" for i in range(60)] + ["ünï@solawi.example"]


def test_controls_are_replaced_and_an_overlong_address_is_cut() -> None:
    assert outgoing.addr_spec("a\x1b[2J@example.org") == '"a?[2J"@example.org'
    long = "x" * 5000 + "@example.org"
    value = outgoing.address_list_value([long, "b@example.org"], NAME)
    assert header_problems(NAME, value) == []
    assert value.endswith("...,\r\n b@example.org")
    utf8 = outgoing.address_list_value(["ü" * 3000 + "@example.org"], NAME)
    assert len(f"{NAME}: {utf8}".encode()) <= 998 and utf8.endswith("ü...")
