"""One Lark parse of a policy file giving both of its trees: the shared parser's (the
AST is built from it, `parser.build`) and the concrete one with every token kept (the
formatter lays it out), so `komm-policy fmt` parses each file once, not twice.

Lark's LALR parser calls one callback per rule it reduces; the tree is whatever those
callbacks build.  Here each callback builds a pair: the shared parser's node (tokens
filtered, `?rule`s inlined, positions propagated) and the concrete parser's node (every
token), each from its own half of the children's pairs; tokens are shared.  The pair
of callbacks for a rule are Lark's own (`ParseTreeBuilder`), taken from the two
grammars' compiled rules, so both trees are exactly what the two parsers give
(tests/test_fmt.py checks this on every shipped policy)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import lark
from lark import Tree
from lark.parse_tree_builder import ParseTreeBuilder

from .grammar import build_parser, grammar_text


class _Pair:
    """A rule's two results: the shared tree's and the concrete tree's."""

    __slots__ = ("concrete", "shared")

    def __init__(self, shared: Any, concrete: Any) -> None:
        self.shared = shared
        self.concrete = concrete


@functools.cache
def concrete_parser() -> lark.Lark:
    """The policy grammar with every token kept (`(`, `)`, keywords) for layout."""
    return lark.Lark(grammar_text(), parser="lalr", lexer="contextual",
                     maybe_placeholders=True, keep_all_tokens=True, start="start")


def _pairing(shared: Callable[[list[Any]], Any], concrete: Callable[[list[Any]], Any]
             ) -> Callable[[list[Any]], _Pair]:
    def build(children: list[Any]) -> _Pair:
        return _Pair(shared([c.shared if type(c) is _Pair else c for c in children]),
                     concrete([c.concrete if type(c) is _Pair else c for c in children]))
    return build


@functools.cache
def _both_parser() -> lark.Lark:
    parser = build_parser()
    inner = parser.parser.parser.parser  # lark 1.x: frontend → LALR_Parser → _Parser
    shared = inner.callbacks
    concrete_rules = {rule: rule for rule in concrete_parser().rules}
    concrete = ParseTreeBuilder(list(concrete_rules), Tree, maybe_placeholders=True
                                ).create_callback()
    inner.callbacks = {rule: _pairing(callback, concrete[concrete_rules[rule]])
                       for rule, callback in shared.items() if rule in concrete_rules}
    return parser


def parse_both(text: str) -> tuple[Tree, Tree]:
    """The shared parser's tree and the concrete tree of `text`, from one parse.  Raises
    what Lark raises on a syntax error (`lark.exceptions.UnexpectedInput`)."""
    pair = _both_parser().parse(text, start="start")
    return pair.shared, pair.concrete


__all__ = ["concrete_parser", "parse_both"]
