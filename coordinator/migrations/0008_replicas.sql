-- drover coordinator schema, version 8 (SQLite): several coordinators on one database
-- (issue 16), as postgres/0008_replicas.sql. Its tables and columns are additive, but it brings a
-- rule every coordinator that changes the fleet model must follow (move the model
-- generation on), which a schema-7 coordinator does not: declared readable from version 8
-- (store::SCHEMA_VERSIONS). From here on, an additive migration keeps the previous
-- readable_from and a coordinator one version behind keeps working during a rolling
-- upgrade.
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

-- The oldest schema version whose coordinators can use the database once this version is
-- applied, recorded with each version from this one on (store::SCHEMA_VERSIONS): a
-- coordinator that knows versions up to K opens a database at a newer version F only when
-- F's readable_from is at most K, and then uses it as it is. Rows written before this
-- column existed have none (NULL): readable only by coordinators that know their version.
ALTER TABLE schema_version ADD COLUMN readable_from INTEGER;
