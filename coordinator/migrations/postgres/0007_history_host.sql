-- drover coordinator schema, version 7 (PostgreSQL): the host a pin or hold line of the
-- app history concerns, as ../0007_history_host.sql.
ALTER TABLE rollout_history ADD COLUMN host TEXT;
CREATE INDEX rollout_history_by_host ON rollout_history (host, id);
