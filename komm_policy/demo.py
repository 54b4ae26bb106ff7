"""The demo directory: a small data set that exercises every shipped rule.

Used by `komm-policy db init --demo`, the README's quickstart and the tests that run the
shipped policies against the captured Stalwart payloads.
"""

from __future__ import annotations

from .directory import (
    AccountRow,
    BlockedIpRow,
    CategoryRow,
    DirectoryRows,
    SubscriptionRow,
)

JANE_IDENTITY = "c200" + "0" * 56 + "0102"

DEMO_ROWS = DirectoryRows(
    blocked_ips=(
        BlockedIpRow("192.0.2.66", "spam run 2026-08", True),
        BlockedIpRow("2001:db8:4860::/48", "abusive IPv6 range", True),
        BlockedIpRow("198.18.0.0/15", "benchmark network, never legitimate", True),
        BlockedIpRow("203.0.113.200", "unblocked after review", False),
    ),
    message_categories=(
        CategoryRow(1, "Info", "info@solawi.example", "general announcements", True),
        CategoryRow(2, "Gemuese", "Gemuese@Solawi.example", "vegetable box coordination", True),
        CategoryRow(3, "Buchhaltung", "buchhaltung@solawi.example", "accounting", True),
        CategoryRow(4, "Vorstand", "vorstand@solawi.example", "board (retired list)", False),
    ),
    account=(
        AccountRow(101, "Anna Mueller", "Anna.Mueller@gmail.com", "c200" + "0" * 56 + "0101", True),
        AccountRow(102, "Jane Doe", "jane@solawi.example", JANE_IDENTITY, True),
        AccountRow(103, "John Doe", "john.doe@example.org", "c200" + "0" * 56 + "0103", False),
        AccountRow(104, "Peter Schmidt", "peter.schmidt@web.example",
                   "c200" + "0" * 56 + "0104", True),
    ),
    admin_identities=(JANE_IDENTITY,),
    subscriptions=(
        SubscriptionRow(1, 101, 1, "anna.mueller@gmail.com", True),
        SubscriptionRow(2, 101, 2, "anna.mueller@gmail.com", False),
        SubscriptionRow(3, 103, 1, "john.doe@example.org", True),
        SubscriptionRow(4, 104, 1, "peter.schmidt@web.example", True),
        SubscriptionRow(5, 104, 2, "peter.schmidt@web.example", True),
    ),
)
