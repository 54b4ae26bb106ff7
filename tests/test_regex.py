"""Policy regexes run by RE2: linear time, RE2's dialect, positioned errors for what RE2
cannot run, nothing printed on a bad pattern."""

from __future__ import annotations

import time

import pytest

from komm_policy.policyset import compile_text
from komm_policy.regex import RegexError, compile_regex


def first_error(source: str):
    result = compile_text(source)
    errors = [d for d in result.diagnostics if d.code.startswith("E")]
    assert errors, "expected an error"
    return errors[0]


@pytest.mark.parametrize(("pattern", "offset", "words"), [
    (r"(a)\1", 3, "backreference"),
    (r"(?P<x>a)(?P=x)", 8, "named backreference"),
    (r"a(?=b)", 1, "look-ahead"),
    (r"a(?!b)", 1, "negative look-ahead"),
    (r"(?<=a)b", 0, "look-behind"),
    (r"(?<!a)b", 0, "negative look-behind"),
    (r"(?>a+)b", 0, "atomic"),
    (r"(a)?(?(1)b|c)", 4, "conditional"),
    (r"a(?#note)", 1, "comments"),
    (r"a++", 2, "possessive"),
    (r"a*+", 2, "possessive"),
    (r"a{2}+", 4, "possessive"),
    (r"(ab", 0, "missing `)`"),
    (r"x(a(b)", 1, "missing `)`"),
    (r"ab)", 2, "`)` without `(`"),
    (r"a{1001}", 1, "repetition size"),
    (r"[z-a]", 1, "range"),
    (r"\p{Nope}", 0, "invalid"),
])
def test_constructs_re2_cannot_run_are_positioned_errors(pattern, offset, words):
    with pytest.raises(RegexError) as info:
        compile_regex(pattern)
    assert info.value.offset == offset
    assert words in info.value.message
    assert info.value.hint


@pytest.mark.parametrize(("pattern", "offset", "said"), [
    (r"(\pL{500}\pN{500}){3}", 18, "pattern too large: the repetition {3} and the counts "
     "inside it multiply to more than 1000 copies (RE2's limit; invalid repetition size)"),
    (r"(a{10}){101}", 7, "pattern too large: the repetition {101} and the counts inside "
     "it multiply to more than 1000 copies (RE2's limit; invalid repetition size)"),
    (r"a{3,1001}", 1, "invalid repetition size {3,1001}: a count is at most 1000 (RE2's "
     "limit)"),
    (r"\pL{1000}", 0, "pattern too large: its compiled program needs more than 8 MiB "
     "(RE2's limit); use fewer or shorter repetitions of large classes such as \\pL"),
])
def test_a_pattern_too_large_for_re2_says_so_with_the_limit(pattern, offset, said):
    with pytest.raises(RegexError) as info:
        compile_regex(pattern)
    assert (info.value.offset, info.value.message) == (offset, said)


def test_nested_counts_up_to_the_limit_compile():
    compile_regex(r"(a{10}){100}")


@pytest.mark.parametrize("pattern", [
    r"a+?", r"a*?b", r"a??", r"a{2,3}?", r"x}+", r"[+*]+", r"\++", r"(?i)a", r"(?P<n>a)",
    r"(?<n>a)", r"(?:a|b)+", r"[[:alpha:]]+", r"\pL+", r"a\/b", r"\Aa\z", r"[\]]",
])
def test_re2_constructs_compile(pattern):
    compile_regex(pattern)


def test_check_points_at_the_construct_with_a_hint():
    source = ("stage ehlo {\n  rule r: when client.helo matches /^(a)\\1$/ accept\n"
              "  default accept\n}")
    diagnostic = first_error(source)
    assert diagnostic.code == "E011"
    assert (diagnostic.span.line, diagnostic.span.column) == (2, 41)   # the backslash
    assert "backreference" in diagnostic.message and diagnostic.hint


def test_a_bad_pattern_prints_nothing(capfd):
    for pattern in [r"(a", r"a(?=b)", r"\1", r"a{5000}", r"[z-a]", r"\p{Nope}"]:
        with pytest.raises(RegexError):
            compile_regex(pattern)
    compile_text("stage ehlo { rule r: when client.helo matches /(?=x)/ accept default accept }")
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


@pytest.mark.parametrize(("pattern", "flags", "text", "expected"), [
    # \Z is Python's "end of text": translated to RE2's \z, same meaning
    (r"\A\s*\Z", "", "   ", True),
    (r"\A\s*\Z", "", " x ", False),
    (r"a\Z", "", "a\n", False),
    # $ without m is the end of the text only (Python also matched before a final newline)
    (r"a$", "", "a\n", False),
    (r"a$", "m", "a\nb", True),
    (r"a.b", "s", "a\nb", True),
    (r"a.b", "", "a\nb", False),
    (r"X", "i", "x", True),
    (r"ü", "i", "Ü", True),                  # case folding is Unicode
    # \w \d \s \b are ASCII-only
    (r"\w", "", "ü", False),
    (r"\d", "", "\u0663", False),           # ARABIC-INDIC DIGIT THREE
    (r"\s", "", "\u00a0", False),
    (r"\bviagra\b", "", "üviagra", True),    # ü is not a word character
    (r"[[:^ascii:]]", "", "ü", True),
    (r"\pL", "", "ü", True),
    # x flag: whitespace and # comments removed before RE2 sees the pattern
    (r"a b c # letters", "x", "abc", True),
    (r"a\ b", "x", "a b", True),
    (r"[ ]x", "x", " x", True),
])
def test_dialect(pattern, flags, text, expected):
    assert (compile_regex(pattern, flags).search(text) is not None) is expected


def test_catastrophic_pattern_runs_in_linear_time():
    rx = compile_regex(r"^(a+)+$")
    start = time.thread_time()  # CPU time: other processes' load does not count
    assert rx.search("a" * 26 + "!") is None
    assert rx.search("a" * 100_000 + "!") is None
    assert rx.search("a" * 100_000) is not None
    assert time.thread_time() - start < 0.5


def test_a_megabyte_is_searched_quickly():
    rx = compile_regex(r"(?i)\b(viagra|casino\W+bonus|lottery\W+winner|crypto\W+giveaway)\b")
    text = " " + "a " * (1 << 19)
    start = time.thread_time()  # CPU time: other processes' load does not count
    assert rx.search(text) is None
    assert rx.search(text + "Casino\tBonus") is not None
    assert time.thread_time() - start < 0.5


def test_text_with_lone_surrogates_is_searched():
    assert compile_regex("b").search("a\ud800b") is not None


def test_regexes_compare_by_pattern_and_flags():
    assert compile_regex("a", "i") == compile_regex("a", "i")
    assert compile_regex("a", "i") != compile_regex("a")
    assert len({compile_regex("a"), compile_regex("a")}) == 1


def test_memoised_answers_are_the_answers():
    from komm_policy.regex import MEMO_ENTRIES, MEMO_TEXT
    rx = compile_regex(r"\A[^@]+@[^@]+\.[a-z]{2,}\z")
    texts = [f"user{i}@example.org" if i % 3 else f"user{i}@example" for i in range(
        MEMO_ENTRIES * 2 + 7)]
    for _ in range(2):
        assert [rx.search(t) is not None for t in texts] == [i % 3 != 0 for i in range(
            len(texts))]
    assert len(rx._memo) <= MEMO_ENTRIES
    long_text = "a" * (MEMO_TEXT + 1) + "@example.org"
    assert rx.search(long_text) is not None and long_text not in rx._memo
