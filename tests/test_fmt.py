"""`komm-policy fmt`: one canonical layout, idempotent, comments kept, meaning unchanged.

The properties run on the shipped set and on generated policies whose whitespace and
comments are scrambled between every pair of tokens: formatting twice equals formatting
once, the AST (and so the compiled policy) is the same, every comment survives in order,
and both texts decide the captured Stalwart payloads alike.
"""

from __future__ import annotations

import io
import os
import re
from argparse import Namespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lark import Token

from komm_policy.both_trees import concrete_parser, parse_both
from komm_policy.cli import fmt as fmt_cli
from komm_policy.cli import main
from komm_policy.formatter import FormatError, format_text
from komm_policy.grammar import lark_parser
from komm_policy.parser import build, parse
from komm_policy.policyset import LoadResult, compile_text
from komm_policy.runtime import decide
from komm_policy.wire import decode_request

from .conftest import POLICIES
from .shipped import SCHEMA, compile_with_directory
from .shipped import directory as demo_directory
from .test_properties import _PRELUDE, FAST, expressions

_COMMENT = re.compile(r"#[^\n]*")


def comments(text: str) -> list[str]:
    tokens = concrete_parser().parse(text).scan_values(lambda v: isinstance(v, Token))
    spans = [(t.start_pos, t.end_pos) for t in tokens]
    inside = lambda pos: any(a <= pos < b for a, b in spans)  # noqa: E731
    return [m.group().rstrip() for m in _COMMENT.finditer(text) if not inside(m.start())]


# ---------------------------------------------------------------------------------------
# The canonical layout, by example

MESSY = """\
# head
let a=[1,2 , 3]   # trailing
let b = not(a)
# c1

# c2
let   c = lower( "x" )[0]
settings{deadline=2s}
stage data{ # open
rule r dry_run : when a and # mid
  # own mid
  b or
      c
log "x {a}" add_header "X" c # t
    reject 550 5.7.1 "m" on error continue
  # before default

default accept # d
# end of block
}
stage connect{default accept}


# eof
"""

CANONICAL = """\
# head
let a = [1, 2, 3]  # trailing
let b = not (a)
# c1

# c2
let c = lower("x")[0]

settings {
    deadline = 2s
}

stage data {  # open
    rule r dry_run:
        when a and  # mid
            # own mid
            b or
            c
        log "x {a}"
        add_header "X" c  # t
        reject 550 5.7.1 "m"
        on error continue

    # before default

    default accept  # d
    # end of block
}

stage connect {
    default accept
}

# eof
"""


def test_messy_text_gets_the_canonical_layout():
    assert format_text(MESSY) == CANONICAL
    assert format_text(CANONICAL) == CANONICAL
    assert comments(CANONICAL) == comments(MESSY)
    assert len(comments(MESSY)) == 12


def test_rules_are_separated_by_one_blank_line_and_blocks_indented():
    text = "stage rcpt { rule a: when true accept rule b: when false continue default accept }"
    assert format_text(text) == (
        "stage rcpt {\n    rule a:\n        when true\n        accept\n\n"
        "    rule b:\n        when false\n        continue\n\n    default accept\n}\n")


@pytest.mark.parametrize(("source", "expected"), [
    ("envelope.to [ 0 ] . name", "envelope.to[0].name"),
    ("f ( x , y )", "f(x, y)"),
    ("x in[1,2]", "x in [1, 2]"),
    ("not(x)", "not (x)"),
    ("x not in  y", "x not in y"),
    ("any v in xs:v==1", "any v in xs: v == 1"),
    ("( a or b ) and c", "(a or b) and c"),
    ("client.ip in [10.0.0.0/8,::1/128]", "client.ip in [10.0.0.0/8, ::1/128]"),
    ('"a{ x }b" == "c"', '"a{ x }b" == "c"'),  # string text is never touched
])
def test_spacing_inside_a_line(source, expected):
    text = f"let v = {source}\n"
    assert format_text(text) == f"let v = {expected}\n"


@pytest.mark.parametrize(("source", "expected"), [
    ("def  f( a ,b )=a==b", "def f(a, b) = a == b"),
    ("def two()=2", "def two() = 2"),
    ("def g(x)=f(x,x) or is_admin(x)", "def g(x) = f(x, x) or is_admin(x)"),
])
def test_function_definitions_are_spaced_like_lets(source, expected):
    # `def` (policy-defined functions, docs/language.md): one line like a `let`
    assert format_text(source + "\n") == expected + "\n"
    assert format_text(expected + "\n") == expected + "\n"


