"""The organisation's data as policies see it: the `Directory` protocol and its records.

Lookups are synchronous reads of local state (an in-memory index, a replica of SQLite or
SpacetimeDB tables), never a network round trip on the hook path.  A backend that cannot
answer raises `DirectoryError`; the runtime turns that into the policy's fallback.
Addresses are compared case-insensitively everywhere.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import msgspec

from ..ipset import IP


class DirectoryError(Exception):
    """A lookup could not be answered (backend down, stale replica, locked database)."""


class Category(msgspec.Struct, frozen=True):
    """An active mailing-list category (`message_categories`)."""

    id: int
    name: str
    address: str
    description: str = ""


class Account(msgspec.Struct, frozen=True):
    """An active member account (`account`)."""

    id: int
    name: str
    email: str
    identity: str = ""


@runtime_checkable
class Directory(Protocol):
    """What the lookup built-ins need.  Implementations must be fast local reads.

    Optional attributes the runtime uses: `blocking = False` for local indexes that need
    no timing, and `snapshot()` returning an object with these methods that stays fixed
    for one decision (so a directory reloaded meanwhile is never read half old, half
    new)."""

    def ip_blocked(self, ip: IP) -> bool:
        """True when an active `blocked_ips` entry (address or CIDR) covers `ip`."""
        ...

    def category(self, address: str) -> Category | None:
        """The active category whose list address is `address`."""
        ...

    def account(self, address: str) -> Account | None:
        """The active account with e-mail `address` (lowest id if several)."""
        ...

    def is_admin(self, address: str) -> bool:
        """True when an active account with e-mail `address` is an admin identity."""
        ...

    def subscribed(self, address: str, category: Category) -> bool:
        """True when an active account with e-mail `address` has an active subscription
        to `category`."""
        ...


# ---------------------------------------------------------------------------------------
# Table rows, as the origin schema has them (used by every backend and by fixtures).


class BlockedIpRow(msgspec.Struct, frozen=True):
    ip: str
    reason: str = ""
    active: bool = True


class CategoryRow(msgspec.Struct, frozen=True):
    id: int
    name: str
    email_address: str
    description: str = ""
    active: bool = True


class AccountRow(msgspec.Struct, frozen=True):
    id: int
    name: str
    email: str
    identity: str = ""
    is_active: bool = True


class SubscriptionRow(msgspec.Struct, frozen=True):
    id: int
    subscriber_account_id: int
    category_id: int
    subscriber_email: str = ""
    active: bool = True


class DirectoryRows(msgspec.Struct, frozen=True):
    """A whole directory's content: what `db init --demo` writes and tests load."""

    blocked_ips: tuple[BlockedIpRow, ...] = ()
    message_categories: tuple[CategoryRow, ...] = ()
    account: tuple[AccountRow, ...] = ()
    admin_identities: tuple[str, ...] = ()
    subscriptions: tuple[SubscriptionRow, ...] = ()


__all__ = [
    "Account",
    "AccountRow",
    "BlockedIpRow",
    "Category",
    "CategoryRow",
    "Directory",
    "DirectoryError",
    "DirectoryRows",
    "SubscriptionRow",
]
