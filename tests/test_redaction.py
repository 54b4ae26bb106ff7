"""Client-IP redaction (`records.redact`): every spelling of the client address goes,
in the HELO and in every other text of the record, through `make_record`, through the
spool entry → record path the writer uses, and through a real server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from komm_policy.decisionlog.entries import line_from_raw, raw_entry
from komm_policy.decisionlog.records import (
    REDACTED,
    Timestamps,
    encode_record,
    make_record,
    redact,
    redact_text,
)
from komm_policy.ipset import IP
from komm_policy.runtime import decide
from komm_policy.wire import Request, decode_request

from .serverproc import Deployment, ServerProcess
from .test_decisionlog import DEMO, policy_set

# (client.ip as sent, HELO) where the HELO names the client address in another spelling.
SPELLINGS = [
    ("192.0.2.66", "[IPv6:::ffff:192.0.2.66]"),
    ("2001:db8:4860::1", "[IPv6:2001:DB8:4860:0:0:0:0:1]"),
    ("::ffff:192.0.2.66", "[IPv6:::FFFF:192.0.2.66]"),
    ("::ffff:192.0.2.66", "[192.0.2.66]"),
    ("192.0.2.66", "[ipv6:::ffff:c000:242]"),
    ("2001:db8:4860::1", "2001:0DB8:4860::0001"),
    ("2001:db8:4860::1", "[IPv6:2001:db8:4860::1]"),
    ("192.0.2.66", "192.0.2.66"),
]
# The literal's remains: only the tag and the brackets may stay.
LEFT = {"[IPv6:[redacted]]", "[ipv6:[redacted]]", "[[redacted]]", "[redacted]"}


def ehlo(ip: str, helo: str) -> Request:
    return decode_request(json.dumps(
        {"context": {"stage": "ehlo", "client": {"ip": ip, "helo": helo}}}))


def _gone(text: str, ip: str, helo: str) -> None:
    inner = helo.strip("[]").split(":", 1)[1] if helo.lower().startswith("[ipv6:") else (
        helo.strip("[]"))
    for spelling in {ip, inner, ip.removeprefix("::ffff:")}:
        assert spelling.lower() not in text.lower(), (spelling, text)


@pytest.mark.parametrize(("ip", "helo"), SPELLINGS)
def test_redaction_removes_every_spelling_of_the_client_address_from_the_helo(
        ip: str, helo: str) -> None:
    request = ehlo(ip, helo)
    decision = decide(policy_set(), request, DEMO)  # type: ignore[arg-type]
    plain = json.loads(encode_record(make_record(request, decision, 0.0)))
    assert plain["helo"] == helo  # without redaction: as sent
    line = encode_record(make_record(request, decision, 0.0, redact_client_ip=True))
    record = json.loads(line)
    assert record["client_ip"] is None
    assert record["helo"] in LEFT
    _gone(line.decode(), ip, helo)


@pytest.mark.parametrize(("ip", "helo"), SPELLINGS)
def test_the_writer_path_redacts_every_spelling_too(ip: str, helo: str) -> None:
    """The spool entry → record path (`entries.line_from_raw`), as the writer runs it."""
    request = ehlo(ip, helo)
    decision = decide(policy_set(), request, DEMO)  # type: ignore[arg-type]
    at = time.time()
    line = line_from_raw(raw_entry(request, decision, 1.5, at, "0123456789abcdef", 7,
                                   redact_client_ip=True), Timestamps())
    record = json.loads(line)
    assert record["client_ip"] is None
    assert record["helo"] in LEFT
    _gone(line.decode(), ip, helo)
    plain = line_from_raw(raw_entry(request, decision, 1.5, at, "0123456789abcdef", 7),
                          Timestamps())
    assert json.loads(plain)["helo"] == helo


@pytest.mark.parametrize(("ip", "text", "expected"), [
    # other addresses stay, also those that contain the client's text
    ("192.0.2.6", "from 192.0.2.66 and 10.192.0.2.6", "from 192.0.2.66 and 10.192.0.2.6"),
    ("::1", "host 2001:db8::1 and fe80::1", "host 2001:db8::1 and fe80::1"),
    ("2001:db8::1", "2001:db8::10 2001:db8::1:0", "2001:db8::10 2001:db8::1:0"),
    # labels, ports, sentence ends, JSON-ish surroundings
    ("192.0.2.66", "ip:192.0.2.66, seen 192.0.2.66:25.", f"ip:{REDACTED}, seen {REDACTED}:25."),
    ("192.0.2.66", "client 192.0.2.66.", f"client {REDACTED}."),
    ("2001:db8::1", "peer=2001:DB8:0::1; ok", f"peer={REDACTED}; ok"),
    ("::1", "[IPv6:::1] [IPv6:0:0:0:0:0:0:0:1]", f"[IPv6:{REDACTED}] [IPv6:{REDACTED}]"),
    # an IPv6 address embedding the IPv4 client (NAT64) names it too
    ("192.0.2.66", "64:ff9b::192.0.2.66", f"64:ff9b::{REDACTED}"),
])
def test_redaction_in_free_text(ip: str, text: str, expected: str) -> None:
    request = ehlo(ip, text)
    decision = decide(policy_set(), request, DEMO)  # type: ignore[arg-type]
    record = redact(make_record(request, decision, 0.0), ip)
    assert record.helo == expected  # exactly what stays
    assert record.client_ip is None


# (client.ip, a host name that spells it, what stays of the host name)
HOST_NAMES = [
    ("192.0.2.66", "host-192-0-2-66.example.net", f"host-{REDACTED}.example.net"),
    ("192.0.2.66", "192-0-2-66.dyn.example", f"{REDACTED}.dyn.example"),
    ("192.0.2.66", "192.0.2.66.static.example", f"{REDACTED}.static.example"),
    ("192.0.2.66", "66-2-0-192.pool.example", f"{REDACTED}.pool.example"),
    ("192.0.2.66", "66.2.0.192.in-addr.arpa", f"{REDACTED}.in-addr.arpa"),
    ("192.0.2.66", "ip-192-000-002-066.Example", f"ip-{REDACTED}.Example"),
    ("192.0.2.66", "v4-066.002.000.192.example", f"v4-{REDACTED}.example"),
    ("192.0.2.66", "pC0000242.dip0.example", f"p{REDACTED}.dip0.example"),
    ("192.0.2.66", "ip192000002066.example", f"ip{REDACTED}.example"),
    ("::ffff:192.0.2.66", "c-192-0-2-66.hsd1.example", f"c-{REDACTED}.hsd1.example"),
    ("2001:db8:4860::1", "2001-db8-4860--1.static.example", f"{REDACTED}.static.example"),
    ("2001:db8:4860::1", "host-2001-0DB8-4860-0000-0000-0000-0000-0001.example",
     f"host-{REDACTED}.example"),
    ("2001:db8:4860::1", "ipv6-2001-db8-4860-0--1.example", f"ipv6-{REDACTED}.example"),
    ("2001:db8:4860::1",
     "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.8.4.8.B.D.0.1.0.0.2.ip6.arpa",
     f"{REDACTED}.ip6.arpa"),
    ("2001:db8:4860::1",
     "2.0.0.1.0.d.b.8.4.8.6.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.v6.example",
     f"{REDACTED}.v6.example"),
    # a different address stays, also one that contains the client's spelling
    ("192.0.2.66", "host-192-0-2-67.example.net", "host-192-0-2-67.example.net"),
    ("192.0.2.6", "host-192-0-2-66.example 10-192-0-2-6.example 192.0.2.6.1.example",
     "host-192-0-2-66.example 10-192-0-2-6.example 192.0.2.6.1.example"),
    ("192.0.2.6", "16.2.0.192.in-addr.arpa", "16.2.0.192.in-addr.arpa"),
    ("192.0.2.66", "pC0000243.dip0.example aC0000242", "pC0000243.dip0.example aC0000242"),
    ("2001:db8:4860::1", "2001-db8-4860--2.example 2001-db8-4860--1-0.example",
     "2001-db8-4860--2.example 2001-db8-4860--1-0.example"),
    ("db8:4860::1", "2001-db8-4860--1.example", "2001-db8-4860--1.example"),
    ("2001:db8:4860::1",
     "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.8.4.8.b.d.0.1.0.0.2.ip6.arpa",
     "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.8.4.8.b.d.0.1.0.0.2.ip6.arpa"),
]


def ehlo_ptr(ip: str, host: str) -> Request:
    return decode_request(json.dumps({"context": {
        "stage": "ehlo", "client": {"ip": ip, "helo": host, "ptr": host}}}))


@pytest.mark.parametrize(("ip", "host", "expected"), HOST_NAMES)
def test_redaction_of_the_client_address_inside_host_names(
        ip: str, host: str, expected: str) -> None:
    """PTR and HELO names: every spelling of the client goes, other addresses stay, by
    `make_record` and by the writer's spool entry → record path."""
    request = ehlo_ptr(ip, host)
    decision = decide(policy_set(), request, DEMO)  # type: ignore[arg-type]
    record = make_record(request, decision, 0.0, redact_client_ip=True)
    assert (record.helo, record.client_ptr, record.client_ip) == (expected, expected, None)
    line = line_from_raw(raw_entry(request, decision, 1.5, time.time(), "0123456789abcdef",
                                   7, redact_client_ip=True), Timestamps())
    written = json.loads(line)
    assert (written["helo"], written["client_ptr"]) == (expected, expected)


