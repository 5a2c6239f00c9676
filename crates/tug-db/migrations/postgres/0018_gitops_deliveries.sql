-- What Tugboat writes into git repositories for each deployment (see
-- tug_db::gitops): a commit into an environment's GitOps repository
-- (target 'gitops') or the move of a source repository's environment tag
-- (target 'source_tag'). One row per deployment and target, made by the
-- repository's consumer when it reads the deployment's event, so a
-- redelivered event finds its row. state: pending (not tried yet), failed
-- (tried, retried at next_attempt), pushed (commit_sha is in the
-- repository), skipped (nothing to write; last_error says why).
CREATE TABLE gitops_deliveries (
    target       TEXT NOT NULL,
    service      TEXT NOT NULL,
    environment  TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    repo         TEXT NOT NULL,
    build_id     TEXT NOT NULL,
    -- The deployment's event: deliveries of one repository are written in
    -- its order.
    event_id     BIGINT NOT NULL,
    state        TEXT NOT NULL,
    commit_sha   TEXT,
    attempts     BIGINT NOT NULL DEFAULT 0,
    last_error   TEXT,
    -- Milliseconds since the epoch.
    next_attempt BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (target, service, environment, seq)
);
CREATE INDEX gitops_deliveries_open ON gitops_deliveries (repo, state, event_id);
