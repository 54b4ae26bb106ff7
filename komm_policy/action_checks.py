"""Checking what a rule does: its actions and its modifications.

Actions: reply codes and enhanced status codes that fit the action (RFC 5321 §4.2,
RFC 3463), `quarantine` only at the data stage and only with `quarantine_to` set, reply
texts that fit one printable SMTP reply line.  Modifications: only at the data stage
(Stalwart applies them there), valid header names and positions, values of a type that can
be written, and an address modification's value either a constant valid address (E125) or
guarded by `valid_address` of the same value (W210).  A mixin of the set-wide checker
(`checker._Checker`), which supplies the reporting, inference and settings it reads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import nodes as n
from . import types as t
from .builtins import Builtin, valid_address
from .errors import Related, Span
from .inference import Inference, Scope
from .outgoing import MAX_HEADER_NAME
from .text import MAX_REPLY_TEXT

_ADDRESS_MODIFICATIONS = frozenset({"change_from", "add_recipient", "delete_recipient"})
_ENHANCED = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")
_HEADER_NAME = re.compile(r"[!-9;-~]+")
_PRINTABLE = re.compile(r"[ -~]*")


def _conjuncts(expr: n.Expr) -> list[n.Expr]:
    """The operands of a top-level `and` (the expression itself otherwise)."""
    if isinstance(expr, n.BoolOp) and expr.op == "and":
        return [c for operand in expr.operands for c in _conjuncts(operand)]
    return [expr]


class ActionChecks:
    """The checks of actions and modifications (mixed into the set-wide checker)."""

    builtins: Mapping[str, Builtin]
    infer: Inference
    settings: Mapping[str, Any]
    quarantine_reported: bool

    if TYPE_CHECKING:  # supplied by the checker
        def error(self, code: str, message: str, span: Span, hint: str | None = None,
                  related: Related | None = None) -> None: ...

        def warn(self, code: str, message: str, span: Span, hint: str | None = None,
                 related: Related | None = None) -> None: ...

        def _constant(self, expr: n.Expr, seen: frozenset[str] = frozenset()) -> object: ...

    def _check_modification(self, mod: n.Modification, stage: str | None, scope: Scope
                            ) -> None:
        if stage is not None and stage != "data":
            self.error("E114", f"`{mod.kind}` at stage `{stage}`: Stalwart applies "
                       "modifications only at the data stage", mod.span,
                       "move this rule to `stage data`")
        if mod.header is not None and not _HEADER_NAME.fullmatch(mod.header):
            self.error("E123", f"`{mod.header}` is not a valid header name",
                       mod.header_span or mod.span,
                       "header names are printable ASCII without spaces or `:`")
        elif mod.header is not None and len(mod.header) > MAX_HEADER_NAME:
            self.error("E123", f"header name is {len(mod.header)} characters long; at most "
                       f"{MAX_HEADER_NAME} leave room to fold the value",
                       mod.header_span or mod.span)
        if mod.index is not None:
            lowest = 0 if mod.kind == "insert_header" else 1
            if mod.index < lowest:
                self.error("E124", f"`{mod.kind}` position must be at least {lowest}",
                           mod.span, "positions count occurrences of that header, from 1"
                           + (" (0: at the top)" if lowest == 0 else ""))
        if mod.value is None:
            return
        type_ = self.infer.infer(mod.value, scope)
        if type_.is_any:
            return
        if mod.kind in ("change_from", "add_recipient", "delete_recipient", "replace_contents"):
            if not type_.is_text:
                self.error("E105", f"`{mod.kind}` needs text, but this is {type_}",
                           mod.value.span)
        elif type_.kind in t.RECORD_KINDS | {"regex"}:
            self.error("E105", f"cannot write a {type_} value into a header", mod.value.span,
                       "pick a field, e.g. `.name`" if type_.kind != "regex" else None)

    def _check_address_source(self, mod: n.Modification, rule: n.Rule) -> None:
        """E125 for a constant that is no address; W210 for request or directory data sent
        as an address without `valid_address` of the same value in the rule's condition
        (or an explicit `on error`): a value that is not one address fails the rule."""
        if mod.kind not in _ADDRESS_MODIFICATIONS or mod.value is None:
            return
        value = mod.value
        constant = self._constant(value)
        if isinstance(constant, str):
            text = constant.strip(" \t\r\n")
            if not valid_address(text) and not (mod.kind == "delete_recipient" and text == ""):
                self.error("E125", f"`{mod.kind}` needs one valid address, not {text!r}",
                           value.span, 'e.g. "archiv@example.org"')
            return
        if constant is not ... or not self._uses_data(value):
            return
        if rule.on_error is not None or any(
                isinstance(c, n.Call) and c.func == "valid_address" and c.args == (value,)
                for c in _conjuncts(rule.when)):
            return
        self.warn("W210", f"`{mod.kind}` sends request or directory data as an address "
                  "without a guard", value.span,
                  "when the value is not one valid address the rule fails into the fallback; "
                  "add `and valid_address(<the same value>)` to `when`, or an `on error`")

    def _uses_data(self, expr: n.Expr) -> bool:
        """True when the value depends on the request or on a lookup."""
        field_refs = self.infer.field_refs
        for node in n.walk(expr):
            if id(node) in field_refs:
                return True
            if isinstance(node, n.Call):
                builtin = self.builtins.get(node.func)
                if builtin is None or builtin.kind != "pure":
                    return True
        return False

    def _check_action(self, action: n.Action, stage: str | None, scope: Scope) -> None:
        kind = action.kind
        if kind in ("reject", "tempfail"):
            digit = 5 if kind == "reject" else 4
            if action.code is not None and not digit * 100 <= action.code <= digit * 100 + 99:
                self.error("E120", f"`{kind}` needs a {digit}xx reply code, got {action.code}",
                           action.code_span or action.span,
                           "use `tempfail` for 4xx codes" if kind == "reject"
                           else "use `reject` for 5xx codes")
            if action.enhanced is not None:
                if not _ENHANCED.fullmatch(action.enhanced):
                    self.error("E121", f"`{action.enhanced}` is not an enhanced status code",
                               action.enhanced_span or action.span,
                               "the form is class.subject.detail, e.g. 5.7.1 (RFC 3463)")
                elif action.enhanced[0] != str(digit):
                    self.error("E121", f"enhanced code {action.enhanced} does not match "
                               f"`{kind}` ({digit}.x.x expected)",
                               action.enhanced_span or action.span)
        if kind == "quarantine":
            if stage is not None and stage != "data":
                self.error("E115", f"`quarantine` at stage `{stage}`: there is no message to "
                           "quarantine before data", action.span,
                           "reject or tempfail here, or move the rule to `stage data`")
            if "quarantine_to" not in self.settings and not self.quarantine_reported:
                self.quarantine_reported = True
                self.error("E116", "`quarantine` needs `quarantine_to` in `settings`",
                           action.span, 'add settings { quarantine_to = "quarantine@…" }')
        if action.message is not None:
            self._check_reply_text(action.message, scope)

    def _check_reply_text(self, message: n.Literal | n.Template, scope: Scope) -> None:
        self.infer.infer(message, scope)
        texts = [message.value] if isinstance(message, n.Literal) else [
            p for p in message.parts if isinstance(p, str)]
        for text in texts:
            if not isinstance(text, str):
                continue
            if not _PRINTABLE.fullmatch(text):
                bad = next(c for c in text if not " " <= c <= "~")
                self.error("E122", f"reply text contains {bad!r}: SMTP replies must be "
                           "printable ASCII on one line", message.span,
                           "replace non-ASCII characters (é → e, — → -)")
                return
        total = sum(len(x) for x in texts if isinstance(x, str))
        if total > MAX_REPLY_TEXT:
            self.error("E122", f"reply text is {total} characters long; at most "
                       f"{MAX_REPLY_TEXT} fit in an SMTP reply line", message.span)