def test_host_name_redaction_keeps_a_json_escape_whole() -> None:
    """A control character (written `\\u00XX`) right before digits: the record still
    decodes and keeps the character (a match may not start inside the escape)."""
    for ip, helo in [("0.16.2.66", "\x10" + "0242.x"),
                     ("192.0.2.66", "\x01" + "92-0-2-66"),
                     ("::1", "\x00-0-0-0-0-0-0-1")]:
        request = ehlo(ip, helo)
        decision = decide(policy_set(), request, DEMO)  # type: ignore[arg-type]
        record = make_record(request, decision, 0.0, redact_client_ip=True)
        assert record.helo is not None and record.helo[0] == helo[0], (ip, record.helo)


def test_client_address_literals_are_redacted_by_a_real_server(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path)
    with ServerProcess(deployment, "--no-watch", "--redact-client-ip") as server:
        for ip, helo in SPELLINGS[:3]:
            body = json.dumps({"context": {"stage": "ehlo",
                                           "client": {"ip": ip, "helo": helo}}})
            assert server.post(body).status_code == 200
        for ip, host, _ in HOST_NAMES[:3]:
            body = json.dumps({"context": {"stage": "ehlo", "client": {
                "ip": ip, "helo": host, "ptr": host}}})
            assert server.post(body).status_code == 200
    lines = deployment.log_file.read_text().splitlines()
    assert len(lines) == 6
    for line, (ip, helo) in zip(lines, SPELLINGS[:3], strict=False):
        assert json.loads(line)["helo"] == "[IPv6:[redacted]]"
        _gone(line, ip, helo)
    for line, (ip, _, expected) in zip(lines[3:], HOST_NAMES[:3], strict=True):
        record = json.loads(line)
        assert (record["helo"], record["client_ptr"]) == (expected, expected)
        assert ip not in line


