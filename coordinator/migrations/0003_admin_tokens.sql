-- drover coordinator schema, version 3: named admin tokens.
-- Secrets are kept only as their sha256. Revoked tokens keep their row, so a revoked
-- token is refused with a clear message and every name in the history can be traced to
-- when it was valid; a name is unique among the tokens not revoked. `admin` is the token
-- in the data directory's admin.token, recorded by `drover serve` at each start.
CREATE TABLE admin_tokens (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT NOT NULL,
    hash         TEXT NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    created_by   TEXT NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER,
    revoked_by   TEXT,
    last_used_at INTEGER
);
CREATE UNIQUE INDEX admin_tokens_one_valid_per_name ON admin_tokens (name) WHERE revoked_at IS NULL;
