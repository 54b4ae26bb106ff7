"""Header reading: decision time for 1 KB, 64 KB and 1 MB header fields (it must be linear).

One data-stage request (`derived-data-1` from the shared fixtures) whose Subject, From and
To each hold N bytes of hostile-looking text: a Subject of short words with encoded words
and folds, a From of quoted strings and an encoded display name, a To list of addresses.
A policy judges all three (RE2 on every Subject, `header("From")`, `addresses("To")`), so
the figure covers JSON decoding, unfolding, RFC 2047 decoding, address-list parsing and
the regex.  Reported: µs per decision and µs per KB of header text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from komm_policy.demo import DEMO_TABLES
from komm_policy.directory.memory import InMemoryDirectory
from komm_policy.policyset import PolicySet, compile_text
from komm_policy.runtime import decide
from komm_policy.wire import decode_request

from .measure import interleaved

FIXTURE = (Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "stalwart"
           / "derived-data-1.json")

POLICY = """
stage data {
    rule spam_subject:
        when any s in headers("Subject"): s matches /(?i)\\b(viagra|casino\\W+bonus)\\b/
        reject 550 5.7.1 "spam"
    rule from_mark:
        when header("From") contains "never-there"
        reject 550 5.7.1 "marked"
    rule to_loop:
        when any a in addresses("To"): a == "loop@solawi.example"
        discard
    default accept
}
"""


def _fill(unit: str, size: int) -> str:
    return unit * max(1, size // len(unit))


def request_body(size: int) -> bytes:
    """The fixture with Subject, From and To of about `size` characters each."""
    body = json.loads(FIXTURE.read_text())
    body["message"]["headers"] = [
        ["Subject", " " + _fill("word =?utf-8?q?w=C3=B6rd?=\r\n\t", size) + "\r\n"],
        ["From", ' =?utf-8?q?J=C3=BCrgen?= ' + _fill('"q" ', size) + "<j@example.org>\r\n"],
        ["To", " " + _fill("member@solawi.example, ", size) + "x@example.org\r\n"],
    ]
    return json.dumps(body).encode()


def _policy() -> PolicySet:
    result = compile_text(POLICY, "bench/headers.policy")
    assert result.policy_set is not None, result.diagnostics
    return result.policy_set


def run(*, sizes: tuple[int, ...], rounds: int, min_seconds: float, chunk_seconds: float,
        log: Any = print) -> dict[str, Any]:
    policy_set = _policy()
    directory = InMemoryDirectory(DEMO_TABLES)
    cases = []
    for size in sizes:
        body = request_body(size)

        def one(data: bytes) -> str:
            return decide(policy_set, decode_request(data), directory).action
        assert one(body) == "accept"
        cases.append((f"{size // 1024:,} KB per field", one, body))
    series = interleaved(cases, rounds=rounds, min_seconds=min_seconds,
                         chunk_seconds=chunk_seconds)
    rows = []
    for size, s in zip(sizes, series, strict=True):
        row = s.as_dict()
        row.update(field_bytes=size, us_per_kb=s.median / (3 * size / 1024))
        rows.append(row)
        log(f"  {s.name}: {s.median:,.0f} µs per decision, {row['us_per_kb']:.2f} µs/KB")
    return {"rows": rows}
