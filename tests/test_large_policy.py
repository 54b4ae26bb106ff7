"""A policy with a multi-megabyte literal or name: `check` stays bounded in memory and time,
and its diagnostics stay a few lines long with the caret still right (found by the tester).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from komm_policy.errors import EXCERPT_WIDTH, Span, source_excerpt
from komm_policy.policyset import MAX_POLICY_FILE_BYTES, load_path

from .test_cli import run

BIG = 4_000_000


def _caret_column(excerpt: str) -> tuple[str, int]:
    """(the shown source text, the index of the caret in it)."""
    source, underline = excerpt.split("\n")
    gutter = source.index("| ") + 2
    return source[gutter:], underline.index("^") - gutter


@pytest.mark.parametrize("column", [1, 30, 2_000_000, BIG - 5, BIG + 3])
def test_excerpt_of_a_long_line_is_a_window_with_the_caret_right(column: int) -> None:
    line = "".join(chr(ord("a") + i % 26) for i in range(BIG + 3))
    excerpt = source_excerpt("first\n" + line + "\nlast", Span("f", 2, column, 2, column + 3))
    assert len(excerpt) < 3 * EXCERPT_WIDTH
    shown, caret = _caret_column(excerpt)
    assert shown.startswith("…") == (column > 41)
    assert shown.endswith("…") == (column < BIG + 3 - EXCERPT_WIDTH + 41)
    expected = line[column - 1] if column <= len(line) else None
    if expected is not None:
        assert shown[caret] == expected


def test_excerpt_of_a_short_line_is_whole() -> None:
    excerpt = source_excerpt('let a = "x" + 5', Span("f", 1, 13, 1, 14))
    assert excerpt == ' 1 | let a = "x" + 5\n   |             ^'


def _policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "big.policy"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text, code", [
    ('let big = "{x}" + 5\n', "E008"),
    ('stage rcpt {{\n rule r: when {a} == "x" accept\n default accept\n}}\n', "E102"),
    ('stage rcpt {{\n rule r: when {a}(sender) accept\n default accept\n}}\n', "E101"),
    ('settings {{ quarantine_to = "q@x.example" }}\nstage data {{\n'
     ' rule r: when true add_recipient "{x}" continue\n default accept\n}}\n', "E125"),
    ('let a = "{{{x}}}"\nstage rcpt {{ default accept }}\n', "E102"),
])
def test_a_multi_megabyte_literal_or_name_gives_a_short_diagnostic(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, code: str) -> None:
    path = _policy(tmp_path, text.format(x="x" * BIG, a="a" * BIG))
    status, out, _err = run(capsys, "check", str(path))
    assert status == 1
    assert f"error {code}" in out
    assert len(out) < 2_000, out[:3_000]
    assert f"({BIG}" in out or "…" in out


_MEASURE = """
import resource, sys
from komm_policy.policyset import load_path
result = load_path(sys.argv[1])
assert result.policy_set is not None, result.diagnostics
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def _peak_rss(path: Path) -> int:
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True,
                          text=True, timeout=120, check=True)
    return int(done.stdout.strip())


def test_memory_for_a_multi_megabyte_literal_is_linear_with_a_small_constant(
        tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    large = tmp_path / "large"
    large.mkdir()
    rule = "stage connect {\n default accept\n}\n"
    (small / "a.policy").write_text('let big = "x"\n' + rule, encoding="utf-8")
    # Plain characters, escapes and `{{` braces: each once made the lexer keep one
    # backtracking frame (hundreds of bytes) per character.
    body = "x" * BIG + "\\n" * (BIG // 4) + "{{" * (BIG // 4)
    (large / "a.policy").write_text(f'let big = "{body}"\n' + rule, encoding="utf-8")
    size = len(body)
    extra = _peak_rss(large) - _peak_rss(small)
    assert extra < 25 * size, f"{extra / size:.0f} bytes of memory per source byte"


def test_a_policy_file_over_the_limit_is_refused_where_the_limit_passes(
        tmp_path: Path) -> None:
    path = _policy(tmp_path, "let a = 1\nlet b = \"" + "y" * MAX_POLICY_FILE_BYTES + "\"\n")
    result = load_path(path)
    assert result.policy_set is None
    [diagnostic] = result.diagnostics
    assert diagnostic.code == "E016"
    assert (diagnostic.span.line, diagnostic.span.column) == (2, MAX_POLICY_FILE_BYTES - 10 + 1)
