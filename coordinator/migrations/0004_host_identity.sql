-- drover coordinator schema, version 4: host identity by key, replace tokens bound to one
-- host, and the history of every host's joins, replacements, renewals and removals.
--
-- A host is its key: `key_sha256` is the hex sha256 of the SubjectPublicKeyInfo of its
-- certificates, so a renewed certificate (same key) and the one it replaces both work
-- until they expire. Rows from before have only `cert_sha256`; such a host is known by
-- that certificate until its first renewal records the key. `cert_sha256` stays the
-- marker of an enrolled host (NULL once removed) and names its newest certificate.
ALTER TABLE hosts ADD COLUMN key_sha256 TEXT;
ALTER TABLE hosts ADD COLUMN cert_not_after INTEGER;

-- The one host id a replace token may take over (`drover token create --replace HOST`).
-- Tokens made before have `replace` = 1 and no host: they are refused for any enrolled
-- or removed host id (make a new token).
ALTER TABLE tokens ADD COLUMN replace_host TEXT;
-- The admin token that made it: the history's `who` of the join.
ALTER TABLE tokens ADD COLUMN created_by TEXT;

-- `kind` is joined, replaced, rejoined (a removed id), removed or renewed; only the newest
-- renewals of a host are kept (a host decides how often it renews).
CREATE TABLE host_history (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    host     TEXT NOT NULL,
    kind     TEXT NOT NULL,
    at       INTEGER NOT NULL,
    who      TEXT NOT NULL,
    what     TEXT NOT NULL,
    old_cert TEXT,
    new_cert TEXT
);
CREATE INDEX host_history_by_host ON host_history (host, id);
