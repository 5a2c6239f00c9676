-- The control paragraph of each Debian package stored, keyed by the digest
-- of its blob: read once when the package is registered as a `deb`
-- artifact, so APT indexes are generated from the database without
-- reading packages again. A row is derived data (the blob says the same),
-- written before the artifact that refers to it, and harmless without one.
CREATE TABLE deb_packages (
    digest       TEXT PRIMARY KEY,
    package      TEXT NOT NULL,
    version      TEXT NOT NULL,
    architecture TEXT NOT NULL,
    control      TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