def test_redaction_time_is_linear_in_the_text() -> None:
    """Hostile texts full of colons and dots: 16 times the text costs about 16 times the
    CPU time (quadratic would be 256 times; generous margin for a noisy machine)."""
    cases = [("192.0.2.66", p) for p in (
        "1.2.3.4:", "ab:cd ", "::ffff:", "1:", "192-", "192-0-2-", "0-0-", "66.2.0.",
        "C000024", "192000002", "1.")]
    cases += [("2001:db8:4860::1", p) for p in (
        "2001-db8-4860-", "0-", "-", "0.", "2001-", "1.0.0.0.", "a-")]
    cases += [("::1", p) for p in ("0-", "-", "0.", "--1-")]
    for ip, pattern in cases:
        client = IP.parse(ip)
        assert client is not None
        costs = []
        for count in (1000, 16000):
            best = float("inf")
            for _ in range(3):
                start = time.process_time()
                redact_text(pattern * count, client)
                best = min(best, time.process_time() - start)
            costs.append(best)
        assert costs[1] < 64 * max(costs[0], 1e-4), (ip, pattern, costs)


@pytest.mark.parametrize("text", [
    "192.0.2.66", "::ffff:192.0.2.66", "::FFFF:C000:0242", "2001:DB8:4860:0:0:0:0:1",
    "::1", "::", "1.2.3", "1.2.3.256", "fe80::1%eth0", "2001:db8::1::2", "", "a.b.c.d",
    "192.0.2.66\x00"])
def test_ip_key_is_the_test_of_ip_parse(text: str) -> None:
    parsed = IP.parse(text)
    assert IP.key(text) == (None if parsed is None else (parsed.version, parsed.value))
