-- Pipelines, the per-environment deployment counter, and the append-only
-- deployment log. Times are milliseconds since the Unix epoch (UTC).

-- The current pipeline of each service (canonical TOML) and every earlier
-- one, with who changed it and when.
CREATE TABLE pipelines (
    service     TEXT NOT NULL REFERENCES services(name),
    revision    INTEGER NOT NULL,
    spec        TEXT NOT NULL,
    changed_at  INTEGER NOT NULL,
    changed_by  TEXT,
    PRIMARY KEY (service, revision)
);

-- One row per environment that ever had a deployment: the sequence number
-- of its newest deployment. A deployment updates it with a compare-and-set
-- on seq, so two concurrent deployments to one environment cannot both win.
CREATE TABLE environments (
    service           TEXT NOT NULL REFERENCES services(name),
    name              TEXT NOT NULL,
    seq               INTEGER NOT NULL,
    auto_release_held INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (service, name)
);

-- Append-only: the newest row of an environment is what it should run.
CREATE TABLE deployments (
    id             TEXT PRIMARY KEY,
    service        TEXT NOT NULL,
    environment    TEXT NOT NULL,
    seq            INTEGER NOT NULL,
    build_id       TEXT NOT NULL REFERENCES builds(id),
    kind           TEXT NOT NULL,
    requested_by   TEXT,
    deployed_at    INTEGER NOT NULL,
    replaced_build TEXT,
    reason         TEXT,
    override       INTEGER NOT NULL DEFAULT 0,
    UNIQUE (service, environment, seq)
);
CREATE INDEX deployments_build ON deployments(service, environment, build_id);

-- Deployments waiting for approvals, and the approvals and rejections they
-- received (one per approver).
CREATE TABLE deployment_requests (
    id           TEXT PRIMARY KEY,
    service      TEXT NOT NULL,
    environment  TEXT NOT NULL,
    build_id     TEXT NOT NULL REFERENCES builds(id),
    kind         TEXT NOT NULL,
    state        TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    requested_at INTEGER NOT NULL,
    expires_at   INTEGER,
    reason       TEXT,
    override     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX deployment_requests_env ON deployment_requests(service, environment, state);

CREATE TABLE approvals (
    request_id TEXT NOT NULL REFERENCES deployment_requests(id),
    approver   TEXT NOT NULL,
    decision   TEXT NOT NULL,
    decided_at INTEGER NOT NULL,
    PRIMARY KEY (request_id, approver)
);
