-- Agents following a service's environment: the newest report of each.
CREATE TABLE agents (
    agent_id      TEXT PRIMARY KEY,
    service       TEXT NOT NULL,
    environment   TEXT NOT NULL,
    hostname      TEXT NOT NULL,
    platform      TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    build_id      TEXT,
    state         TEXT NOT NULL,
    error         TEXT,
    first_seen    BIGINT NOT NULL,
    last_seen     BIGINT NOT NULL
);
CREATE INDEX agents_env ON agents(service, environment);
