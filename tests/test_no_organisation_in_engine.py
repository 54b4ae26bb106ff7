"""The engine knows tables, rows and types, never one organisation's schema (issue #11 §2,
product.md §4): the origin's table names and helpers appear in `komm_policy/` only in what
`db init` creates (the origin's DDL) and its demo data.  The helpers are policy functions
in `policies/00-directory.policy`."""

from __future__ import annotations

import re

from komm_policy.builtins import DEFAULT_BUILTINS
from komm_policy.policyset import load_policy_set

from .conftest import POLICIES, ROOT

PACKAGE = ROOT / "komm_policy"
ORGANISATION = re.compile(
    r"message_categories|subscriptions|admin_identities|blocked_ips|is_admin|ip_blocked")
ALLOWED = {PACKAGE / "demo.py", PACKAGE / "directory" / "origin.py"}
HELPERS = ("ip_blocked", "category", "account", "is_admin", "subscribed")


def test_only_db_init_and_the_demo_data_name_the_origin_tables():
    found = []
    for path in sorted(PACKAGE.rglob("*")):
        if path.suffix not in (".py", ".lark", ".toml", ".sql") or path in ALLOWED:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if ORGANISATION.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []
    # the check can fail: the allowed files do name them
    assert all(ORGANISATION.search(path.read_text(encoding="utf-8")) for path in ALLOWED)


def test_the_helpers_are_no_built_ins_and_no_types():
    from komm_policy import types

    assert not set(HELPERS) & set(DEFAULT_BUILTINS)
    assert {b.kind for b in DEFAULT_BUILTINS.values()} == {"pure", "request", "table"}
    assert not hasattr(types, "CATEGORY") and not hasattr(types, "ACCOUNT")
    assert frozenset({"row"}) == types.RECORD_KINDS


def test_the_shipped_set_defines_the_helpers_it_calls_over_its_tables():
    text = (POLICIES / "00-directory.policy").read_text(encoding="utf-8")
    defined = set(re.findall(r"^def (\w+)\(", text, re.MULTILINE))
    assert defined == {"ip_blocked", "category", "is_admin", "subscribed"}
    policy_set = load_policy_set(POLICIES)
    assert policy_set.needs.tables == {"blocked_ips", "message_categories", "account",
                                       "admin_identities", "subscriptions"}
