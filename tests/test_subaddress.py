"""RFC 5233 sub-addressing built-ins `user`, `detail`, `without_detail` (operator finding:
`gemuese+ernte@solawi.example` was refused as "No such mailing list")."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from komm_policy.addresses import detail, user, without_detail
from komm_policy.runtime import decide

from .conftest import POLICIES
from .test_checker import codes, diagnostics, single
from .test_compiler import holds
from .test_runtime import DEMO, policy, request

# (address, user, detail, without_detail): the documented edge cases
CASES = [
    ("gemuese+ernte@solawi.example", "gemuese", "ernte", "gemuese@solawi.example"),
    ("gemuese@solawi.example", "gemuese", "", "gemuese@solawi.example"),  # no separator
    ("a+@x.example", "a", "", "a@x.example"),  # empty detail
    ("a+b+c@x.example", "a", "b+c", "a@x.example"),  # several: split at the first
    ("odd+user name@x.example", "odd", "user name", "odd@x.example"),  # dequoted "…"
    ("a+b@c@x.example", "a", "b@c", "a@x.example"),  # the last @ ends the local part
    ("+tag@x.example", "+tag", "", "+tag@x.example"),  # no user: not split
    ("", "", "", ""),  # the null sender
    ("no-at+sign", "no-at", "sign", "no-at"),
]


@pytest.mark.parametrize(("address", "u", "d", "w"), CASES)
def test_the_functions(address: str, u: str, d: str, w: str) -> None:
    assert (user(address), detail(address), without_detail(address)) == (u, d, w)


@pytest.mark.parametrize("trace", [False, True])  # generated code, and the traced closures
@pytest.mark.parametrize(("address", "u", "d", "w"), CASES)
def test_both_execution_paths(address: str, u: str, d: str, w: str, trace: bool) -> None:
    text = ("stage mail { rule r: when user(sender) == \"" + u + "\" and detail(sender) == \""
            + d + "\" and without_detail(sender) == \"" + w + "\" reject 550 5.7.1 "
            "\"[{detail(sender)}]\" default accept }")
    decision = decide(policy(text), request("mail", sender=address), DEMO, trace=trace)
    assert decision.action == "reject", (decision.cause, decision.rule)
    assert decision.reply is not None and decision.reply.message == f"[{d}]"
    other = decide(policy(text), request("mail", sender="zz+other@x.example"), DEMO,
                   trace=trace)
    assert other.action == "accept"


def test_eval_a_tagged_list_address_reaches_the_list(tmp_path) -> None:
    payload = {"context": {"stage": "rcpt", "client": {"ip": "198.51.100.23", "port": 1,
                                                        "ptr": None, "helo": "mx.example",
                                                        "activeConnections": 1},
                           "protocol": {"version": 1}},
               "envelope": {"from": {"address": "anna.mueller@gmail.com"},
                            "to": [{"address": "info+ernte@solawi.example"}]}}
    path = tmp_path / "rcpt.json"
    path.write_text(json.dumps(payload))
    for explain in ([], ["--explain"]):
        done = subprocess.run(
            [sys.executable, "-m", "komm_policy", "eval", str(path), "--policies",
             str(POLICIES), "--directory", "memory:demo", "--format", "json", *explain],
            capture_output=True, text=True, timeout=60, check=False)
        assert "No such mailing list" not in done.stdout, done.stdout
        assert json.loads(done.stdout)["decision"]["action"] == "accept", (done.stdout, done.stderr)


def test_linear_in_the_address_length() -> None:
    # CPU-time bound with a generous margin: linear, not quadratic
    long = "a" * 200_000 + "+" * 200_000 + "@x.example"
    start = time.process_time()
    for _ in range(20):
        user(long), detail(long), without_detail(long)
    assert time.process_time() - start < 2.0


@pytest.mark.parametrize(("address", "separator", "u", "d", "w"), [
    ("gemuese-ernte@solawi.example", "-", "gemuese", "ernte", "gemuese@solawi.example"),
    ("gemuese+ernte@solawi.example", "-", "gemuese+ernte", "", "gemuese+ernte@solawi.example"),
    ("a--b--c@x.example", "--", "a", "b--c", "a@x.example"),
    ("a+b@x.example", "", "a+b", "", "a+b@x.example"),  # "" splits nothing
])
@pytest.mark.parametrize("trace", [False, True])
def test_another_separator(address: str, separator: str, u: str, d: str, w: str,
                           trace: bool) -> None:
    assert (user(address, separator), detail(address, separator),
            without_detail(address, separator)) == (u, d, w)
    sep = f'"{separator}"'
    text = ("stage mail { rule r: when user(sender, " + sep + ') == "' + u
            + '" and detail(sender, ' + sep + ') == "' + d + '" and without_detail(sender, '
            + sep + ') == "' + w + '" reject default accept }')
    decision = decide(policy(text), request("mail", sender=address), DEMO, trace=trace)
    assert decision.action == "reject", (decision.cause, decision.rule)


@pytest.mark.parametrize("condition", [
    'user("gemuese+ernte@solawi.example") == "gemuese"',  # constants: folded at load time
    'detail("a+b+c@x.example", "+") == "b+c"',
    'without_detail("info+x@solawi.example") == "info@solawi.example"',
    'without_detail(rcpt) == "info@solawi.example"',
    'detail(rcpt) == ""',
    'user(header("X-Missing")) == none',  # none in, none out
])
def test_in_conditions(condition: str) -> None:
    assert holds(condition, stage="rcpt" if "rcpt" in condition else "data") is True
    assert holds(f"not ({condition})",
                 stage="rcpt" if "rcpt" in condition else "data") is False


@pytest.mark.parametrize("call", ["user()", 'user(sender, "+", "x")', "detail()"])
def test_wrong_arity_is_e104_naming_the_optional_separator(call: str) -> None:
    text = f'stage mail {{ rule r: when {call} == "a" reject default accept }}'
    found = single(diagnostics(text), "E104")
    assert "takes 1 to 2 arguments" in found.message
    assert found.hint is not None and "[separator: " in found.hint


def test_a_wrong_separator_type_is_e105() -> None:
    text = 'stage mail { rule r: when user(sender, 1) == "a" reject default accept }'
    assert codes(diagnostics(text)) == ["E105"]
