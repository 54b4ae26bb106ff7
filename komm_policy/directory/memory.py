"""An immutable in-memory index of the directory tables, and the in-memory `Directory`.

`DirectoryIndex` is what every local backend serves lookups from: the SQLite replica and
(later) the SpacetimeDB subscription build one from table rows and swap it in atomically.
Every lookup is one or two dictionary/set reads, so lookup time does not grow with the
size of the tables.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from typing import Any

import msgspec

from ..ipset import IP, IPSet, parse_entry
from . import Account, Category, DirectoryRows
from .schema import Schema
from .snapshot import BadRow, Changes, Needs, TablesSnapshot

log = logging.getLogger(__name__)

LOOKUP_METHODS = ("ip_blocked", "category", "account", "is_admin", "subscribed")


def serve_lookups(owner: object, target: object) -> None:
    """Make `owner`'s lookup methods `target`'s bound methods: a lookup is then one call,
    and pointing the owner at a new index (or at an error raiser) is a few assignments."""
    for name in LOOKUP_METHODS:
        setattr(owner, name, getattr(target, name))


class Snapshot:
    """What one decision reads: the helpers' index and the policy set's tables, fixed."""

    __slots__ = ("account", "category", "index", "ip_blocked", "is_admin", "subscribed",
                 "tables")

    def __init__(self, index: DirectoryIndex, tables: TablesSnapshot | None) -> None:
        self.index = index
        self.tables = tables
        serve_lookups(self, index)

    def counts(self) -> dict[str, int]:
        return self.index.counts()


class DirectoryIndex:
    """Lookup structures built once from `DirectoryRows`."""

    __slots__ = ("_accounts", "_admin_count", "_admins", "_blocked", "_categories",
                 "_subscribed")

    def __init__(self, rows: DirectoryRows, on_bad_row: BadRow | None = None) -> None:
        self._admin_count = len(rows.admin_identities)
        entries = []
        for row in rows.blocked_ips:
            if not row.active:
                continue
            try:
                if "/" in row.ip:  # host bits set (10.0.0.1/8) is a typo, not 10.0.0.0/8
                    ipaddress.ip_network(row.ip.strip(), strict=True)
                entries.append(parse_entry(row.ip))
            except ValueError as exc:
                reason = f"{row.ip!r} is not an IP address or network ({exc})"
                if on_bad_row is not None:
                    on_bad_row("blocked_ips", f"ip={row.ip!r}", reason)
                else:
                    log.warning("skipping a row of blocked_ips: %s", reason)
        self._blocked = IPSet(entries)
        self._categories = {
            row.email_address.strip().lower(): Category(
                id=row.id, name=row.name, address=row.email_address.strip().lower(),
                description=row.description)
            for row in rows.message_categories if row.active
        }
        accounts: dict[str, Account] = {}
        active_ids_by_email: dict[str, set[int]] = {}
        for row in sorted(rows.account, key=lambda r: r.id):
            if not row.is_active:
                continue
            email = row.email.strip().lower()
            accounts.setdefault(email, Account(id=row.id, name=row.name, email=email,
                                               identity=row.identity))
            active_ids_by_email.setdefault(email, set()).add(row.id)
        self._accounts = accounts
        admin_identities = {identity.lower() for identity in rows.admin_identities}
        self._admins = frozenset(
            row.email.strip().lower() for row in rows.account
            if row.is_active and row.identity and row.identity.lower() in admin_identities
        )
        email_by_account = {
            account_id: email
            for email, ids in active_ids_by_email.items() for account_id in ids
        }
        self._subscribed = frozenset(
            (email_by_account[sub.subscriber_account_id], sub.category_id)
            for sub in rows.subscriptions
            if sub.active and sub.subscriber_account_id in email_by_account
        )

    def ip_blocked(self, ip: IP) -> bool:
        return ip in self._blocked

    def category(self, address: str) -> Category | None:
        return self._categories.get(address.lower())

    def account(self, address: str) -> Account | None:
        return self._accounts.get(address.lower())

    def is_admin(self, address: str) -> bool:
        return address.lower() in self._admins

    def subscribed(self, address: str, category: Category) -> bool:
        return (address.lower(), category.id) in self._subscribed

    def counts(self) -> dict[str, int]:
        return {
            "blocked_ips": len(self._blocked),
            "message_categories": len(self._categories),
            "account": len(self._accounts),
            "admin_identities": self._admin_count,
            "subscriptions": len(self._subscribed),
        }


def rows_as_tables(rows: DirectoryRows) -> dict[str, list[dict[str, Any]]]:
    """The origin tables' rows as generic table rows ({column: value})."""
    tables: dict[str, list[dict[str, Any]]] = {
        name: [msgspec.structs.asdict(r) for r in getattr(rows, name)]
        for name in ("blocked_ips", "message_categories", "account", "subscriptions")}
    tables["admin_identities"] = [{"identity": i} for i in rows.admin_identities]
    for row in tables["blocked_ips"]:
        row.setdefault("blocked_at", 0)  # columns the record types do not carry
    for row in tables["account"]:
        row.setdefault("last_synced", None)
    for row in tables["subscriptions"]:
        row.setdefault("subscribed_at", None)
    return tables


class InMemoryDirectory:
    """A `Directory` over rows held in memory (tests, benchmarks, `komm-policy eval`).

    The lookup methods are the current index's own bound methods, rebound on `replace`, so a
    lookup is one call, and a swap is atomic for every lookup that starts after it.
    `tables` holds rows of any tables ({name: [{column: value}]}), indexed by `require`."""

    blocking = False
    """Lookups are dictionary reads; the runtime need not time them."""

    def __init__(self, rows: DirectoryRows | None = None,
                 tables: Mapping[str, list[Mapping[str, Any]]] | None = None) -> None:
        self.table_rows = dict(tables) if tables is not None else rows_as_tables(
            rows or DirectoryRows())
        self.tables: TablesSnapshot | None = None
        self.replace(rows or DirectoryRows())

    def replace(self, rows: DirectoryRows) -> None:
        """Swap in new content."""
        self.index = DirectoryIndex(rows)
        self._serving = Snapshot(self.index, self.tables)
        serve_lookups(self, self.index)

    def require(self, schema: Schema, needs: Needs) -> None:
        """Index the tables a policy set reads (missing tables are empty)."""
        self.tables = TablesSnapshot.build(
            schema, needs, {name: self.table_rows.get(name, ()) for name in needs.tables},
            lambda table, key, reason: log.warning("skipping a row of %s (%s): %s", table,
                                                   key, reason))
        self._serving = Snapshot(self.index, self.tables)

    def apply(self, changes: Changes) -> None:
        """Apply table changes ({table: (deleted, inserted)}) and publish the result."""
        if self.tables is not None:
            self.tables = self.tables.apply(changes)
            self._serving = Snapshot(self.index, self.tables)

    def snapshot(self) -> Snapshot:
        """The current content, for one decision to read consistently."""
        return self._serving
