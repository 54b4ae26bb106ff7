"""IP addresses in text: RFC 5952 form for IPv6, IPv4-mapped clients as IPv4, in templates
and in the decision log alike."""

from __future__ import annotations

import json

import pytest

from komm_policy.decisionlog import make_record
from komm_policy.ipset import IP
from komm_policy.policyset import compile_text
from komm_policy.runtime import decide
from komm_policy.wire import decode_request

from .shipped import directory as demo_directory

POLICY = compile_text("""
stage connect {
    rule show: when true reject 550 5.7.1 "client {client.ip} server {server.ip}"
}
""").policy_set


@pytest.mark.parametrize(("sent", "shown"), [
    ("2001:0DB8:4860:0000:0000:0000:0000:0001", "2001:db8:4860::1"),
    ("2001:DB8::1", "2001:db8::1"),
    ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),      # one 0 field is not compressed
    ("2001:0:0:1:0:0:0:1", "2001:0:0:1::1"),               # the longest run of zeros
    ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),         # the first of equal runs
    ("0:0:0:0:0:0:0:1", "::1"),
    ("::ffff:192.0.2.66", "192.0.2.66"),                   # IPv4-mapped: the IPv4 address
    ("::FFFF:C000:0242", "192.0.2.66"),
    ("192.0.2.66", "192.0.2.66"),
])
def test_ip_text(sent, shown):
    assert str(IP.parse(sent)) == shown
    request = decode_request(json.dumps({"context": {
        "stage": "connect", "client": {"ip": sent}, "server": {"ip": sent}}}))
    decision = decide(POLICY, request, demo_directory())
    assert decision.reply is not None
    assert decision.reply.message == f"client {shown} server {shown}"
    assert make_record(request, decision, 1.0).client_ip == shown
