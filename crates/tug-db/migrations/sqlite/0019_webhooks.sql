-- Webhooks (see tug_db::webhooks): endpoints that receive the event log's
-- events, each delivered by its own durable consumer (named
-- 'webhook:<id>' in the consumers table, created and deleted with it).
-- The secret signs what is sent; it is never shown after the webhook is
-- created.
CREATE TABLE webhooks (
    id          TEXT PRIMARY KEY,
    url         TEXT NOT NULL,
    -- standard, github or slack.
    kind        TEXT NOT NULL,
    -- Only this service's events; NULL: every service's.
    service     TEXT,
    -- The event filter: kinds or globs (approval.*), comma-separated.
    events      TEXT NOT NULL,
    secret      TEXT NOT NULL,
    -- Milliseconds since the epoch.
    created_at  INTEGER NOT NULL,
    created_by  TEXT
);

-- What became of the events sent to a webhook: one row per event that was
-- delivered, is being retried or was given up on (dead). The id is the
-- webhook-id header sent, the same on every attempt.
CREATE TABLE webhook_deliveries (
    id               TEXT PRIMARY KEY,
    webhook_id       TEXT NOT NULL,
    event_id         INTEGER NOT NULL,
    -- pending, delivered or dead.
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL,
    -- The last answer's HTTP status, or why there was none.
    last_status      INTEGER,
    last_error       TEXT,
    -- Milliseconds since the epoch.
    first_attempt_at INTEGER NOT NULL,
    last_attempt_at  INTEGER NOT NULL,
    next_attempt_at  INTEGER,
    delivered_at     INTEGER
);
CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries (webhook_id, event_id);
