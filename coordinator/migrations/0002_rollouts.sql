-- drover coordinator schema, version 2: rollouts and their history.
-- `state` is the controller's whole `Rollout` as JSON, written in the same transaction as
-- the pins and manifests each step causes, so a restart resumes exactly.
CREATE TABLE rollouts (
    id          TEXT PRIMARY KEY,
    app         TEXT NOT NULL,
    state       TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    finished_at INTEGER
);
-- One active (not finished) rollout per app.
CREATE UNIQUE INDEX rollouts_one_active_per_app ON rollouts (app) WHERE finished_at IS NULL;
CREATE INDEX rollouts_by_app ON rollouts (app, created_at);

-- Who did what, when and why: rollout commands and steps, and pins and holds made by hand
-- (app NULL for holds, which cover every app).
CREATE TABLE rollout_history (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    app     TEXT,
    rollout TEXT,
    at      INTEGER NOT NULL,
    who     TEXT NOT NULL,
    what    TEXT NOT NULL,
    reason  TEXT
);
CREATE INDEX rollout_history_by_app ON rollout_history (app, id);
