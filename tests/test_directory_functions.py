"""The five first-version helpers written as policy functions over the shipped tables
(`examples/shipped-directory/00-directory.policy`) decide every shipped case exactly as the
built-ins do: the step before the built-ins leave the engine (issue #11 §2).

Both sets are the shipped policies; one uses the built-ins, the other the directory file
with the five built-ins taken out of the registry.  Every case of `policies/*.test.toml`
and a grid of demo-directory requests run through both, on the same directory (its rows
serve the built-ins and, as tables, the lookups).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from komm_policy.builtins import DEFAULT_BUILTINS
from komm_policy.demo import DEMO_ROWS
from komm_policy.directory.memory import InMemoryDirectory
from komm_policy.directory.schema import load_schema
from komm_policy.policyset import PolicySet, compile_sources, read_sources
from komm_policy.policytest.spec import load_file
from komm_policy.runtime import decide

from .conftest import POLICIES, ROOT
from .test_runtime import request

DIRECTORY_FILE = ROOT / "examples" / "shipped-directory"
HELPERS = frozenset({"ip_blocked", "category", "account", "is_admin", "subscribed"})
SCHEMA = load_schema(POLICIES / "schema.toml")


def _compile(*paths: Path, builtins: Any = DEFAULT_BUILTINS) -> PolicySet:
    sources = [s for path in paths for s in read_sources(path)[0]]
    result = compile_sources(sources, builtins=builtins, schema=SCHEMA)
    assert result.policy_set is not None, [str(d) for d in result.diagnostics]
    assert [d for d in result.diagnostics if d.is_error] == []
    return result.policy_set


BUILT_IN = _compile(POLICIES)
AS_FUNCTIONS = _compile(DIRECTORY_FILE, POLICIES, builtins={
    name: b for name, b in DEFAULT_BUILTINS.items() if name not in HELPERS})


def _outcome(decision: Any) -> tuple[Any, ...]:
    return (decision.action, decision.reply, decision.rule, decision.modifications,
            decision.logs, decision.fallback, decision.dry_run)


def test_the_function_set_calls_no_helper_built_in():
    assert {"blocked_ips", "message_categories", "account", "admin_identities",
            "subscriptions"} == set(AS_FUNCTIONS.needs.tables)
    assert not BUILT_IN.needs.tables  # the shipped set reads the helpers, no tables


_CASES = [(path, case) for path in sorted(POLICIES.glob("*.test.toml"))
          for case in load_file(path, SCHEMA)]


@pytest.mark.parametrize(("path", "case"), _CASES,
                         ids=[f"{p.name}:{c.name}" for p, c in _CASES])
def test_every_shipped_case_decides_alike(path, case):
    assert case.error is None, case.error
    directory = case.directory
    if isinstance(directory, InMemoryDirectory):
        _complete(directory.table_rows)
        directory.require(SCHEMA, AS_FUNCTIONS.needs)
    by_built_in = decide(BUILT_IN, case.request, directory)
    by_function = decide(AS_FUNCTIONS, case.request, directory)
    assert _outcome(by_function) == _outcome(by_built_in)


def _complete(tables: dict[str, list[dict[str, Any]]]) -> None:
    """The helpers' row types have no `blocked_at`; the store fills it by default (its
    DDL), the schema file requires it, so rows written for the helpers get it here."""
    tables["blocked_ips"] = [{"blocked_at": 0, **row} for row in tables.get("blocked_ips", ())]


def _demo_directory() -> InMemoryDirectory:
    tables = {name: [msgspec.to_builtins(row) for row in getattr(DEMO_ROWS, name)]
              for name in ("blocked_ips", "message_categories", "account", "subscriptions")}
    tables["admin_identities"] = [{"identity": i} for i in DEMO_ROWS.admin_identities]
    _complete(tables)
    directory = InMemoryDirectory(DEMO_ROWS, tables=tables)
    directory.require(SCHEMA, AS_FUNCTIONS.needs)
    return directory


_SENDERS = ["Anna.Mueller@gmail.com", "jane@solawi.example", "john.doe@example.org",
            "peter.schmidt@web.example", "stranger@example.net", ""]
_RECIPIENTS = ["info@solawi.example", "GEMUESE@solawi.example", "buchhaltung@solawi.example",
               "vorstand@solawi.example", "postmaster@solawi.example", "x@example.org"]
_IPS = ["192.0.2.66", "192.0.2.10", "2001:db8:4860::1", "198.19.1.1", "203.0.113.200"]


def test_the_demo_directory_decides_alike_for_every_sender_and_list():
    directory = _demo_directory()
    compared = 0
    for ip in _IPS:
        req = request("connect", ip=ip)
        assert (_outcome(decide(AS_FUNCTIONS, req, directory))
                == _outcome(decide(BUILT_IN, req, directory)))
    for sender in _SENDERS:
        for rcpt in _RECIPIENTS:
            for stage in ("rcpt", "data"):
                req = request(stage, sender=sender, to=[rcpt],
                              headers=[("Subject", "hello"), ("From", sender or "x@y.org")])
                by_built_in = decide(BUILT_IN, req, directory)
                assert _outcome(decide(AS_FUNCTIONS, req, directory)) == _outcome(
                    by_built_in), (stage, sender, rcpt)
                compared += 1
    assert compared == 72


def test_a_changed_helper_is_noticed():
    # the comparison can fail: an `is_admin` that ignores the admin table differs
    text = (DIRECTORY_FILE / "00-directory.policy").read_text(encoding="utf-8")
    wrong = text.replace('a.identity != "" and exists("admin_identities", '
                         'identity = a.identity)', 'a.identity != ""')
    assert wrong != text
    from komm_policy.policyset import Source

    result = compile_sources([Source("00-directory.policy", wrong),
                              *read_sources(POLICIES)[0]], schema=SCHEMA, builtins={
        name: b for name, b in DEFAULT_BUILTINS.items() if name not in HELPERS})
    assert result.policy_set is not None
    directory = _demo_directory()
    req = request("rcpt", sender="Anna.Mueller@gmail.com", to=["gemuese@solawi.example"])
    assert decide(BUILT_IN, req, directory).action == "reject"
    assert decide(result.policy_set, req, directory).action == "accept"
