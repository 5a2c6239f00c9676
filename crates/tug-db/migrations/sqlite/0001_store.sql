-- Services, tokens, builds and artifacts. Times are milliseconds since the
-- Unix epoch (UTC) so both dialects compare them the same way.
CREATE TABLE services (
    name        TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL
);

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    service     TEXT REFERENCES services(name),
    secret_hash TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    created_by  TEXT,
    revoked_at  INTEGER
);
CREATE UNIQUE INDEX tokens_active_name ON tokens(name) WHERE revoked_at IS NULL;

CREATE TABLE builds (
    id              TEXT PRIMARY KEY,
    service         TEXT NOT NULL REFERENCES services(name),
    version         TEXT NOT NULL,
    state           TEXT NOT NULL,
    revision        INTEGER NOT NULL DEFAULT 0,
    repo            TEXT,
    branch          TEXT,
    commit_sha      TEXT,
    tag             TEXT,
    author          TEXT,
    message         TEXT,
    ci_url          TEXT,
    builder_image   TEXT,
    expected        TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    created_by      TEXT,
    sealed_at       INTEGER,
    manifest_digest TEXT UNIQUE,
    manifest        TEXT
);
CREATE INDEX builds_service_created ON builds(service, created_at);

CREATE TABLE artifacts (
    build_id     TEXT NOT NULL REFERENCES builds(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    kind         TEXT NOT NULL,
    platform     TEXT,
    size         INTEGER NOT NULL,
    digest       TEXT NOT NULL,
    derived_from TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (build_id, name)
);
CREATE INDEX artifacts_digest ON artifacts(digest);

-- When a blob was last uploaded or found present by a client about to
-- register it: gc leaves recently claimed blobs alone, so a push racing a
-- gc never loses a blob between the existence check and registration.
CREATE TABLE blob_claims (
    digest     TEXT PRIMARY KEY,
    claimed_at INTEGER NOT NULL
);
