-- The origin's restructured directory (2026), as SQLite tables: what the newer module
-- (`server/src/models/`) keeps, in the shape komm-policy replicates from SQLite.
-- Changed since the shipped schema: `message_categories` is `message_topics` (with
-- `visibility` and `app_password_id`); addresses live in `account_emails` (several per
-- account, each verified or not) and `account` points at its primary one; a subscription
-- has a `status` (an enum of six states, three of them active) and a `permission`
-- (`Read` or `Write`) instead of `active`.
-- Create a store with:  sqlite3 directory.db < schema.sql

CREATE TABLE blocked_ips (
    ip         TEXT PRIMARY KEY,             -- an address or a CIDR range
    reason     TEXT NOT NULL DEFAULT '',
    blocked_at INTEGER NOT NULL DEFAULT (CAST(strftime('%s','now') AS INTEGER)),
    active     INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE message_topics (
    id              INTEGER PRIMARY KEY,
    name            TEXT NOT NULL,
    email_address   TEXT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    visibility      TEXT NOT NULL DEFAULT 'Members',   -- Public | Members | Hidden
    app_password_id INTEGER,
    active          INTEGER NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX message_topics_email ON message_topics (email_address COLLATE NOCASE);

CREATE TABLE account (
    id               INTEGER PRIMARY KEY,    -- the member number
    identity         TEXT NOT NULL,          -- SpacetimeDB Identity, 64 hex digits
    name             TEXT NOT NULL DEFAULT '',
    primary_email_id INTEGER,                -- account_emails.id
    is_active        INTEGER NOT NULL DEFAULT 1,
    last_synced      INTEGER
);

CREATE TABLE account_emails (
    id         INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL,             -- account.id
    email      TEXT NOT NULL,
    verified   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX account_emails_email ON account_emails (email COLLATE NOCASE);

CREATE TABLE admin_identities (
    identity TEXT PRIMARY KEY
);

CREATE TABLE subscriptions (
    id                    INTEGER PRIMARY KEY,
    subscriber_account_id INTEGER NOT NULL,  -- account.id
    account_email_id      INTEGER,           -- account_emails.id the list writes to
    topic_id              INTEGER NOT NULL,  -- message_topics.id
    status                TEXT NOT NULL,     -- SubscriptionStatus
    permission            TEXT NOT NULL DEFAULT 'Read',  -- Read | Write
    subscribed_at         INTEGER
);
CREATE INDEX subscriptions_account ON subscriptions (subscriber_account_id);
