"""The demo directory: a small data set that exercises every shipped rule.

Used by `komm-policy db init --demo`, the README's quickstart and the tests that run the
shipped policies against the captured Stalwart payloads.  Rows of the origin's tables
(`komm_policy.directory.origin`, described by `policies/schema.toml`), as
{table: ({column: value}, …)}.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

JANE_IDENTITY = "c200" + "0" * 56 + "0102"
BLOCKED_AT = 1785542400
"""When the demo entries were blocked (2026-08-01T00:00:00Z, Unix seconds)."""


def _identity(n: int) -> str:
    return "c200" + "0" * 56 + f"{n:04d}"


def _blocked(ip: str, reason: str, active: bool) -> dict[str, Any]:
    return {"ip": ip, "reason": reason, "blocked_at": BLOCKED_AT, "active": active}


def _category(id_: int, name: str, address: str, description: str,
              active: bool) -> dict[str, Any]:
    return {"id": id_, "name": name, "email_address": address, "description": description,
            "active": active}


def _account(id_: int, name: str, email: str, identity: str,
             active: bool) -> dict[str, Any]:
    return {"id": id_, "identity": identity, "name": name, "email": email,
            "is_active": active, "last_synced": None}


def _subscription(id_: int, account_id: int, category_id: int, email: str,
                  active: bool) -> dict[str, Any]:
    return {"id": id_, "subscriber_account_id": account_id, "subscriber_email": email,
            "category_id": category_id, "subscribed_at": None, "active": active}


DEMO_TABLES: Mapping[str, tuple[Mapping[str, Any], ...]] = MappingProxyType({
    "blocked_ips": (
        _blocked("192.0.2.66", "spam run 2026-08", True),
        _blocked("2001:db8:4860::/48", "abusive IPv6 range", True),
        _blocked("198.18.0.0/15", "benchmark network, never legitimate", True),
        _blocked("203.0.113.200", "unblocked after review", False),
    ),
    "message_categories": (
        _category(1, "Info", "info@solawi.example", "general announcements", True),
        _category(2, "Gemuese", "Gemuese@Solawi.example", "vegetable box coordination", True),
        _category(3, "Buchhaltung", "buchhaltung@solawi.example", "accounting", True),
        _category(4, "Vorstand", "vorstand@solawi.example", "board (retired list)", False),
    ),
    "account": (
        _account(101, "Anna Mueller", "Anna.Mueller@gmail.com", _identity(101), True),
        _account(102, "Jane Doe", "jane@solawi.example", JANE_IDENTITY, True),
        _account(103, "John Doe", "john.doe@example.org", _identity(103), False),
        _account(104, "Peter Schmidt", "peter.schmidt@web.example", _identity(104), True),
    ),
    "admin_identities": ({"identity": JANE_IDENTITY},),
    "subscriptions": (
        _subscription(1, 101, 1, "anna.mueller@gmail.com", True),
        _subscription(2, 101, 2, "anna.mueller@gmail.com", False),
        _subscription(3, 103, 1, "john.doe@example.org", True),
        _subscription(4, 104, 1, "peter.schmidt@web.example", True),
        _subscription(5, 104, 2, "peter.schmidt@web.example", True),
    ),
})
