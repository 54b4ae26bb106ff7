"""The grammar file and the Lark parser built from it (once per process).

The grammar lives in `grammar/policy.lark` at the top of the checkout; wheels carry a
copy inside the package (see pyproject.toml), so both are looked for.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import lark


def grammar_text() -> str:
    """The grammar, from the installed package (wheel) or from the source checkout."""
    packaged = resources.files("komm_policy").joinpath("grammar/policy.lark")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    checkout = Path(__file__).resolve().parent.parent / "grammar" / "policy.lark"
    return checkout.read_text(encoding="utf-8")


def build_parser(*, strict: bool = False) -> lark.Lark:
    return lark.Lark(
        grammar_text(),
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=True,
        start=["start", "expr"],
        strict=strict,
    )


@functools.cache
def lark_parser() -> lark.Lark:
    """The shared parser (Lark parsers are reusable and keep no state between parses)."""
    return build_parser()


@functools.cache
def keywords() -> frozenset[str]:
    """Reserved words: every keyword literal of the grammar."""
    words = set()
    for terminal in lark_parser().terminals:
        pattern = terminal.pattern
        if pattern.type == "str" and pattern.value.isidentifier():
            words.add(pattern.value)
    return frozenset(words)