def test_a_syntax_error_is_reported_with_its_position():
    with pytest.raises(FormatError) as caught:
        format_text("stage data {\n  rule r: when == 1 accept\n}\n", "bad.policy")
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.span.file == "bad.policy" and diagnostic.span.line == 2


def test_a_byte_order_mark_and_crlf_line_ends_are_normalised():
    assert format_text("\ufefflet a = 1\r\n# x\r\n") == "let a = 1\n# x\n"


# ---------------------------------------------------------------------------------------
# Properties: the shipped set and scrambled generated policies

_SHIPPED = sorted(POLICIES.glob("*.policy"))
_EXAMPLES = sorted((POLICIES.parent / "examples").glob("*/*.policy"))


@pytest.mark.parametrize("path", _SHIPPED + _EXAMPLES,
                         ids=lambda p: p.relative_to(POLICIES.parent).as_posix())
def test_shipped_and_example_policies_are_formatted(path):
    text = path.read_text(encoding="utf-8")
    assert format_text(text, path.name) == text


def _positions(tree):
    return [(t.data, t.meta.start_pos, t.meta.end_pos) for t in tree.iter_subtrees()
            if not t.meta.empty]


@pytest.mark.parametrize("text", [MESSY] + [p.read_text(encoding="utf-8")
                                             for p in _SHIPPED + _EXAMPLES])
def test_one_parse_gives_both_trees_exactly(text):
    """`fmt` parses once (`both_trees`): its two trees are what the shared parser and the
    concrete one give, positions included."""
    text = text.removeprefix("\ufeff")
    shared, concrete = parse_both(text)
    alone = lark_parser().parse(text, start="start")
    assert shared == alone
    assert _positions(shared) == _positions(alone)
    assert concrete == concrete_parser().parse(text)
    assert parse(text).file == build(shared, text).file


_SEPARATORS = [" ", "  ", "\t", "\n", "\n\n", "\n\n\n  ", " # note\n", "\n# own line\n",
               "\n\n  # after a blank\n\n", "   #trailing #2\n  "]


def scramble(text: str, data: st.DataObject) -> str:
    """The same tokens with random whitespace and comments between them."""
    tokens = list(concrete_parser().parse(text).scan_values(lambda v: isinstance(v, Token)))
    parts = [data.draw(st.sampled_from(["", "# top\n", "\n\n# top\n\n"]))]
    for token in tokens:
        parts.append(str(token))
        parts.append(data.draw(st.sampled_from(_SEPARATORS)))
    return "".join(parts)


def policy(conditions: list[str], stage: str) -> str:
    finals = ["continue", 'reject 550 5.7.1 "no"']
    rules = "\n".join(
        f'  rule r{i}: when {c} log "r{i} {{{c}}}" {finals[i % 2]} on error continue'
        for i, c in enumerate(conditions))
    return f"{_PRELUDE}stage {stage} {{\n{rules}\n  default accept\n}}\n"


def assert_formats_safely(text: str) -> str:
    once = format_text(text, "p.policy")
    assert format_text(once, "p.policy") == once
    assert parse(once, "p.policy").file == parse(text, "p.policy").file
    assert comments(once) == comments(text)
    return once


_TYPED_ATOMS = [
    'sender == "alice@solawi.example"', "client.ip in trusted", "client.helo matches spam",
    "len(envelope.to) > 1", 'local_part(rcpt) in ["postmaster", "abuse"]', "sender != none",
    "(any r in envelope.to: category(r) != none)", "is_admin(sender)", "client.port >= 25",
    'lower(domain(sender)) ends_with "example"', "envelope.to[0] == rcpt",
]
typed_conditions = st.recursive(
    st.sampled_from(_TYPED_ATOMS),
    lambda inner: st.one_of(
        st.lists(inner, min_size=2, max_size=3).map(" and ".join),
        st.lists(inner, min_size=2, max_size=3).map(" or ".join),
        inner.map(lambda c: f"not ({c})"),
        inner.map(lambda c: f"({c})"),
    ),
    max_leaves=6,
)
"""Well-typed conditions for the rcpt stage, so the generated policies compile and decide."""


