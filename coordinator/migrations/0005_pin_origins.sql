-- drover coordinator schema, version 5: who set each pin and hold, when, why and (for
-- pins) in which rollout, for `drover pins`. The history has every change; these columns
-- say who made the one in force. Rows from before have NULLs: "not recorded".
ALTER TABLE pins ADD COLUMN set_by TEXT;
ALTER TABLE pins ADD COLUMN set_at INTEGER;
ALTER TABLE pins ADD COLUMN rollout TEXT;
ALTER TABLE pins ADD COLUMN reason TEXT;
ALTER TABLE holds ADD COLUMN set_by TEXT;
ALTER TABLE holds ADD COLUMN set_at INTEGER;
ALTER TABLE holds ADD COLUMN reason TEXT;
