-- The build an agent tried and gave up on (what halts a paced rollout).
ALTER TABLE agents ADD COLUMN failed_build TEXT;

-- The pacing state of one deployment's rollout to an environment's agents,
-- created when the first agent asks for the deployment.
CREATE TABLE rollouts (
    service           TEXT NOT NULL,
    environment       TEXT NOT NULL,
    seq               BIGINT NOT NULL,
    build_id          TEXT NOT NULL,
    -- rolling or halted
    state             TEXT NOT NULL,
    reason            TEXT,
    -- Failures before the last resume, which no longer count.
    failures_baseline BIGINT NOT NULL DEFAULT 0,
    changed_at        BIGINT NOT NULL,
    changed_by        TEXT,
    PRIMARY KEY (service, environment, seq)
);

-- The agents allowed to take a deployment's build.
CREATE TABLE rollout_grants (
    service     TEXT NOT NULL,
    environment TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    agent_id    TEXT NOT NULL,
    granted_at  BIGINT NOT NULL,
    PRIMARY KEY (service, environment, seq, agent_id)
);

-- How long a deployment has run while at least `share` percent of the
-- environment's agents reported healthy on it (health-aware soak).
CREATE TABLE soak_clocks (
    service     TEXT NOT NULL,
    environment TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    share       BIGINT NOT NULL,
    healthy_ms  BIGINT NOT NULL,
    last_sample BIGINT NOT NULL,
    healthy_now BIGINT NOT NULL,
    PRIMARY KEY (service, environment, seq, share)
);
