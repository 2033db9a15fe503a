-- The host a pin or hold line of the app history concerns, when it was scoped to one
-- host (`drover pin web 1.2.0 --host web-01`), so `drover history --host web-01` shows
-- it. NULL for fleet and group scopes, rollout lines and lines recorded before.
-- Additive: a coordinator one schema version behind keeps inserting its lines.
ALTER TABLE rollout_history ADD COLUMN host TEXT;
CREATE INDEX rollout_history_by_host ON rollout_history (host, id);
