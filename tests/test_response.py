"""Decision → wire response (hook/response.py), and the token check (hook/app.py).

Every encoded body is also run through `stalwart_parse_problems`, the independent
re-statement of what Stalwart's serde types accept.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import msgspec
import pytest

from komm_policy.decision import DEFAULT_REPLIES, Decision, Reply, RuleRef
from komm_policy.hook import response as wire_response
from komm_policy.hook.app import token_matches
from komm_policy.policyset import load_policy_set
from komm_policy.runtime import decide
from komm_policy.wire import (
    RESPONSE_DECODER,
    AddHeader,
    AddRecipient,
    ChangeFrom,
    ChangeHeader,
    DeleteHeader,
    DeleteRecipient,
    InsertHeader,
    ReplaceContents,
    WireReply,
    WireResponse,
    decode_request,
)

from .conftest import POLICIES
from .shipped import directory as demo_directory
from .stalwart_oracle import stalwart_parse_problems

RULE = RuleRef("some_rule", "policies/x.policy", 3)

ALL_MODIFICATIONS = (
    ChangeFrom(value="bounce@solawi.example"),
    ChangeFrom(value="bounce@solawi.example", parameters={"SIZE": "100", "BODY": None}),
    AddRecipient(value="archive@solawi.example"),
    AddRecipient(value="archive@solawi.example", parameters={"NOTIFY": "NEVER"}),
    DeleteRecipient(value="info@solawi.example"),
    ReplaceContents(value="Subject: x\r\n\r\nbody"),
    AddHeader(name="X-Komm-Category", value="Info"),
    InsertHeader(index=0, name="X-First", value="1"),
    ChangeHeader(index=1, name="Subject", value="[Info] hello"),
    DeleteHeader(index=2, name="X-Spam-Flag"),
)


def body(decision: Decision, *, shadow: bool = False) -> dict:
    encoded = wire_response.encode(decision, shadow=shadow)
    assert stalwart_parse_problems(encoded) == [], encoded
    # what we send is also what our own decoder reads back
    RESPONSE_DECODER.decode(encoded)
    return json.loads(encoded)


def reply_json(status: int, enhanced: str | None, message: str) -> dict:
    return {"status": status, "enhanced_status": enhanced, "message": message,
            "disconnect": False, "enhancedStatus": enhanced}


# ---------------------------------------------------------------------------------------
# Each action's wire form


def test_plain_accept_is_exactly_the_constant() -> None:
    decision = Decision("connect", "accept", rule=RULE)
    assert wire_response.encode(decision) == b'{"action":"accept"}'
    assert wire_response.ACCEPT_BODY == b'{"action":"accept"}'
    assert wire_response.to_wire(decision) == WireResponse(action="accept")
    # the constant is what the generic encoder produces too
    assert msgspec.json.encode(wire_response.to_wire(decision)) == b'{"action":"accept"}'


def test_accept_never_carries_a_reply() -> None:
    decision = Decision("rcpt", "accept", reply=Reply(250, "2.1.5", "ok"))
    assert wire_response.encode(decision) == b'{"action":"accept"}'


def test_accept_with_modifications() -> None:
    decision = Decision("data", "accept", modifications=(
        AddHeader(name="X-Komm-Category", value="Info"),))
    assert body(decision) == {"action": "accept", "modifications": [
        {"type": "addHeader", "name": "X-Komm-Category", "value": "Info"}]}


def test_reject() -> None:
    decision = Decision("rcpt", "reject", Reply(550, "5.7.1", "You are not allowed"), rule=RULE)
    assert body(decision) == {"action": "reject",
                              "response": reply_json(550, "5.7.1", "You are not allowed")}


def test_reject_without_enhanced_code() -> None:
    decision = Decision("rcpt", "reject", Reply(554, None, "No"))
    assert body(decision) == {"action": "reject", "response": reply_json(554, None, "No")}


def test_tempfail_is_a_reject_with_a_4xx_status() -> None:
    decision = Decision("rcpt", "tempfail", Reply(451, "4.3.0", "Directory unavailable"))
    data = body(decision)
    assert data == {"action": "reject",
                    "response": reply_json(451, "4.3.0", "Directory unavailable")}
    assert 400 <= data["response"]["status"] < 500


def test_discard() -> None:
    decision = Decision("data", "discard", DEFAULT_REPLIES["discard"])
    assert body(decision) == {"action": "discard",
                              "response": reply_json(250, "2.0.0", "Message queued for delivery")}


def test_modifications_are_only_sent_with_accept() -> None:
    decision = Decision("data", "reject", Reply(550, "5.7.1", "No"),
                        modifications=(AddHeader(name="X-A", value="b"),))
    assert "modifications" not in body(decision)


def test_quarantine_is_an_accept_with_the_redirect() -> None:
    """The runtime turns quarantine into header + recipient modifications; the wire form
    is accept with exactly those (Stalwart's own `quarantine` would drop the message)."""
    policy_set = load_policy_set(POLICIES)
    payload = json.loads((Path(__file__).parent / "fixtures" / "stalwart" /
                          "derived-data-1.json").read_text())
    payload["message"]["headers"].append(["X-Spam-Flag", " YES\r\n"])
    decision = decide(policy_set, decode_request(json.dumps(payload)),
                      demo_directory())
    assert decision.action == "quarantine"
    data = body(decision)
    assert data["action"] == "accept"
    assert "response" not in data
    assert data["modifications"] == [
        {"type": "addHeader", "name": "X-Komm-Quarantine",
         "value": "flagged as spam by an upstream filter"},
        {"type": "addHeader", "name": "X-Komm-Original-Recipients",
         "value": "info@solawi.example"},
        {"type": "deleteRecipient", "value": "info@solawi.example"},
        {"type": "addRecipient", "value": "quarantine@solawi.example"},
    ]


@pytest.mark.parametrize("decision", [
    Decision("rcpt", "reject", Reply(550, "5.7.1", "No")),
    Decision("rcpt", "tempfail", Reply(451, "4.3.0", "Later")),
    Decision("data", "discard", Reply(250, "2.0.0", "ok")),
    Decision("data", "quarantine", modifications=(AddRecipient(value="q@solawi.example"),)),
    Decision("data", "accept", modifications=(AddHeader(name="X", value="y"),)),
], ids=["reject", "tempfail", "discard", "quarantine", "accept-with-mods"])
def test_shadow_is_always_a_plain_accept(decision: Decision) -> None:
    assert wire_response.encode(decision, shadow=True) == b'{"action":"accept"}'
    assert wire_response.to_wire(decision, shadow=True) == WireResponse(action="accept")


def test_internal_error_body_is_a_451_reject() -> None:
    assert stalwart_parse_problems(wire_response.INTERNAL_ERROR_BODY) == []
    decision = Decision("rcpt", "tempfail",
                        Reply(451, "4.3.0", "Temporary local problem, please try again later"))
    assert wire_response.encode(decision) == wire_response.INTERNAL_ERROR_BODY


# ---------------------------------------------------------------------------------------
# Modifications


@pytest.mark.parametrize("modification", ALL_MODIFICATIONS,
                         ids=lambda m: f"{type(m).__name__}")
def test_each_modification_encodes_with_its_type_tag(modification: object) -> None:
    data = body(Decision("data", "accept", modifications=(modification,)))
    [encoded] = data["modifications"]
    expected_tag = {
        ChangeFrom: "changeFrom", AddRecipient: "addRecipient",
        DeleteRecipient: "deleteRecipient", ReplaceContents: "replaceContents",
        AddHeader: "addHeader", InsertHeader: "insertHeader",
        ChangeHeader: "changeHeader", DeleteHeader: "deleteHeader",
    }[type(modification)]
    assert encoded["type"] == expected_tag
    fields = {f: getattr(modification, f) for f in modification.__struct_fields__}
    for name, value in fields.items():
        if value is None:
            # Stalwart parses `parameters` as a map: null is a parse error, so leave it out
            assert name not in encoded
        else:
            assert encoded[name] == value
    assert None not in encoded.values()


def test_all_modifications_together_parse_in_stalwart() -> None:
    data = body(Decision("data", "accept", modifications=ALL_MODIFICATIONS))
    assert [m["type"] for m in data["modifications"]] == [
        "changeFrom", "changeFrom", "addRecipient", "addRecipient", "deleteRecipient",
        "replaceContents", "addHeader", "insertHeader", "changeHeader", "deleteHeader"]
    assert data["modifications"][0] == {"type": "changeFrom",
                                        "value": "bounce@solawi.example"}
    assert data["modifications"][1]["parameters"] == {"SIZE": "100", "BODY": None}


def test_oracle_rejects_null_parameters() -> None:
    """The reason `parameters` must be omitted: the oracle (like Stalwart) refuses null."""
    assert stalwart_parse_problems(
        b'{"action":"accept","modifications":[{"type":"changeFrom","value":"a",'
        b'"parameters":null}]}') != []


def test_wire_reply_keys() -> None:
    reply = WireReply(status=550, enhanced_status="5.7.1", message="m", disconnect=False,
                      enhancedStatus="5.7.1")
    assert list(json.loads(msgspec.json.encode(reply))) == [
        "status", "enhanced_status", "message", "disconnect", "enhancedStatus"]


def test_every_fixture_decision_encodes_to_something_stalwart_parses(
        stalwart_fixtures: dict[str, bytes]) -> None:
    policy_set = load_policy_set(POLICIES)
    directory = demo_directory()
    actions = set()
    for name, payload in stalwart_fixtures.items():
        decision = decide(policy_set, decode_request(payload), directory)
        actions.add(decision.action)
        for shadow in (False, True):
            encoded = wire_response.encode(decision, shadow=shadow)
            assert stalwart_parse_problems(encoded) == [], (name, encoded)
    assert {"accept", "reject"} <= actions


# ---------------------------------------------------------------------------------------
# token_matches

TOKEN = b"s3cret-token"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("header", [
    "Bearer s3cret-token",
    "bearer s3cret-token",
    "BEARER s3cret-token",
    "  Bearer   s3cret-token  ",
    basic("stalwart", "s3cret-token"),
    basic("anyone", "s3cret-token"),
    basic("", "s3cret-token"),
    "basic " + base64.b64encode(b"stalwart:s3cret-token").decode(),
])
def test_token_accepted(header: str) -> None:
    assert token_matches(header, TOKEN)


@pytest.mark.parametrize("header", [
    None,
    "",
    "Bearer",
    "Bearer ",
    "Bearer wrong",
    "Bearer s3cret-token-and-more",
    "Bearer s3cret",
    basic("stalwart", "wrong"),
    basic("s3cret-token", ""),  # the token as user name is not the password
    "Basic " + base64.b64encode(b"s3cret-token").decode(),  # no colon: no password
    "Basic not*base64!",
    "Basic czNjcmV0LXRva2Vu=",  # bad padding
    "Token s3cret-token",
    "Digest s3cret-token",
    "s3cret-token",
])
def test_token_refused(header: str | None) -> None:
    assert not token_matches(header, TOKEN)


def test_basic_password_may_contain_colons() -> None:
    token = b"a:b:c"
    assert token_matches(basic("stalwart", "a:b:c"), token)
    assert not token_matches(basic("stalwart", "a:b"), token)
