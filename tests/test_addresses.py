"""Addresses as Stalwart sends them: `valid_address`, the normal form (lower case, A-label
domain), and the shipped policy accepting dequoted local parts."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from komm_policy import addresses
from komm_policy.addresses import (
    comparison_form,
    domain,
    normalize_address,
    normalize_domain,
    valid_address,
)
from komm_policy.directory.keys import address_key
from komm_policy.policyset import compile_text, load_policy_set
from komm_policy.runtime import decide
from komm_policy.wire import decode_request

from .conftest import POLICIES
from .shipped import directory as demo_directory


@pytest.mark.parametrize("address", [
    "a@b.example",
    "odd user@example.org",          # "odd user"@example.org after Stalwart's dequoting
    "a@b@example.org",               # "a@b"@example.org
    'a"b\\c@example.org',            # quoted pairs, dequoted
    "a..b@x.org", ".a.@x.org",       # quoted Dot-string look-alikes
    "o'brien+tag@sub.example.co",
    "ü" * 32 + "@example.org",       # 64 octets
    "a" * 64 + "@example.org",
    "jürgen@bücher.example",
    "x@xn--bcher-kva.example",
    "user@[192.0.2.1]",
    "a@[IPv6:2001:db8::1]",
    "a@[ipv6:2001:db8::1]",          # the tag is case-insensitive
    "a@[IPv6:::ffff:192.0.2.1]",
])
def test_valid(address):
    assert valid_address(address) is True


@pytest.mark.parametrize("address", [
    "", "no-at-sign", "@example.org", "a@", "a@localhost", "a@b.c", "a@-b.example",
    "a@b-.example", "a@b..example", "a@.example", "a@example.",
    "ü" * 40 + "@example.org",       # 80 octets
    "a" * 65 + "@example.org",
    "a\x00b@example.org", "a\x1bb@example.org", "a\x7fb@example.org", "a\x85b@example.org",
    "a\r\nb@example.org", "a\tb@example.org",
    "a@[IPv6:2001:db8::12345]",
    "a@[256.1.1.1]", "a@[1.2.3]", "a@[IPv4:1.2.3.4]", "a@[x:y]", "a@[192.0.2.1",
    "a@" + "b" * 64 + ".example",
    "a@" + ".".join(["b" * 60] * 5) + ".example",
    "a" * 60 + "@" + ".".join(["b" * 60] * 4) + ".ex",   # > 254 octets in all
    "a\ud800@example.org",
])
def test_invalid(address):
    assert valid_address(address) is False


@pytest.mark.parametrize(("text", "expected"), [
    ("Spam@Bücher.Example", "spam@xn--bcher-kva.example"),
    ("spam@xn--bcher-kva.example", "spam@xn--bcher-kva.example"),
    ("SPAM@XN--BCHER-KVA.EXAMPLE", "spam@xn--bcher-kva.example"),
    ("a@b@Bücher.example", "a@b@xn--bcher-kva.example"),
    ("bücher.example", "bücher.example"),              # no @: not read as a domain
    ("À", "à"),
    ("Ａ@ＥＸＡＭＰＬＥ.org", "ａ@example.org"),            # UTS #46 maps full-width letters
    ("x@a\u200db.example", "x@a\u200db.example"),         # IDNA refuses: lower-cased as sent
    ("x@" + "ü" * 2000, "x@" + "ü" * 2000),
    ("x@☃..example", "x@☃..example"),
    ("", ""),
])
def test_normal_form(text, expected):
    assert normalize_address(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("bücher.example", "xn--bcher-kva.example"),       # compared with domain(…)
    ("Spam@Bücher.Example", "spam@xn--bcher-kva.example"),
    ("Postmaster", "postmaster"),
    ("", ""),
])
def test_comparison_form(text, expected):
    assert comparison_form(text) == expected


@given(st.text())
def test_normal_form_never_raises(text):
    assert isinstance(comparison_form(text), str)
    assert isinstance(normalize_address(text), str)
    assert isinstance(normalize_domain(text), str)
    assert isinstance(valid_address(text), bool)


_ADDRESS_TEXT = st.one_of(
    st.text(),
    st.builds(lambda local, dom, pad: f"{pad}{local}@{dom}{pad}",
              st.text(min_size=1, max_size=12), st.from_regex(r"[A-Za-zÄÖÜäöüßİK\u212a.\-]{1,20}",
                                                             fullmatch=True),
              st.sampled_from(["", " ", "\u3000", "\u00a0", "\t"])))


@given(_ADDRESS_TEXT)
def test_a_normal_address_that_is_ascii_is_its_own_lookup_key(text):
    """The generated address lookups (`codegen_lookups.NORMALISED`) skip `lower()` for
    `sender` and `rcpt`: their normal form, stripped, is its own key when it is ASCII."""
    normal = normalize_address(text).strip()
    if normal.isascii():
        assert address_key(normal) == normal
        assert normal.lower() == normal


def test_domain_is_in_normal_form():
    assert domain("spam@Bücher.Example") == "xn--bcher-kva.example"


def _mail_request(address: str):
    return decode_request(json.dumps({
        "context": {"stage": "mail", "client": {"ip": "198.51.100.23", "helo": "mx.example"}},
        "envelope": {"from": {"address": address}, "to": []}}))


@pytest.fixture(scope="module")
def shipped():
    return load_policy_set(POLICIES)


@pytest.mark.parametrize("address", ["odd user@example.org", "a@b@example.org", ""])
def test_shipped_policy_accepts_dequoted_senders(shipped, address):
    decision = decide(shipped, _mail_request(address), demo_directory())
    assert decision.action == "accept"


@pytest.mark.parametrize("address", ["a@localhost", "ü" * 40 + "@example.org", "a\x00@x.org"])
def test_shipped_policy_rejects_invalid_senders(shipped, address):
    decision = decide(shipped, _mail_request(address), demo_directory())
    assert str(decision.reply) == "553 5.1.7 Invalid sender address"


@pytest.mark.parametrize(("sender", "expected"), [
    ("spam@xn--bcher-kva.example", "reject"),
    ("spam@bücher.example", "reject"),
    ("spam@BÜCHER.example", "reject"),
    ("spam@buecher.example", "accept"),
])
def test_idn_domains_compare_by_a_label(sender, expected):
    policy = compile_text("""
        let blocked = ["bücher.example"]
        stage mail {
            rule blocked_domain: when domain(sender) in blocked reject 550 5.7.1 "no"
            rule blocked_sender: when sender == "spam@Bücher.example" reject 550 5.7.1 "no"
            default accept
        }""").policy_set
    assert decide(policy, _mail_request(sender), demo_directory()).action == expected


def _data_request(recipients):
    return decode_request(json.dumps({
        "context": {"stage": "data", "client": {"ip": "198.51.100.23"}},
        "envelope": {"from": {"address": "anna@example.org"},
                     "to": [{"address": a} for a in recipients]},
        "message": {"headers": [["Subject", " hi\r\n"]], "contents": "", "size": 1}}))


def test_idn_recipients_are_deleted_in_the_form_stalwart_holds():
    # values compare by A-label, but deleteRecipient must name what Stalwart stored
    policy = compile_text("""
        settings { quarantine_to = "quarantine@solawi.example" }
        stage data {
            rule drop_idn:
                when any r in envelope.to: r == "info@xn--bcher-kva.example"
                delete_recipient "info@Bücher.example"
                continue
            rule hold: when true quarantine "held"
        }""").policy_set
    decision = decide(policy, _data_request(["Info@Bücher.example", "b@example.org"]),
                      demo_directory())
    deleted = [m.value for m in decision.modifications if type(m).__name__ == "DeleteRecipient"]
    assert deleted == ["info@bücher.example", "b@example.org"]   # the quarantine's own


def test_delete_recipient_of_an_envelope_value_names_it_as_sent():
    policy = compile_text("""
        stage data {
            rule drop: when true delete_recipient envelope.to[0] continue
            default accept
        }""").policy_set
    decision = decide(policy, _data_request(["Info@Bücher.example"]),
                      demo_directory())
    assert [m.value for m in decision.modifications] == ["info@bücher.example"]


_ASCII_PIECES = st.sampled_from(["a", "Z", "0", "-", ".", "@", " ", "xn--", "[", "]", "_",
                                 "example", "ü", "-a", "a-", "..", "\x7f", "b" * 63, "00",
                                 "a1", ".org", "b" * 64, "1.2.3.4", "IPv6:"])


@settings(max_examples=400, deadline=None)
@given(text=st.one_of(st.text(max_size=70), st.lists(_ASCII_PIECES, max_size=12).map("".join),
                      st.from_regex(r"[a-z0-9.+-]{1,70}@[a-z0-9.-]{1,70}\.[a-z-]{1,70}",
                                    fullmatch=True)))
def test_the_ascii_fast_path_agrees_with_the_full_check(text: str) -> None:
    """`valid_address` / `valid_domain` answer the all-ASCII case with one regex; with that
    regex never matching they must answer the same."""
    fast = (addresses.valid_address(text), addresses.valid_domain(text),
            addresses.valid_address_or_domain(text))
    never = re.compile(r"(?!)")
    saved = addresses._ASCII_DOMAIN, addresses._ASCII_MAILBOX
    addresses._ASCII_DOMAIN = addresses._ASCII_MAILBOX = never
    try:
        full = (addresses.valid_address(text), addresses.valid_domain(text),
                addresses.valid_address_or_domain(text))
    finally:
        addresses._ASCII_DOMAIN, addresses._ASCII_MAILBOX = saved
    assert fast == full, text
