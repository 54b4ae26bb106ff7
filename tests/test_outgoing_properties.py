"""Property: whatever text a request carries, what komm-policy sends is safe (issue #8).

Arbitrary request text (controls, CR/LF, encoded words, very long and non-ASCII values)
goes through every modification and through templates, both directly (`outgoing`) and
through a compiled policy (`decide`).  What comes out is a single clean address, or a
header value that is 7-bit, free of controls and folded within 998 octets, and that reads
back (RFC 2047 decoding, as a mail reader does) as the cleaned text.  Checks are the
independent ones of `tests/sent.py`.  Example counts are kept small (a few seconds).
"""

from __future__ import annotations

import json
import re

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from komm_policy import outgoing
from komm_policy.builtins import valid_address
from komm_policy.policyset import compile_text
from komm_policy.runtime import decide
from komm_policy.text import clean_header_text
from komm_policy.wire import (
    MAX_TEXT,
    AddHeader,
    AddRecipient,
    ChangeFrom,
    ChangeHeader,
    DeleteRecipient,
    InsertHeader,
    decode_request,
)

from .sent import address_problems, header_problems, read_back
from .test_runtime import DEMO

FAST = settings(deadline=None, max_examples=150,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_PIECES = [
    "\r\n", "\r", "\n", "\x00", "\x1b", "\x07", "\x7f", "\x85", "\t", " ", "  ",
    "=?", "?=", "=?utf-8?q?", "=?us-ascii?q?kasse@solawi.example=0D=0ARCPT_TO:<x@evil.example>?=",
    "=?utf-8?b?R3LDvMOfZQ==?=", "_", "=0D=0A", "@", "<", ">", ",", '"', "\\",
    "kasse@solawi.example", "RCPT TO:<x@evil.example>", "Gemüse", "Grüße", "日本語", "🙂",
    "\u2028", "\ufeff", "x" * 100, "ü" * 40,
]
request_text = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(_PIECES) | st.text(max_size=8), max_size=40).map("".join),
    st.builds(lambda a, n, b: a * n + b, st.sampled_from(["a", "ü", "a ", "ü ", "=?"]),
              st.integers(0, 3000), st.text(max_size=20)),
)
field_text = request_text.map(lambda text: text[:MAX_TEXT])
"""Text for the envelope and HELO, which the wire bounds (header values it does not)."""
header_names = st.sampled_from(["X-Test", "Subject", "X-Komm-Original-Recipients",
                                "X-" + "n" * 74])


def expected_reading(text: str) -> str:
    """What a reader should see: the text without controls, trimmed, long runs of
    whitespace shortened (module `outgoing`, documented in docs/language.md §7.5)."""
    cleaned = clean_header_text(text).strip(" \t")
    return re.sub(r"[ \t]{65,}", " ", cleaned)


def same_reading(got: str, text: str) -> bool:
    want = expected_reading(text)
    if got == want:
        return True
    # a short value may keep a long whitespace run (it fits as it is)
    return re.sub(r"[ \t]{65,}", " ", got) == want


@FAST
@given(text=request_text, name=header_names)
@example(text="Gemüse & Obst", name="X-Komm-Category")
@example(text="mx\u0000\u001b.sender.example", name="X-HELO")
@example(text=", ".join(f"m{i}@solawi.example" for i in range(100)),
         name="X-Komm-Original-Recipients")
def test_every_header_value_is_clean_folded_7bit_and_reads_back(text: str, name: str) -> None:
    sent = outgoing.header_value(text, name)
    assert header_problems(name, sent) == []
    assert same_reading(read_back(sent), text), (sent, text)


@FAST
@given(text=request_text)
@example(text="kasse@solawi.example\r\nRCPT TO:<x@evil.example>")
def test_every_address_is_one_clean_address_or_refused(text: str) -> None:
    for make in (outgoing.add_recipient, outgoing.change_from, outgoing.delete_recipient):
        try:
            sent = make(text).value
        except outgoing.UnsafeValue:
            assert not valid_address(text.strip(" \t\r\n").lower() if make is
                                     outgoing.delete_recipient else text.strip(" \t\r\n"))
            continue
        assert address_problems(sent) == []


POLICY = """
settings { quarantine_to = "quarantine@solawi.example" }
stage data {
    rule forward:
        when true
        add_recipient header("X-Forward-To")
        continue
        on error continue
    rule bounce:
        when true
        change_from message.body
        continue
        on error continue
    rule drop:
        when true
        delete_recipient header("X-Drop")
        continue
        on error continue
    rule tag:
        when true
        add_header "X-HELO" client.helo
        insert_header "X-Subject" subject at 0
        change_header "Subject" "[extern] {subject} ({header("X-Forward-To")})"
        add_header "X-Sender" "{sender} via {client.helo}"
        continue
    rule hold:
        when header("X-Hold") != none
        quarantine "held: {subject} from {client.helo}"
    default accept
}
"""
_POLICY_SET = compile_text(POLICY, "property.policy").policy_set
assert _POLICY_SET is not None


@FAST
@given(subject=request_text, forward=request_text, helo=field_text, body=request_text,
       drop=request_text, sender=field_text, hold=st.booleans(),
       to=st.lists(field_text, min_size=1, max_size=4))
def test_every_modification_and_template_sends_only_clean_values(
        subject, forward, helo, body, drop, sender, hold, to) -> None:
    headers = [["Subject", f" {subject}\r\n"], ["X-Forward-To", f" {forward}\r\n"],
               ["X-Drop", f" {drop}\r\n"]]
    if hold:
        headers.append(["X-Hold", " 1\r\n"])
    payload = {
        "context": {"stage": "data", "client": {"ip": "192.0.2.1", "helo": helo},
                    "queue": {"id": "q"}},
        "envelope": {"from": {"address": sender}, "to": [{"address": a} for a in to]},
        "message": {"headers": headers, "contents": body, "size": len(body)},
    }
    decision = decide(_POLICY_SET, decode_request(json.dumps(payload)), DEMO)
    assert decision.cause is None or "internal error" not in decision.cause, decision.cause
    for mod in decision.modifications:
        if isinstance(mod, AddRecipient | ChangeFrom):
            assert address_problems(mod.value) == [], mod
        elif isinstance(mod, DeleteRecipient):  # a valid address, or one of the recipients
            assert (address_problems(mod.value) == []
                    or mod.value in [a.lower() for a in to]), mod
            assert not re.search(r"[\x00-\x1f\x7f-\x9f]", mod.value), mod
        elif isinstance(mod, AddHeader | InsertHeader | ChangeHeader):
            problems = header_problems(mod.name, mod.value)
            if mod.name == "X-Komm-Original-Recipients" and not all(a.isascii() for a in to):
                problems.remove("not 7-bit")  # RFC 6532 UTF-8 addr-specs, never encoded
            assert problems == [], mod
    if hold and decision.action == "quarantine":
        assert decision.modifications[-1] == AddRecipient(value="quarantine@solawi.example")
