-- drover coordinator schema, version 5 (PostgreSQL): who set each pin and hold, as
-- ../0005_pin_origins.sql.
ALTER TABLE pins ADD COLUMN set_by TEXT;
ALTER TABLE pins ADD COLUMN set_at BIGINT;
ALTER TABLE pins ADD COLUMN rollout TEXT;
ALTER TABLE pins ADD COLUMN reason TEXT;
ALTER TABLE holds ADD COLUMN set_by TEXT;
ALTER TABLE holds ADD COLUMN set_at BIGINT;
ALTER TABLE holds ADD COLUMN reason TEXT;
