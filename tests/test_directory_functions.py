"""The organisation's helpers are policy functions over the shipped tables
(`policies/00-directory.policy`, issue #11 §2): every shipped test case still decides as
written, and over the demo directory each helper answers exactly as the first-version
built-ins did, computed here by an independent reference in Python (the built-ins' rules:
active rows only, addresses case-insensitive, the lowest account id first, an admin is an
active account whose identity is in `admin_identities`, a subscription counts for any
active account with that address)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from komm_policy.demo import DEMO_TABLES
from komm_policy.policyset import Source, compile_sources, load_policy_set, read_sources
from komm_policy.policytest.runner import Coverage, run_cases
from komm_policy.policytest.spec import load_file
from komm_policy.runtime import decide

from .conftest import POLICIES
from .shipped import DIRECTORY_FILE, SCHEMA, compile_with_directory, directory
from .test_runtime import request

SHIPPED = load_policy_set(POLICIES)

_CASES = [(path, case) for path in sorted(POLICIES.glob("*.test.toml"))
          for case in load_file(path, SCHEMA)]


@pytest.mark.parametrize(("path", "case"), _CASES,
                         ids=[f"{p.name}:{c.name}" for p, c in _CASES])
def test_every_shipped_case_still_decides_as_written(path, case):
    (result,) = run_cases(SHIPPED, [case], Coverage(SHIPPED))
    assert result.status == "passed", (result.problems, case.error)


# -- the reference: the first-version built-ins' rules over the demo rows ----------------


def _active(table: str, flag: str = "active") -> list[dict[str, Any]]:
    return [dict(r) for r in DEMO_TABLES[table] if r[flag]]


def ref_ip_blocked(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in ipaddress.ip_network(r["ip"]) for r in _active("blocked_ips"))


def ref_category(address: str) -> dict[str, Any] | None:
    return next((r for r in _active("message_categories")
                 if r["email_address"].lower() == address.lower()), None)


def _accounts(address: str) -> list[dict[str, Any]]:
    return sorted((r for r in _active("account", "is_active")
                   if r["email"].lower() == address.lower()), key=lambda r: r["id"])


def ref_is_admin(address: str) -> bool:
    admins = {r["identity"].lower() for r in DEMO_TABLES["admin_identities"]}
    return any(a["identity"] and a["identity"].lower() in admins for a in _accounts(address))


def ref_subscribed(address: str, category: dict[str, Any] | None) -> bool:
    if category is None:
        return False
    ids = {a["id"] for a in _accounts(address)}
    return any(s["subscriber_account_id"] in ids and s["category_id"] == category["id"]
               for s in _active("subscriptions"))


PROBE = """
stage rcpt {
    rule probe:
        when true
        log "{is_admin(sender)}|{subscribed(sender, category(rcpt))}|{category(rcpt) != none}|{account(sender) != none}"
        continue
    default accept
}
stage connect {
    rule probe_ip: when true log "{ip_blocked(client.ip)}" continue
    default accept
}
"""  # noqa: E501

_SENDERS = ["Anna.Mueller@gmail.com", "jane@solawi.example", "JANE@Solawi.Example",
            "john.doe@example.org", "peter.schmidt@web.example", "stranger@example.net"]
_LISTS = ["info@solawi.example", "GEMUESE@solawi.example", "buchhaltung@solawi.example",
          "vorstand@solawi.example", "postmaster@solawi.example", "x@example.org"]
_IPS = ["192.0.2.66", "192.0.2.10", "::ffff:192.0.2.66", "2001:db8:4860::1",
        "198.19.1.1", "203.0.113.200", "127.0.0.1"]


def _probe() -> Any:
    result = compile_with_directory(PROBE)
    assert result.policy_set is not None, [str(d) for d in result.diagnostics]
    return result.policy_set


def test_the_helpers_answer_as_the_built_ins_did_over_the_demo_directory():
    probe = _probe()
    demo = directory()
    compared = 0
    for sender in _SENDERS:
        for rcpt in _LISTS:
            (line,) = decide(probe, request("rcpt", sender=sender, to=[rcpt]), demo).logs
            category = ref_category(rcpt)
            expected = [ref_is_admin(sender), ref_subscribed(sender, category),
                        category is not None, bool(_accounts(sender))]
            assert line == "|".join(str(v).lower() for v in expected), (sender, rcpt)
            compared += 1
    for ip in _IPS:
        (line,) = decide(probe, request("connect", ip=ip), demo).logs
        assert line == str(ref_ip_blocked(ip)).lower(), ip
        compared += 1
    assert compared == 43
    # the grid reaches every answer of every helper
    assert {ref_is_admin(s) for s in _SENDERS} == {True, False}
    assert {ref_subscribed(s, ref_category(r)) for s in _SENDERS for r in _LISTS} == {
        True, False}
    assert {ref_ip_blocked(ip) for ip in _IPS} == {True, False}


def test_a_changed_helper_is_noticed():
    # the comparison can fail: an `is_admin` that ignores the admin table differs
    text = DIRECTORY_FILE.read_text(encoding="utf-8")
    wrong = text.replace('a.identity != "" and exists("admin_identities", '
                         'identity = a.identity)', 'a.identity != ""')
    assert wrong != text
    sources = [Source(str(DIRECTORY_FILE), wrong),
               *(s for s in read_sources(POLICIES)[0] if not s.name.endswith(
                   "00-directory.policy"))]
    result = compile_sources(sources, schema=SCHEMA)
    assert result.policy_set is not None
    demo = directory()
    req = request("rcpt", sender="Anna.Mueller@gmail.com", to=["gemuese@solawi.example"])
    assert decide(SHIPPED, req, demo).action == "reject"
    assert decide(result.policy_set, req, demo).action == "accept"
