"""The slide store's tables, the triggers that keep its record append-only, and its migrations.

The audit trail and the sign-offs refuse UPDATE, DELETE and INSERT OR REPLACE from any connection
(triggers live in the file, not in this process). The one way rows leave is the retention policy:
it first writes the slide into ``purged`` (kept: the record of what retention deleted and when),
and the triggers let rows of a slide listed there go.
"""

from __future__ import annotations

import sqlite3

from edge.review import audit

TABLES = """
CREATE TABLE IF NOT EXISTS slide (
    slide_id TEXT PRIMARY KEY, specimen_id TEXT, device_id TEXT, source TEXT, started TEXT NOT NULL, ended TEXT,
    state TEXT NOT NULL DEFAULT 'counting', setup TEXT NOT NULL, machine_report TEXT, cells_dropped INTEGER
    NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS field (
    slide_id TEXT NOT NULL, field_index INTEGER NOT NULL, source TEXT NOT NULL, width INTEGER, height INTEGER,
    image BLOB, PRIMARY KEY (slide_id, field_index));
CREATE TABLE IF NOT EXISTS cell (
    slide_id TEXT NOT NULL, cell_id INTEGER NOT NULL, field_index INTEGER NOT NULL, data TEXT NOT NULL,
    crop BLOB, context BLOB, label TEXT, PRIMARY KEY (slide_id, cell_id));
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, slide_id TEXT NOT NULL, time TEXT NOT NULL, operator TEXT NOT NULL,
    action TEXT NOT NULL, cell_id INTEGER, old TEXT, new TEXT, note TEXT, hash TEXT);
CREATE TABLE IF NOT EXISTS signoff (
    slide_id TEXT NOT NULL, version INTEGER NOT NULL, operator TEXT NOT NULL, time TEXT NOT NULL,
    reason TEXT, report TEXT NOT NULL, published INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (slide_id, version));
CREATE TABLE IF NOT EXISTS operator (
    name TEXT PRIMARY KEY, salt BLOB NOT NULL, hash BLOB NOT NULL, created TEXT NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0, locked_until TEXT);
CREATE TABLE IF NOT EXISTS purged (
    slide_id TEXT PRIMARY KEY, specimen_id TEXT, started TEXT, state TEXT, time TEXT NOT NULL, reason TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_slide ON audit (slide_id);
"""

KEPT = """
CREATE TRIGGER IF NOT EXISTS signoff_kept BEFORE UPDATE OF slide_id, version, operator, time, reason, report ON signoff
BEGIN SELECT RAISE(ABORT, 'a signed report is never changed: amend the slide and sign a new version'); END;
CREATE TRIGGER IF NOT EXISTS signoff_not_replaced BEFORE INSERT ON signoff
WHEN EXISTS (SELECT 1 FROM signoff WHERE slide_id = NEW.slide_id AND version = NEW.version)
BEGIN SELECT RAISE(ABORT, 'a signed report is never replaced: amend the slide and sign a new version'); END;
CREATE TRIGGER IF NOT EXISTS signoff_not_deleted BEFORE DELETE ON signoff
WHEN NOT EXISTS (SELECT 1 FROM purged WHERE slide_id = OLD.slide_id)
BEGIN SELECT RAISE(ABORT, 'a signed report is never deleted (only retention removes a whole slide)'); END;
CREATE TRIGGER IF NOT EXISTS audit_kept BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is never changed'); END;
CREATE TRIGGER IF NOT EXISTS audit_not_replaced BEFORE INSERT ON audit
WHEN NEW.id IS NOT NULL AND EXISTS (SELECT 1 FROM audit WHERE id = NEW.id)
BEGIN SELECT RAISE(ABORT, 'the audit trail is never changed'); END;
CREATE TRIGGER IF NOT EXISTS audit_not_deleted BEFORE DELETE ON audit
WHEN NOT EXISTS (SELECT 1 FROM purged WHERE slide_id = OLD.slide_id)
BEGIN SELECT RAISE(ABORT, 'the audit trail is never deleted (only retention removes a whole slide)'); END;
CREATE TRIGGER IF NOT EXISTS purged_kept BEFORE DELETE ON purged
BEGIN SELECT RAISE(ABORT, 'the record of what retention deleted is kept'); END;
"""


def create(db: sqlite3.Connection) -> None:
    """Tables, migrations of older stores, triggers (in that order: a migration may rewrite rows).
    ``db`` in autocommit mode; executescript commits first, so the migration has its own transaction."""
    db.executescript(TABLES)
    db.execute("BEGIN IMMEDIATE")  # two processes opening an old store: one migrates, the other then sees it done
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(audit)")}
        if "hash" not in columns:  # a store from before the hash chain: seal what it holds as it is
            db.execute("DROP TRIGGER IF EXISTS audit_kept")
            db.execute("ALTER TABLE audit ADD COLUMN hash TEXT")
            audit.seal(db)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.executescript(KEPT)


def has_table(db: sqlite3.Connection, name: str) -> bool:
    """A table another part creates on this store when it is used (the LIS link's ``lis_outbox``)."""
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None
