"""Absurd durations (a tester's finding): `deadline = 9223372036854775807d` type-checked and
compiled, since only the number before the unit was held to 64 bits.  Now a duration is at
most 2⁶³−1 ns (about 292 years, `DURATION_MAX_MS`); a longer one is E017 at its position,
and the longest accepted one runs a decision (timed lookups) without overflowing."""

from __future__ import annotations

from pathlib import Path

import pytest

from komm_policy.cli import main
from komm_policy.parser import parse
from komm_policy.parser_expressions import DURATION_MAX_MS
from komm_policy.runtime import decide

from .test_runtime import CountingDirectory, FakeClock, policy, request


def _e017(text: str) -> list[tuple[int, int, str]]:
    return [(d.span.line, d.span.column, d.message) for d in parse(text, "a.policy").diagnostics
            if d.code == "E017"]


def test_the_bound_is_2_to_the_63_nanoseconds() -> None:
    assert DURATION_MAX_MS == 9223372036854
    assert DURATION_MAX_MS * 1_000_000 <= 2**63 - 1 < (DURATION_MAX_MS + 1) * 1_000_000


@pytest.mark.parametrize(("longest", "too_long"), [
    ("9223372036854ms", "9223372036855ms"), ("9223372036s", "9223372037s"),
    ("153722867m", "153722868m"), ("2562047h", "2562048h"), ("106751d", "106752d"),
])
def test_each_unit_is_held_to_the_bound(longest: str, too_long: str) -> None:
    assert _e017(f"settings {{ deadline = {longest} }}") == []
    [(line, column, message)] = _e017(f"settings {{\n    deadline = {too_long}\n}}")
    assert (line, column) == (2, 16)
    assert message == (f"duration `{too_long}` is outside the 64-bit nanoseconds "
                       f"(at most 9223372036854ms, about 292 years)")


def test_a_duration_in_a_comparison_is_held_to_the_bound_too() -> None:
    text = "let a = 1s\nstage rcpt {\n    rule r: when a < 9223372036854775807d reject\n}\n"
    [(line, column, _message)] = _e017(text)
    assert (line, column) == (3, 22)


def test_check_shows_the_absurd_duration_with_its_position_and_caret(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.policy").write_text(
        "settings {\n    deadline = 9223372036854775807d\n}\n"
        "stage rcpt {\n    default accept\n}\n")
    code = main(["check", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 1
    text = out + err
    assert (f"{tmp_path / 'a.policy'}:2:16: error E017: duration `9223372036854775807d` is "
            "outside the 64-bit nanoseconds") in text
    lines = text.splitlines()
    source = next(line for line in lines if "deadline = 9223372036854775807d" in line)
    caret = lines[lines.index(source) + 1]
    assert caret.index("^") == source.index("9223372036854775807d"), text
    assert caret.strip(" |") == "^" + "~" * (len("9223372036854775807d") - 1), text


def test_the_longest_settings_run_a_timed_decision_without_overflow() -> None:
    text = f"""
    settings {{ lookup_timeout = {DURATION_MAX_MS}ms deadline = {DURATION_MAX_MS}ms }}
    stage rcpt {{
        rule admin: when is_admin(sender) reject
        default accept
    }}
    """
    clock = FakeClock()
    clock.now = 1e9  # a monotonic clock after a long uptime
    directory = CountingDirectory(blocking=True, clock=clock, delay=3600.0)
    decision = decide(policy(text), request("rcpt", sender="peter.schmidt@web.example",
                                            to=["info@solawi.example"]), directory, clock=clock)
    assert decision.action == "accept" and decision.fallback is False
    assert directory.calls, "the lookups ran (timed: the directory blocks)"