@pytest.fixture(scope="module")
def payloads(stalwart_fixtures):
    return [decode_request(raw) for raw in stalwart_fixtures.values()]


_DEMO = demo_directory()


def _compile(text: str) -> LoadResult:
    """A generated snippet after the shipped directory file; the shipped set (which has it)
    as it is, against the shipped schema file."""
    if "def ip_blocked(" in text:
        return compile_text(text, "p.policy", schema=SCHEMA)
    return compile_with_directory(text, "p.policy")


def decisions(text: str, requests: list) -> list | None:
    loaded = _compile(text)
    if loaded.policy_set is None:
        return None
    return [(d.action, str(d.reply), d.rule.name if d.rule else None, d.logs, d.fallback)
            for d in (decide(loaded.policy_set, r, _DEMO) for r in requests)]


@pytest.mark.parametrize("path", _SHIPPED, ids=lambda p: p.name)
@settings(FAST, max_examples=15)
@given(data=st.data())
def test_scrambled_shipped_policies_format_back_safely(path, data):
    text = path.read_text(encoding="utf-8")
    assert_formats_safely(scramble(text, data))


@settings(FAST, max_examples=60)
@given(conditions=st.lists(expressions, min_size=1, max_size=3),
       stage=st.sampled_from(["connect", "ehlo", "mail", "rcpt", "data"]), data=st.data())
def test_generated_policies_format_idempotently_and_decide_alike(conditions, stage, data,
                                                                 payloads):
    text = policy(conditions, stage)
    if parse(text, "p.policy").file is None:
        return  # the generators also write invalid literals; fmt refuses those (tested)
    scrambled = scramble(text, data)
    formatted = assert_formats_safely(scrambled)
    assert decisions(formatted, payloads) == decisions(scrambled, payloads)


@settings(FAST, max_examples=40)
@given(conditions=st.lists(typed_conditions, min_size=1, max_size=4), data=st.data())
def test_generated_typed_policies_decide_alike_after_formatting(conditions, data, payloads):
    scrambled = scramble(policy(conditions, "rcpt"), data)
    formatted = assert_formats_safely(scrambled)
    decided = decisions(formatted, payloads)
    assert decided is not None, _compile(formatted).diagnostics
    assert decided == decisions(scrambled, payloads)


def test_the_shipped_set_decides_alike_after_scrambling_and_formatting(payloads):
    texts = [p.read_text(encoding="utf-8") for p in _SHIPPED]
    joined = "\n".join(texts)
    reformatted = "\n".join(format_text(t) for t in texts)
    shipped = decisions(joined, payloads)
    assert shipped is not None and any(d[0] == "reject" for d in shipped)
    assert decisions(reformatted, payloads) == shipped


# ---------------------------------------------------------------------------------------
# The command


def run_fmt(*argv: str) -> tuple[int, str, str]:
    parser_args = Namespace(paths=[], check=False, diff=False)
    for arg in argv:
        if arg == "--check":
            parser_args.check = True
        elif arg == "--diff":
            parser_args.diff = True
        else:
            parser_args.paths.append(arg)
    out, err = io.StringIO(), io.StringIO()
    return fmt_cli.run(parser_args, out, err), out.getvalue(), err.getvalue()


