-- drover coordinator schema, version 1.
-- Hosts are never deleted: a removed host keeps its row (cert_sha256 NULL) so that its
-- manifest serial continues if the same id joins again.
CREATE TABLE hosts (
    id          TEXT PRIMARY KEY,
    labels      TEXT NOT NULL,
    cert_sha256 TEXT,
    joined_at   INTEGER NOT NULL
);

CREATE TABLE tokens (
    hash       TEXT PRIMARY KEY,
    labels     TEXT NOT NULL,
    replace    INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    used_at    INTEGER,
    used_by    TEXT
);

CREATE TABLE releases (
    app        TEXT NOT NULL,
    version    TEXT NOT NULL,
    release    TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (app, version)
);

CREATE TABLE groups (
    name     TEXT PRIMARY KEY,
    selector TEXT NOT NULL
);

CREATE TABLE pins (
    app     TEXT NOT NULL,
    scope   TEXT NOT NULL,
    version TEXT NOT NULL,
    PRIMARY KEY (app, scope)
);

CREATE TABLE holds (
    scope TEXT PRIMARY KEY
);

CREATE TABLE manifests (
    host         TEXT PRIMARY KEY,
    serial       INTEGER NOT NULL,
    envelope     BLOB NOT NULL,
    content_hash TEXT NOT NULL,
    issued_at    INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);

CREATE TABLE reports (
    host        TEXT PRIMARY KEY,
    report      TEXT NOT NULL,
    received_at INTEGER NOT NULL
);

CREATE TABLE events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    host    TEXT NOT NULL,
    at      INTEGER NOT NULL,
    app     TEXT,
    message TEXT NOT NULL
);
CREATE INDEX events_by_host ON events (host, id);
