-- drover coordinator schema, version 6: the audit trail of the admin changes no other
-- history had (issue 15): label changes, group create/delete, admin-token create/revoke,
-- each with the admin token's name (`who`) and its --reason. `drover history` shows these
-- with each app's history (rollout_history) and each host id's (host_history), newest
-- first; `host` names the host a line is about (label changes), for its --host filter.
CREATE TABLE admin_history (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    who    TEXT NOT NULL,
    host   TEXT,
    what   TEXT NOT NULL,
    reason TEXT
);
CREATE INDEX admin_history_by_host ON admin_history (host, id);

-- Why a host was removed (`drover hosts remove --reason`); NULL for every other line and
-- for removals recorded before.
ALTER TABLE host_history ADD COLUMN reason TEXT;