def test_fmt_rewrites_only_files_that_change(tmp_path):
    messy = tmp_path / "10-messy.policy"
    clean = tmp_path / "20-clean.policy"
    messy.write_text(MESSY)
    clean.write_text(CANONICAL.replace("data", "mail").replace("connect", "ehlo"))
    messy.chmod(0o640)
    clean_mtime = clean.stat().st_mtime_ns
    assert run_fmt("--check", str(tmp_path))[0] == 1
    assert messy.read_text() == MESSY  # --check writes nothing
    code, _, err = run_fmt(str(tmp_path))
    assert code == 0
    assert messy.read_text() == CANONICAL
    assert messy.stat().st_mode & 0o777 == 0o640
    assert clean.stat().st_mtime_ns == clean_mtime
    assert f"reformatted {messy}" in err and "1 file reformatted, 1 unchanged" in err
    assert run_fmt("--check", str(tmp_path))[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["10-messy.policy", "20-clean.policy"]


def test_fmt_writes_through_a_symlink_to_its_target(tmp_path):
    """`ln -s real/z.policy a.policy; fmt a.policy`: the target is formatted (atomically,
    keeping its mode) and a.policy stays a link to it."""
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "z.policy"
    target.write_text(MESSY)
    target.chmod(0o604)
    link = tmp_path / "a.policy"
    link.symlink_to("real/z.policy")
    code, _, err = run_fmt(str(link))
    assert code == 0, err
    assert link.is_symlink() and link.readlink().as_posix() == "real/z.policy"
    assert target.read_text() == CANONICAL
    assert target.stat().st_mode & 0o777 == 0o604
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["z.policy"]
    # a directory run writes through the link, too
    target.write_text(MESSY)
    assert run_fmt(str(tmp_path))[0] == 0
    assert link.is_symlink() and target.read_text() == CANONICAL


def test_fmt_keeps_hard_links_together(tmp_path):
    """A tester's finding: fmt wrote a temporary file and renamed it, so a second hard
    link kept the old text.  A file of several links is now written in place: same inode,
    every link formatted, mode kept, no temporary file left; a shorter text leaves no old
    tail, and a symlink to such a file is written through and stays a link."""
    policies = tmp_path / "policies"
    policies.mkdir()
    original = policies / "a.policy"
    original.write_text(MESSY + "\n" * 50)  # longer than its formatted text
    original.chmod(0o640)
    backup = tmp_path / "a.policy.bak"
    os.link(original, backup)
    inode = original.stat().st_ino
    code, _, err = run_fmt(str(original))
    assert code == 0, err
    assert original.read_text() == CANONICAL and backup.read_text() == CANONICAL
    assert original.stat().st_ino == backup.stat().st_ino == inode
    assert original.stat().st_nlink == 2 and original.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in policies.iterdir()) == ["a.policy"]
    # through a symlink (as a directory run finds it) to a file of two links
    original.write_text(MESSY)
    linked = tmp_path / "linked"
    linked.mkdir()
    link = linked / "b.policy"
    link.symlink_to(backup)
    assert run_fmt(str(linked))[0] == 0
    assert link.is_symlink() and link.readlink() == backup
    assert original.read_text() == CANONICAL and backup.read_text() == CANONICAL
    assert backup.stat().st_ino == inode and backup.stat().st_nlink == 2


def test_fmt_of_a_file_of_one_link_keeps_mode_and_owner(tmp_path):
    messy = tmp_path / "a.policy"
    messy.write_text(MESSY)
    messy.chmod(0o604)
    owner = None
    if os.geteuid() == 0:  # only root can give a file away: then check it stays given
        owner = (4242, 4343)
        os.chown(messy, *owner)
    inode = messy.stat().st_ino
    assert run_fmt(str(messy))[0] == 0
    assert messy.read_text() == CANONICAL
    assert messy.stat().st_ino != inode  # replaced atomically, by a rename
    assert messy.stat().st_mode & 0o777 == 0o604
    if owner is not None:
        assert (messy.stat().st_uid, messy.stat().st_gid) == owner


def test_fmt_reports_entries_that_are_not_policy_files_and_formats_the_rest(tmp_path):
    (tmp_path / "a.policy").write_text(MESSY)
    (tmp_path / "b.policy").symlink_to("gone.policy")
    os.mkfifo(tmp_path / "c.policy")
    code, _, err = run_fmt(str(tmp_path))
    assert code == 1
    assert f"{tmp_path / 'b.policy'}: policy file is a dangling symbolic link" in err
    assert f"{tmp_path / 'c.policy'}: policy file is a FIFO, not a regular file" in err
    assert (tmp_path / "a.policy").read_text() == CANONICAL


def test_lone_cr_line_ends_are_refused_at_the_first_cr_by_check_and_fmt(tmp_path):
    """With CR-only line ends a `#` comment used to run to the end of the file and the
    error was a `{` never closed; now E018 points at the first lone CR."""
    text = "stage connect {\n    # keep\r    default accept\r}\r"
    result = compile_text(text, "cr.policy")
    assert result.policy_set is None
    (diagnostic,) = result.diagnostics
    assert diagnostic.code == "E018"
    assert (diagnostic.span.line, diagnostic.span.column) == (2, 11)
    path = tmp_path / "cr.policy"
    path.write_bytes(text.encode())
    code, _, err = run_fmt(str(path))
    assert code == 1 and "E018" in err and "never closed" not in err
    assert path.read_bytes() == text.encode()
    crlf = text.replace("\r", "\r\n")
    assert compile_text(crlf, "crlf.policy").policy_set is not None


