"""Static types of policy expressions, used by the checker and by the compiler.

The language is statically typed so that `check` catches mistakes before deployment and the
compiler can choose specialised closures (case-insensitive address comparison, network
membership) once, at load time.  `address` is text compared case-insensitively (mail
addresses and domains); values of that type are kept lower-case at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

KIND_NAMES = {"string": "text", "cidr": "network", "int": "integer"}
"""What diagnostics and the docs call a kind whose internal name differs: one vocabulary
with the schema file's column meanings (`text`, `network`, `integer`)."""


def kind_name(kind: str) -> str:
    """The name an operator reads for a type kind (`KIND_NAMES`, else the kind)."""
    return KIND_NAMES.get(kind, kind)


@dataclass(frozen=True, slots=True)
class Type:
    kind: str
    elem: Type | None = None
    optional: bool = False
    table: str | None = None
    """For `row`: the table it comes from (its columns are its fields)."""
    variants: tuple[str, ...] = ()
    """For `enum`: the variant names."""

    def __str__(self) -> str:
        if self.kind == "list":
            base = f"list[{self.elem}]"
        elif self.kind == "row":
            base = f"row of {self.table}"
        elif self.kind == "enum":
            base = f"enum({' | '.join(self.variants)})"
        else:
            base = kind_name(self.kind)
        return f"{base}?" if self.optional and self.kind not in ("none", "any") else base

    def opt(self) -> Type:
        return replace(self, optional=True)

    def required(self) -> Type:
        return replace(self, optional=False)

    @property
    def is_text(self) -> bool:
        return self.kind in ("string", "address")

    @property
    def is_any(self) -> bool:
        return self.kind == "any"


STRING = Type("string")
ADDRESS = Type("address")
INT = Type("int")
BOOL = Type("bool")
NONE = Type("none", optional=True)
IP = Type("ip")
CIDR = Type("cidr")
REGEX = Type("regex")
DURATION = Type("duration")
SIZE = Type("size")
ANY = Type("any", optional=True)


FLOAT = Type("float")
TIMESTAMP = Type("timestamp")
IDENTITY = Type("identity")


def list_of(elem: Type) -> Type:
    return Type("list", elem)


def row_of(table: str) -> Type:
    return Type("row", table=table)


RECORD_KINDS = frozenset({"row"})
"""Kinds whose values have fields and cannot be written into text as a whole."""


def assignable(source: Type, target: Type) -> bool:
    """Can a value of `source` be passed where `target` is expected?"""
    if source.is_any or target.is_any:
        return True
    if source.kind == "none":
        return target.optional
    if source.optional and not target.optional:
        return False
    if source.is_text and target.is_text:
        return True
    if source.kind == "int" and target.kind == "size":
        return True
    if source.kind != target.kind:
        return False
    if source.kind == "list":
        assert source.elem is not None and target.elem is not None
        return source.elem.kind == "none" or assignable(source.elem, target.elem)
    return True


def join(types: list[Type]) -> Type | None:
    """The common type of list items (for `[a, b, c]`), or None if they do not mix."""
    result: Type | None = None
    optional = False
    for t in types:
        if t.kind == "none":
            optional = True
            continue
        if result is None or result.is_any:
            result = t.required()
        elif t.is_any:
            continue
        elif result.is_text and t.is_text:
            result = STRING if STRING in (result, t.required()) else ADDRESS
        elif {result.kind, t.kind} <= {"ip", "cidr"}:
            result = CIDR
        elif result.kind == t.kind:
            if result.kind in ("list", "row", "enum") and result != t.required():
                return None
        else:
            return None
        optional = optional or t.optional
    if result is None:
        return NONE
    return result.opt() if optional else result


def comparable(a: Type, b: Type) -> bool:
    """Do `==` / `!=` make sense between these types?"""
    if a.is_any or b.is_any or a.kind == "none" or b.kind == "none":
        return True  # comparing a never-none value with none is W203, not an error
    if a.is_text and b.is_text:
        return True
    if {a.kind, b.kind} <= {"int", "size"} or {a.kind, b.kind} <= {"int", "float"}:
        return True
    if (a.kind in ("enum", "identity") and b.is_text) or (
            b.kind in ("enum", "identity") and a.is_text):
        return True  # an enum by variant name; an identity as hex text
    if a.kind == "enum" and b.kind == "enum":
        return a.variants == b.variants
    if a.kind == "row" and b.kind == "row":
        return a.table == b.table
    if a.kind == "list" and b.kind == "list":
        return a.elem is None or b.elem is None or comparable(a.elem, b.elem)
    return a.kind == b.kind


def ordered(a: Type, b: Type) -> bool:
    """Do `<`, `<=`, `>`, `>=` make sense between these types?"""
    kinds = {a.kind, b.kind} - {"any"}
    return (kinds <= {"int", "size"} or kinds <= {"int", "float"} or kinds == {"duration"}
            or kinds == {"timestamp"})
