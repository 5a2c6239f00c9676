-- The OCI registry at /v2/. Manifests are blobs in the content-addressed
-- store (their exact bytes); these tables hold what the registry needs to
-- know of them. Times are milliseconds since the epoch.

-- A manifest pushed into a repository (`<service>/<image>`): its media
-- type, artifactType and subject (the referrers API reads these).
CREATE TABLE oci_manifests (
    repository    TEXT NOT NULL,
    digest        TEXT NOT NULL,
    media_type    TEXT NOT NULL,
    artifact_type TEXT,
    subject       TEXT,
    annotations   TEXT,
    size          BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (repository, digest)
);
CREATE INDEX oci_manifests_subject ON oci_manifests (repository, subject);

-- Every digest a manifest refers to (config, layers, child manifests and,
-- for an index, the children's own blobs), so that gc keeps them while the
-- manifest is kept and readers of the manifest may read them.
CREATE TABLE oci_manifest_refs (
    manifest TEXT NOT NULL,
    digest   TEXT NOT NULL,
    PRIMARY KEY (manifest, digest)
);
CREATE INDEX oci_manifest_refs_digest ON oci_manifest_refs (digest);

-- Tags that are not derived from builds or environments.
CREATE TABLE oci_tags (
    repository TEXT NOT NULL,
    tag        TEXT NOT NULL,
    digest     TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (repository, tag)
);

-- Blob upload sessions; their bytes are staged in a file named by the id.
CREATE TABLE oci_uploads (
    id         TEXT PRIMARY KEY,
    repository TEXT NOT NULL,
    started_at BIGINT NOT NULL
);

-- The key that signs the registry's bearer tokens, shared by every server.
CREATE TABLE oci_keys (
    name       TEXT PRIMARY KEY,
    secret     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
