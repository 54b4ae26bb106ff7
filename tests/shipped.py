"""The shipped directory file for test snippets: the organisation's helpers (`ip_blocked`,
`category`, `is_admin`, `subscribed`, and `account`) are policy functions over the tables
of `policies/schema.toml`, not built-ins, so a snippet that calls them is compiled together
with `policies/00-directory.policy` and checked against the shipped schema file.

`account` is not in the shipped file (no shipped rule calls it, and a function no rule
calls counts as uncovered); snippets get it from `ACCOUNT_DEF`, the definition the
language reference gives.
"""

from __future__ import annotations

import functools
from typing import Any

from komm_policy.demo import DEMO_TABLES
from komm_policy.directory.memory import InMemoryDirectory
from komm_policy.directory.schema import load_schema
from komm_policy.directory.snapshot import Needs
from komm_policy.policyset import LoadResult, PolicySet, Source, compile_sources

from .conftest import POLICIES

DIRECTORY_FILE = POLICIES / "00-directory.policy"
SCHEMA = load_schema(POLICIES / "schema.toml")
ACCOUNT_DEF = 'def account(address) = lookup("account", email = address, is_active = true)\n'
DIRECTORY_SOURCES = (Source(str(DIRECTORY_FILE), DIRECTORY_FILE.read_text(encoding="utf-8")),
                     Source("<account>", ACCOUNT_DEF))


def compile_with_directory(text: str, name: str = "<policy>", **kwargs: Any) -> LoadResult:
    """Compile a snippet after the shipped directory file, against the shipped schema."""
    kwargs.setdefault("schema", SCHEMA)
    return compile_sources([*DIRECTORY_SOURCES, Source(name, text)], **kwargs)


@functools.cache
def _probe_needs() -> Needs:
    """Every index the helpers read: what a demo directory builds."""
    result = compile_with_directory("""
    stage rcpt {
        rule probe:
            when ip_blocked(client.ip) or category(rcpt) != none
                or account(sender) != none or is_admin(sender)
                or subscribed(sender, category(rcpt))
            accept
        default accept
    }
    """)
    assert result.policy_set is not None, [str(d) for d in result.diagnostics]
    return result.policy_set.needs


def directory(tables: Any = DEMO_TABLES, needs: Needs | None = None) -> InMemoryDirectory:
    """An in-memory directory of these rows (default: the demo data), indexed for the
    helpers (and for `needs`, when given)."""
    result = InMemoryDirectory(tables)
    wanted = Needs(set(_probe_needs().indexes) | (needs.indexes if needs else set()))
    result.require(SCHEMA, wanted)
    return result


def demo_for(policy_set: PolicySet) -> InMemoryDirectory:
    """The demo directory indexed for what `policy_set` reads."""
    return directory(DEMO_TABLES, policy_set.needs)


def helper_needs() -> Needs:
    """Every index the helpers read (what a directory must build to answer them)."""
    return _probe_needs()


_QUESTIONS = {
    "ip_blocked": "stage connect {\n rule r: when ip_blocked(client.ip) accept\n"
                  " default reject\n}\n",
    "category": "stage rcpt {\n rule r: when category(rcpt) != none accept\n"
                " default reject\n}\n",
    "account": "stage mail {\n rule r: when account(sender) != none accept\n"
               " default reject\n}\n",
    "is_admin": "stage mail {\n rule r: when is_admin(sender) accept\n default reject\n}\n",
    "subscribed": "stage rcpt {\n rule r: when subscribed(sender, category(rcpt)) accept\n"
                  " default reject\n}\n",
}


@functools.cache
def _question(helper: str) -> PolicySet:
    result = compile_with_directory(_QUESTIONS[helper])
    assert result.policy_set is not None, [str(d) for d in result.diagnostics]
    return result.policy_set


class Helpers:
    """The shipped directory file's helpers asked of a directory, one decision per call:
    what a rule sees.  A lookup that fails raises `DirectoryError` with the decision's
    cause (in a rule it would be the fallback)."""

    def __init__(self, directory: Any) -> None:
        self.directory = directory

    def _decide(self, helper: str, **fields: Any) -> Any:
        from komm_policy.directory import DirectoryError
        from komm_policy.runtime import decide

        from .test_runtime import request

        stage = {"ip_blocked": "connect", "account": "mail", "is_admin": "mail"}.get(
            helper, "rcpt")
        decision = decide(_question(helper), request(stage, **fields), self.directory)
        if decision.fallback:
            raise DirectoryError(decision.cause)
        return decision

    def ip_blocked(self, ip: str) -> bool:
        return self._decide("ip_blocked", ip=ip).action == "accept"

    def category(self, address: str) -> Any:
        """The category row (or none): the one lookup's result."""
        (record,) = self._decide("category", to=[address]).lookups
        return record.result

    def account(self, address: str) -> Any:
        (record,) = self._decide("account", sender=address).lookups
        return record.result

    def is_admin(self, address: str) -> bool:
        return self._decide("is_admin", sender=address).action == "accept"

    def subscribed(self, address: str, list_address: str) -> bool:
        return self._decide("subscribed", sender=address, to=[list_address]
                            ).action == "accept"
