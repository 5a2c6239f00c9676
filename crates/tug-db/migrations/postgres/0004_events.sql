-- Every change worth telling: builds, pipelines, deployments, approvals.
-- Read by GET /v1/events (Server-Sent Events), which polls for ids above
-- the last one a client saw, so events reach watchers on every server.
CREATE TABLE events (
    id      BIGSERIAL PRIMARY KEY,
    at      BIGINT NOT NULL,
    kind    TEXT NOT NULL,
    service TEXT,
    actor   TEXT,
    payload TEXT NOT NULL
);
CREATE INDEX events_service ON events(service, id);
