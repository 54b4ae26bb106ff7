"""The origin's tables, as `komm-policy db init` creates them in a new SQLite store.

This is the one place of the engine that names the Kommunikationszentrum's schema (with
the demo data of `komm_policy.demo`): the engine itself knows tables, rows and column
types, and the organisation's helpers are policy functions (`policies/00-directory.policy`)
over the tables the schema file (`policies/schema.toml`) describes.  A store with other
tables (e.g. `examples/origin-2026/schema.sql`) is served the same way.
"""

from __future__ import annotations

ORIGIN_TABLES = ("blocked_ips", "message_categories", "account", "admin_identities",
                 "subscriptions")
"""The tables `ORIGIN_DDL` creates (change capture is installed on them at once)."""

ORIGIN_DDL = """
CREATE TABLE IF NOT EXISTS blocked_ips (
    ip         TEXT PRIMARY KEY,             -- an address or a CIDR range
    reason     TEXT NOT NULL DEFAULT '',
    blocked_at INTEGER NOT NULL DEFAULT (CAST(strftime('%s','now') AS INTEGER)),
    active     INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE IF NOT EXISTS message_categories (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL,
    email_address TEXT NOT NULL,
    description   TEXT NOT NULL DEFAULT '',
    active        INTEGER NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX IF NOT EXISTS message_categories_email
    ON message_categories (email_address COLLATE NOCASE);

CREATE TABLE IF NOT EXISTS account (
    id          INTEGER PRIMARY KEY,         -- the member number
    identity    TEXT NOT NULL DEFAULT '',
    name        TEXT NOT NULL DEFAULT '',
    email       TEXT NOT NULL,
    is_active   INTEGER NOT NULL DEFAULT 1,
    last_synced INTEGER
);
CREATE INDEX IF NOT EXISTS account_email ON account (email COLLATE NOCASE);
CREATE INDEX IF NOT EXISTS account_identity ON account (identity);

CREATE TABLE IF NOT EXISTS admin_identities (
    identity TEXT PRIMARY KEY
);

CREATE TABLE IF NOT EXISTS subscriptions (
    id                    INTEGER PRIMARY KEY,
    subscriber_account_id INTEGER NOT NULL,
    subscriber_email      TEXT NOT NULL DEFAULT '',
    category_id           INTEGER NOT NULL,
    subscribed_at         INTEGER,
    active                INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS subscriptions_account ON subscriptions (subscriber_account_id);
CREATE INDEX IF NOT EXISTS subscriptions_category ON subscriptions (category_id);
CREATE INDEX IF NOT EXISTS subscriptions_email
    ON subscriptions (subscriber_email COLLATE NOCASE);
"""
