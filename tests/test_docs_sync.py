"""The operator's reference (`docs/language.md`) keeps up with the code: every diagnostic
code the package can report, every built-in function and every request field is documented.
"""

from __future__ import annotations

import re

import pytest

from komm_policy.builtins import DEFAULT_BUILTINS
from komm_policy.fields import FIELDS

from .conftest import ROOT

DOC = ROOT / "docs" / "language.md"
PACKAGE = ROOT / "komm_policy"

_CODE_LITERAL = re.compile(r"""["']([EW][0-9]{3})["']""")
_FENCED = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1", re.S | re.M)
_INLINE = re.compile(r"`([^`\n]+)`")


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _code_text(doc: str) -> str:
    """Everything the reference writes as code: fenced blocks and inline `code` spans."""
    fenced = [m.group(2) for m in _FENCED.finditer(doc)]
    prose = _FENCED.sub("", doc)
    inline = _INLINE.findall(prose)
    return "\n".join(fenced + inline)


def _package_codes() -> set[str]:
    found: set[str] = set()
    for path in sorted(PACKAGE.glob("*.py")):
        found.update(_CODE_LITERAL.findall(path.read_text(encoding="utf-8")))
    return found


def _mentioned(name: str, code: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", code) is not None


def test_the_package_reports_diagnostic_codes():
    # guards the scan below: if it found nothing, every other test here would be vacuous
    codes = _package_codes()
    assert {"E101", "E133", "W201", "W206"} <= codes


@pytest.mark.parametrize("code", sorted(_package_codes()))
def test_diagnostic_code_is_documented(code):
    assert re.search(rf"\b{code}\b", _doc()), f"{code} is not documented in {DOC}"


@pytest.mark.parametrize("name", sorted(DEFAULT_BUILTINS))
def test_builtin_is_documented(name):
    assert _mentioned(name, _code_text(_doc())), f"built-in `{name}` is not documented"


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_field_is_documented(name):
    assert _mentioned(name, _code_text(_doc())), f"field `{name}` is not documented"
