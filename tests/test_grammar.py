"""The grammar itself: LALR without conflicts, loadable from a checkout."""

from __future__ import annotations

from komm_policy.parser import build_parser, grammar_text


def test_grammar_builds_in_strict_mode():
    # strict=True raises on shift/reduce conflicts and on regex collisions between terminals
    parser = build_parser(strict=True)
    assert parser.options.parser == "lalr"


def test_grammar_text_is_the_checkout_file():
    from .conftest import ROOT

    assert grammar_text() == (ROOT / "grammar" / "policy.lark").read_text(encoding="utf-8")
