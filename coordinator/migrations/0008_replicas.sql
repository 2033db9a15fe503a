-- drover coordinator schema, version 8 (SQLite): several coordinators on one database
-- (issue 16), as postgres/0008_replicas.sql. Additive only: a coordinator one version behind
-- keeps working during a rolling upgrade (it knows none of these; its manifests get
-- generation 0).
--
-- The fleet model's generation: every transaction that changes the model moves it on by
-- one, only if it still holds the value the writing replica last read, so a replica
-- whose model is stale cannot overwrite a newer one (it reloads and retries).
CREATE TABLE model_generation (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL
);
INSERT INTO model_generation (id, generation) VALUES (1, 0);

-- The model generation that wrote each manifest: a replica re-reads only the manifests
-- newer than the generation it holds.
ALTER TABLE manifests ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;

-- The replica that leads (runs the rollout driver and the manifest refresher), the epoch
-- of its lease (one more at each change of leader) and since when it leads.
CREATE TABLE leader (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    replica TEXT,
    epoch   INTEGER NOT NULL DEFAULT 0,
    since   INTEGER
);
INSERT INTO leader (id) VALUES (1);

-- Every replica's heartbeat, for `drover coordinators`.
CREATE TABLE replicas (
    id           TEXT PRIMARY KEY,
    address      TEXT NOT NULL,
    version      TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);

-- The CA and trust document every coordinator on this database serves with (sha256 of the
-- CA certificate's DER and of the trust document's envelope): the first coordinator to
-- start records its own; one whose data directory holds others refuses to start, since
-- hosts would refuse its certificates or its manifests.
CREATE TABLE credentials (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    ca_sha256    TEXT NOT NULL,
    trust_sha256 TEXT NOT NULL,
    recorded_by  TEXT NOT NULL,
    recorded_at  INTEGER NOT NULL
);