def test_fmt_check_names_the_file_and_diff_shows_the_change(tmp_path):
    path = tmp_path / "a.policy"
    path.write_text("let a=1\n")
    code, out, err = run_fmt("--check", "--diff", str(path))
    assert code == 1
    assert f"would reformat {path}" in err
    assert "-let a=1\n+let a = 1\n" in out
    code, out, _ = run_fmt("--diff", str(path))
    assert code == 0 and "+let a = 1" in out and path.read_text() == "let a=1\n"


def test_fmt_exit_codes_for_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.policy"
    bad.write_text("stage data {\n  rule r: when == 1 accept\n}\n")
    code, _, err = run_fmt(str(bad))
    assert code == 1 and f"{bad}:2:" in err and bad.read_text().startswith("stage data {\n  r")
    assert run_fmt(str(tmp_path / "missing.policy"))[0] == 2
    assert "missing.policy" in run_fmt(str(tmp_path / "missing.policy"))[2]
    latin1 = tmp_path / "latin1.policy"
    latin1.write_bytes(b"# caf\xe9\nlet a = 1\n")
    bad.unlink()
    code, _, err = run_fmt(str(tmp_path))
    assert code == 1 and "not valid UTF-8" in err
    with pytest.raises(SystemExit) as usage:
        main(["fmt", "--no-such-option"])
    assert usage.value.code == 2


def test_fmt_reads_standard_input(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"let a=[1,2]\n")))
    assert main(["fmt", "-"]) == 0
    assert capsys.readouterr().out == "let a = [1, 2]\n"


def test_make_test_checks_the_shipped_policies_are_formatted():
    makefile = (POLICIES.parent / "Makefile").read_text()
    assert "fmt --check policies" in makefile
    assert run_fmt("--check", str(POLICIES))[0] == 0


def test_continuation_lines_follow_the_brackets_and_quantifiers_still_open():
    text = """\
def may_write(address, topic) =
  any e in lookup_all("account_emails", email = address):
   exists("account", id = e.account_id)
           and (any s in lookup_all("subscriptions", account = e.account_id,
                   topic_id = topic):
                 s.status == "Active")
"""
    expected = """\
def may_write(address, topic) =
    any e in lookup_all("account_emails", email = address):
        exists("account", id = e.account_id)
        and (any s in lookup_all("subscriptions", account = e.account_id,
                                 topic_id = topic):
                 s.status == "Active")
"""
    assert format_text(text) == expected
    assert format_text(expected) == expected


def test_a_multi_line_def_body_keeps_its_lines_aligned_as_written():
    # The shipped directory helper as its author laid it out: the body on its own line,
    # the quantifier's body 4 deeper, the call's arguments aligned after its `(`.
    text = """\
def subscribed(address, category) =
    any a in lookup_all("account", email = address, is_active = true):
        exists("subscriptions", subscriber_account_id = a.id, category_id = category.id,
               active = true)
"""
    assert format_text(text) == text
    flat = "\n".join(line.strip() for line in text.splitlines()) + "\n"
    assert format_text(flat) == text


def test_a_bracket_ending_its_line_indents_its_contents_and_closes_at_its_line():
    text = """\
def f(x) = x in [
1,
  2
      ]
let b = len(
    "ab") > 1
"""
    assert format_text(text) == """\
def f(x) = x in [
    1,
    2
]

let b = len(
    "ab") > 1
"""


def test_a_quantifier_body_goes_4_deeper_than_the_line_or_bracket_it_starts_in():
    text = """\
stage rcpt {
    rule r:
        when any r in envelope.to:
  r.address == "a@b.c" or (all s in [r.address,
  "x@y.z"]:
  s != "")
        accept

    default accept
}
"""
    assert format_text(text) == """\
stage rcpt {
    rule r:
        when any r in envelope.to:
            r.address == "a@b.c" or (all s in [r.address,
                                               "x@y.z"]:
                                         s != "")
        accept

    default accept
}
"""
